// The phoenix client driving a DPS channel class: a reply, a crash (the client rejoins), a stop.
// Usage: node phoenix_channel.js MOUNT TOPIC; prints one JSON line per event, exits after the stop.
const { Socket } = require("phoenix");
const WebSocket = require("ws");
const [mount, topic] = process.argv.slice(2);
const print = (event) => console.log(JSON.stringify(event));
const socket = new Socket(mount, { transport: WebSocket, rejoinAfterMs: () => 100 });
socket.connect();
const channel = socket.channel(topic, { nick: "js" });
let joins = 0;
channel.onError(() => print({ event: "channel_error" }));
channel.onClose(() => {
  print({ event: "channel_closed" });
  socket.disconnect(() => process.exit(0));
});
channel.on("shout", (payload) => print({ event: "shout", payload }));
channel.join().receive("ok", (response) => {
  joins += 1;
  print({ event: "joined", response, joins });
  if (joins === 1) {
    channel.push("ping", { n: 1 }).receive("ok", (reply) => {
      print({ event: "pong", reply });
      channel.push("boom", {});  // crashes the channel on the server: phx_error, then a rejoin
    });
  } else {
    channel.push("shout", { text: "back" });
    channel.push("bye", {}).receive("ok", (reply) => print({ event: "bye", reply }));
  }
});
setTimeout(() => { print({ event: "timeout" }); process.exit(1); }, 15000);
