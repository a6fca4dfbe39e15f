// The phoenix client's Presence on one topic: prints the list ({key: number of metas}) and each key's
// moods (a meta field some channel classes add) after every sync.
// Usage: node phoenix_presence.js MOUNT TOPIC USER; runs until killed.
const { Socket, Presence } = require("phoenix");
const WebSocket = require("ws");
const [mount, topic, user] = process.argv.slice(2);
const socket = new Socket(mount, { transport: WebSocket, params: { user } });
socket.connect();
const channel = socket.channel(topic, {});
const presence = new Presence(channel);
presence.onSync(() => {
  const list = {};
  const moods = {};
  presence.list((key, { metas }) => {
    list[key] = metas.length;
    moods[key] = metas.map((meta) => meta.mood || null);
  });
  console.log(JSON.stringify({ event: "sync", list, moods }));
});
channel.join().receive("error", (response) => console.log(JSON.stringify({ event: "refused", response })));
