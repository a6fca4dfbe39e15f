// Drives the official phoenix client against DPS and prints one JSON line per event.
// usage: node phoenix_session.js <socket mount url ws://host:port/socket> <topic> <role> <count>
//   role "publisher": joins, publishes <count> messages, waits for them all, survives heartbeats, leaves
//   role "subscriber": joins, waits for <count> messages, then leaves
const { Socket } = require("phoenix");
const WebSocket = require("ws");

const [mount, topic, role, countArg] = process.argv.slice(2);
const count = Number(countArg || 3);
const heartbeatIntervalMs = 300;
const emit = (event, data = {}) => process.stdout.write(JSON.stringify({ event, ...data }) + "\n");
const fail = (why) => { emit("failed", { why }); process.exit(1); };
setTimeout(() => fail("timed out"), 20000);

const socket = new Socket(mount, { transport: WebSocket, heartbeatIntervalMs, timeout: 5000 });
let heartbeats = 0;
const originalHeartbeat = socket.sendHeartbeat.bind(socket);
socket.sendHeartbeat = () => { heartbeats += 1; originalHeartbeat(); };
socket.onError((e) => emit("socket_error", { message: String(e && e.message) }));
socket.onClose((e) => emit("socket_close", { code: e && e.code }));
socket.connect();

const channel = socket.channel(topic, {});
const received = [];
channel.on("chat", (payload) => {
  received.push(payload.n);
  emit("received", { n: payload.n });
  if (received.length === count) finish();
});

function finish() {
  // Stay a few heartbeat intervals: an unanswered heartbeat would close the socket.
  setTimeout(() => {
    emit("heartbeats", { sent: heartbeats, connected: socket.isConnected() });
    channel.leave().receive("ok", () => {
      emit("left");
      socket.disconnect(() => process.exit(0));
    });
  }, heartbeatIntervalMs * 5);
}

channel.join()
  .receive("ok", () => {
    emit("joined");
    if (role === "publisher") {
      const start = () => {
        for (let n = 0; n < count; n++) {
          channel.push("publish", ["chat", { n }])
            .receive("ok", () => emit("published", { n }))
            .receive("error", (r) => fail("publish refused " + JSON.stringify(r)))
            .receive("timeout", () => fail("publish timed out"));
        }
      };
      // let subscribers started alongside join first
      setTimeout(start, Number(process.env.PUBLISH_DELAY_MS || 0));
    }
  })
  .receive("error", (r) => fail("join refused " + JSON.stringify(r)))
  .receive("timeout", () => fail("join timed out"));
