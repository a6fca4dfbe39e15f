// The phoenix client on its LongPoll transport (fetch in Node): join, publish once, print broadcasts.
// Usage: node phoenix_longpoll.js MOUNT TOPIC COUNT; exits after COUNT broadcasts (one JSON line each).
const { Socket, LongPoll } = require("phoenix");
const [mount, topic, count] = process.argv.slice(2);
const print = (event) => console.log(JSON.stringify(event));
const socket = new Socket(mount, { transport: LongPoll });
socket.connect();
const channel = socket.channel(topic, {});
let seen = 0;
channel.on("event", (payload) => {
  print({ event: "broadcast", payload });
  if (++seen >= Number(count)) socket.disconnect(() => process.exit(0));
});
channel.join().receive("ok", () => {
  print({ event: "joined", transport: socket.transport.name });
  channel.push("publish", ["event", { message: "over long-poll" }]).receive("ok", () => print({ event: "published" }));
});
setTimeout(() => { print({ event: "timeout" }); process.exit(1); }, 25000);
