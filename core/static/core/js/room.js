// Minimal room client: live messages, resume with ?after=, send with acks.
const root = document.getElementById("room");
const slug = root.dataset.room;
const list = document.getElementById("messages");
const presence = document.getElementById("presence");
const state = document.getElementById("connection");
const composer = document.getElementById("composer");
const seen = new Set();
let highest = 0;
let socket = null;
let attempt = 0;

function setState(value, text) {
  root.dataset.wsState = value;
  state.textContent = text;
}

function showMessage(frame) {
  if (seen.has(frame.seq)) return;
  seen.add(frame.seq);
  highest = Math.max(highest, frame.seq);
  const item = document.createElement("li");
  item.dataset.seq = String(frame.seq);
  const who = document.createElement("strong");
  who.textContent = frame.author ?? "system";
  const body = document.createElement("span");
  body.textContent = " " + frame.body;
  item.append(who, body);
  list.append(item);
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const query = highest ? `?after=${highest}` : "";
  socket = new WebSocket(`${scheme}://${location.host}/ws/rooms/${slug}/${query}`);
  socket.addEventListener("open", () => { attempt = 0; setState("open", "Connected"); });
  socket.addEventListener("message", (event) => {
    const frame = JSON.parse(event.data);
    if (frame.type === "message") showMessage(frame);
    else if (frame.type === "history") frame.messages.forEach(showMessage);
    else if (frame.type === "presence") {
      presence.replaceChildren(...frame.users.map((name) => {
        const li = document.createElement("li"); li.textContent = name; return li;
      }));
    }
  });
  socket.addEventListener("close", () => {
    setState("closed", "Reconnecting…");
    const delay = Math.min(10000, 500 * 2 ** attempt++) * (0.5 + Math.random());
    setTimeout(connect, delay);
  });
}

composer?.addEventListener("submit", (event) => {
  event.preventDefault();
  const field = composer.elements.body;
  if (!field.value.trim() || socket?.readyState !== WebSocket.OPEN) return;
  socket.send(JSON.stringify({ type: "send", body: field.value, client_id: crypto.randomUUID() }));
  field.value = "";
});

connect();
