// The phoenix client connecting with a token, as params or as authToken, then joining a topic.
// Usage: node phoenix_auth.js MOUNT TOPIC (params|authToken) TOKEN; prints one JSON line and exits.
const { Socket } = require("phoenix");
const WebSocket = require("ws");
const [mount, topic, how, token] = process.argv.slice(2);
const options = how === "params" ? { params: { token } } : { authToken: token };
const socket = new Socket(mount, { transport: WebSocket, reconnectAfterMs: () => 60000, ...options });
const done = (event) => { console.log(JSON.stringify(event)); socket.disconnect(() => process.exit(0)); };
socket.onError(() => done({ event: "socket_error" }));
socket.connect();
socket.channel(topic, {}).join()
  .receive("ok", () => done({ event: "joined" }))
  .receive("error", (response) => done({ event: "refused", response }));
setTimeout(() => done({ event: "timeout" }), 15000);
