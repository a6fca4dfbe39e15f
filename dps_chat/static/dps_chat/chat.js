// One room: phoenix.js's Socket (the session cookie says who we are), a channel, and its Presence.
(() => {
  const room = document.getElementById("chat").dataset.room;
  const status = document.getElementById("status");
  const messages = document.getElementById("messages");
  const online = document.getElementById("online");
  const form = document.getElementById("say");
  const input = document.getElementById("body");

  // As a new Phoenix project: the websocket, and long polling if it has not opened within 2.5 s.
  const socket = new Phoenix.Socket("/socket", { longPollFallbackMs: 2500 });
  socket.onOpen(() => { status.textContent = ""; });
  socket.onError(() => { status.textContent = "reconnecting…"; });
  socket.connect();

  const channel = socket.channel(`chat:${room}`, {});
  const presence = new Phoenix.Presence(channel);
  presence.onSync(() => {
    const people = presence.list((id, { metas }) => {
      const item = document.createElement("li");
      item.dataset.user = metas[0].name;
      item.textContent = metas.length > 1 ? `${metas[0].name} (${metas.length} tabs)` : metas[0].name;
      return item;
    });
    online.replaceChildren(...people.sort((a, b) => a.dataset.user.localeCompare(b.dataset.user)));
  });

  channel.on("new_msg", ({ user, body, at }) => {
    const item = document.createElement("li");
    const who = document.createElement("b");
    who.textContent = user;
    item.append(who, ` ${body}`);
    item.title = new Date(at * 1000).toLocaleString();
    messages.append(item);
    item.scrollIntoView({ block: "end" });
  });

  channel.join()
    .receive("ok", () => { status.textContent = ""; })
    .receive("error", ({ reason }) => { status.textContent = reason; });

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const body = input.value.trim();
    if (!body) return;
    channel.push("new_msg", { body })
      .receive("ok", () => { input.value = ""; })
      .receive("error", ({ reason }) => { status.textContent = reason; })
      .receive("timeout", () => { status.textContent = "not sent: no answer"; });
  });
})();
