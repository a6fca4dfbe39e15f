// The phoenix client recovering what it missed: channel params as a function (phoenix.js evaluates it
// on every join and rejoin) returning the last {epoch, seq} seen in on(event, (payload, ref) => ...).
// Usage: node phoenix_recovery.js MOUNT TOPIC; stdin lines "disconnect" / "connect"; prints JSON lines.
const { Socket } = require("phoenix");
const WebSocket = require("ws");
const readline = require("readline");
const [mount, topic] = process.argv.slice(2);
const print = (event) => console.log(JSON.stringify(event));
let last = null; // {epoch, seq} of the last broadcast seen
const socket = new Socket(mount, { transport: WebSocket, reconnectAfterMs: () => 50 });
socket.connect();
const channel = socket.channel(topic, () => ({ recover: last || true }));
channel.on("event", (payload, ref) => {
  const [epoch, seq] = ref.split(":");
  last = { epoch, seq: Number(seq) };
  print({ event: "event", n: payload.n, ref });
});
channel.join().receive("ok", (response) => {
  if (!response.recovered) last = { epoch: response.epoch, seq: response.seq }; // reload, then count from here
  print({ event: "joined", response });
});
socket.onClose(() => print({ event: "closed" }));
readline.createInterface({ input: process.stdin }).on("line", (line) => {
  if (line === "disconnect") socket.disconnect(() => print({ event: "disconnected" }));
  if (line === "connect") socket.connect();
});
