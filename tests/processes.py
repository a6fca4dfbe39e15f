"""Real processes for tests: free loopback ports, daphne nodes, and always stopping them."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = START_TIMEOUT) -> None:
    """Wait until port accepts connections; fail with the child's output if it dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening:\n{log.read_text()}")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on {HOST}:{port} within {timeout}s:\n{log.read_text()}")


class ManagedProcess:
    """A child process with its output in a temp file; stop() terminates (resuming it first if it is
    frozen), then kills."""

    def __init__(self, args: list[str], env: dict[str, str], name: str, cwd: Path = ROOT):
        self.name = name
        self.frozen = False
        self.log = Path(tempfile.mkstemp(prefix=f"dps-{name}-", suffix=".log")[1])
        self._log_file = self.log.open("wb")
        self.process = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def freeze(self) -> None:
        """SIGSTOP: the process stops where it is (a long GC pause, a stalled VM) until resume()."""
        self.process.send_signal(signal.SIGSTOP)
        self.frozen = True

    def resume(self) -> None:
        """SIGCONT: a frozen process carries on from where it was (a no-op for one that is not frozen)."""
        if self.frozen and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
        self.frozen = False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.process.poll() is None:
            self.resume()  # a frozen process would handle no signal, and its finalizer would wait
            self.process.send_signal(sig)
        return self.wait_stopped(timeout)

    def wait_stopped(self, timeout: float = 10.0) -> int | None:
        """Wait for the exit of a signalled process; kill it (and its children) after timeout."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout)
        self._log_file.close()
        return self.process.returncode


def stop_all(processes, sig: int = signal.SIGTERM, timeout: float = 10.0) -> list[int | None]:
    """Signal every process at once, then wait for each (their exit codes): their shutdowns (a
    node's drain, a topic server's handover) overlap."""
    processes = list(processes)
    for each in processes:
        if each.process.poll() is None:
            each.resume()
            each.process.send_signal(sig)
    return [each.wait_stopped(timeout) for each in processes]


def dps_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DPS_")}
    env["DJANGO_SETTINGS_MODULE"] = "dps_site.settings"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


class RedisServer(ManagedProcess):
    """A private ``redis-server`` on a free loopback port, keeping nothing on disk; with replica_of,
    a replica of that one, ready once its link to it is up."""

    def __init__(self, port: int | None = None, replica_of: RedisServer | None = None):
        self.port = port or free_port()
        args = ["redis-server", "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no"]
        args += ["--dir", tempfile.mkdtemp(prefix="dps-redis-")]  # a replica's full sync writes an RDB there
        if replica_of is not None:
            args += ["--replicaof", HOST, str(replica_of.port)]
        super().__init__(args, dict(os.environ), f"redis-{self.port}")
        wait_for_port(self.port, self.process, self.log)
        if replica_of is not None:
            self._wait_for_link()

    def _wait_for_link(self, timeout: float = START_TIMEOUT) -> None:
        with self.client() as client:
            deadline = time.monotonic() + timeout
            while client.info("replication").get("master_link_status") != "up":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the replica on {self.port} never linked up:\n{self.output()}")
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def client(self):
        import redis

        return redis.Redis(host=HOST, port=self.port)


class RedisClusterServer:
    """A Redis Cluster of ``masters`` private ``redis-server`` processes on free loopback ports.

    Built the way an operator builds one (``--cluster-enabled yes``, then ``redis-cli --cluster
    create``), with no replicas unless asked; ready once every slot is served. It offers what
    RedisServer offers (url, client(), stop()), so a fixture can hand out either.
    """

    def __init__(self, masters: int = 3, replicas: int = 0):
        self.masters = masters
        self.servers: list[ManagedProcess] = []
        self.directory = Path(tempfile.mkdtemp(prefix="dps-redis-cluster-"))
        try:
            for _ in range(masters * (1 + replicas)):
                self.servers.append(self._start_member())
            create = ["redis-cli", "--cluster", "create", *self.addresses()]
            create += ["--cluster-replicas", str(replicas), "--cluster-yes"]
            done = subprocess.run(create, capture_output=True, text=True, timeout=START_TIMEOUT)
            if done.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}\n{done.stderr}")
            self._wait_until_served()
            if replicas:
                self._wait_until_replicated()
        except BaseException:
            self.stop()
            raise

    def _wait_until_replicated(self) -> None:
        """Every replica has finished its first sync: a master killed before it would leave a replica
        that refuses to fail over ("disconnected from master for longer than allowed")."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            links = [self.cli(member.port, "info", "replication") for member in self.servers]
            replicas = [info for info in links if "role:slave" in info]
            if replicas and all("master_link_status:up" in info for info in replicas):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the Redis Cluster's replicas did not sync within {START_TIMEOUT}s:\n{links}")

    def _start_member(self) -> ManagedProcess:
        port = free_port()
        config = ["--cluster-enabled", "yes", "--cluster-config-file", str(self.directory / f"nodes-{port}.conf")]
        # The bus port defaults to port + 10000, which a free port above 55535 cannot have.
        config += ["--cluster-port", str(free_port()), "--cluster-node-timeout", "2000", "--dir", str(self.directory)]
        config += ["--repl-diskless-sync-delay", "0"]  # a replica's first sync now, not 5 s later
        member = ManagedProcess(
            ["redis-server", "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no", *config],
            dict(os.environ),
            f"redis-cluster-{port}",
        )
        member.port = port
        wait_for_port(port, member.process, member.log)
        return member

    def addresses(self) -> list[str]:
        return [f"{HOST}:{member.port}" for member in self.servers]

    def _wait_until_served(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            # Every member, not one: a member that has not yet seen the others answers CLUSTERDOWN.
            alive = [member for member in self.servers if member.process.poll() is None]
            infos = [
                subprocess.run(
                    ["redis-cli", "-p", str(m.port), "cluster", "info"], capture_output=True, text=True
                ).stdout
                for m in alive
            ]
            if all("cluster_state:ok" in info and "cluster_slots_ok:16384" in info for info in infos):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the Redis Cluster did not serve every slot within {START_TIMEOUT}s:\n{infos}")

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(self.addresses())

    def cli(self, port: int, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def roles(self, asking: int | None = None) -> dict[int, dict]:
        """port -> {id, role ("master"/"slave"), master (a replica's master's id), slots, failed}, as the
        member on port asking (the first live one by default) sees the cluster now."""
        if asking is None:
            asking = next(member.port for member in self.servers if member.process.poll() is None)
        roles = {}
        for line in self.cli(asking, "cluster", "nodes").splitlines():
            node_id, address, flags, master, *rest = line.split()
            ranges = [r.split("-") for r in rest[4:] if not r.startswith("[")]
            flags = flags.split(",")
            roles[int(address.split("@")[0].rsplit(":", 1)[1])] = {
                "id": node_id,
                "role": "master" if "master" in flags else "slave",
                "master": master,
                "slots": sum(int(r[-1]) - int(r[0]) + 1 for r in ranges),
                "failed": "fail" in flags or "fail?" in flags,
            }
        return roles

    def port_of(self, key: str) -> int:
        """The port of the master that serves key now."""
        client = self.client()
        try:
            return client.get_node_from_key(key).port
        finally:
            client.close()

    def move_slot(self, slot: int, source: int, target: int) -> None:
        """Move one slot, keys and all, from the master on port source to the one on target, the way
        ``redis-cli --cluster reshard`` moves each of its slots (importing/migrating, MIGRATE in
        batches, then the new owner announced to every master)."""
        roles = self.roles()
        self.cli(target, "cluster", "setslot", str(slot), "importing", roles[source]["id"])
        self.cli(source, "cluster", "setslot", str(slot), "migrating", roles[target]["id"])
        while keys := self.cli(source, "cluster", "getkeysinslot", str(slot), "100").split():
            self.cli(source, "migrate", HOST, str(target), "", "0", "5000", "keys", *keys)
        for port, role in roles.items():
            if role["role"] == "master":
                self.cli(port, "cluster", "setslot", str(slot), "node", roles[target]["id"])

    def slot_of(self, key: str) -> int:
        return int(self.cli(self.servers[0].port, "cluster", "keyslot", key))

    def wait_until_served(self) -> None:
        self._wait_until_served()

    def client(self):
        from redis.cluster import ClusterNode, RedisCluster

        return RedisCluster(startup_nodes=[ClusterNode(HOST, member.port) for member in self.servers])

    def stop(self) -> None:
        stop_all(self.servers)
        shutil.rmtree(self.directory, ignore_errors=True)


class TopicServerProcess(ManagedProcess):
    """``manage.py runtopicserver --name NAME``; ready once it has registered in Redis (with
    wait=False, once wait_ready() returns: several then start side by side)."""

    def __init__(
        self,
        name: str,
        redis: RedisServer | RedisClusterServer,
        extra_args: tuple[str, ...] = (),
        wait: bool = True,
        **settings: str,
    ):
        self.server_name = name
        self.redis = redis
        self.launched = time.time()
        super().__init__(
            [sys.executable, "manage.py", "runtopicserver", "--name", name, *extra_args],
            dps_env(**{"DPS_REDIS_URL": redis.url, **settings}),
            f"ts-{name}",
        )
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        name, client = self.server_name, self.redis.client()
        deadline = time.monotonic() + START_TIMEOUT
        while (client.zscore("dps:topicservers", name) or 0) < self.launched:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"topic server {name} did not register:\n{self.output()}")
            time.sleep(0.05)
        client.close()


class DaphneNode(ManagedProcess):
    """``daphne dps_site.asgi:application`` on a free loopback port."""

    def __init__(
        self,
        application: str = "dps_site.asgi:application",
        daphne_args: tuple[str, ...] = (),
        wait: bool = True,
        **settings: str,
    ):
        self.port = free_port()
        super().__init__(
            [sys.executable, "-m", "daphne", "-b", HOST, "-p", str(self.port), *daphne_args, application],
            dps_env(**settings),
            f"daphne-{self.port}",
        )
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        wait_for_port(self.port, self.process, self.log)

    def url(self, query: str = "vsn=2.0.0") -> str:
        return f"ws://{HOST}:{self.port}/socket/websocket?{query}"


def prepare_database(path: Path, username: str = "admin", password: str = "admin-pass") -> dict[str, str]:
    """A migrated SQLite file with one superuser; returns the settings that point at it."""
    settings = {"DPS_SQLITE_PATH": str(path)}
    env = dps_env(**settings, DJANGO_SUPERUSER_PASSWORD=password)
    for command in (
        ["migrate", "--noinput"],
        ["createsuperuser", "--noinput", "--username", username, "--email", "admin@example.com"],
    ):
        subprocess.run([sys.executable, "manage.py", *command], cwd=ROOT, env=env, check=True, capture_output=True)
    return settings
