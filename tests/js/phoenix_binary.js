// The phoenix client pushing an ArrayBuffer (a binary frame) and decoding the binary broadcast back.
// Usage: node phoenix_binary.js MOUNT TOPIC; prints one JSON line per event (bytes as hex), then exits.
const { Socket } = require("phoenix");
const WebSocket = require("ws");
const [mount, topic] = process.argv.slice(2);
const print = (event) => console.log(JSON.stringify(event));
const hex = (buffer) => Buffer.from(buffer).toString("hex");
const socket = new Socket(mount, { transport: WebSocket });
socket.connect();
const channel = socket.channel(topic, {});
let seen = 0;
const done = () => { if (++seen === 2) { print({ event: "done" }); socket.disconnect(() => process.exit(0)); } };
channel.on("publish", (payload) => {
  print({ event: "broadcast", arraybuffer: payload instanceof ArrayBuffer, hex: hex(payload) });
  done();
});
channel.join().receive("ok", () => {
  const data = new Uint8Array(256);
  for (let i = 0; i < 256; i++) data[i] = i;
  channel.push("publish", data.buffer).receive("ok", (reply) => { print({ event: "reply", reply }); done(); });
});
setTimeout(() => { print({ event: "timeout" }); process.exit(1); }, 15000);
