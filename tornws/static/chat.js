// The chat page of `tornws serve`: a view over ChatClient (tornws.js). User text is only ever
// put into the page as text (textContent), never as HTML.
import { ChatClient, NICK_RE, ROOM_RE } from "./tornws.js";

const $ = (id) => document.getElementById(id);
const chatPath = document.body.dataset.chatPath;
const signedIn = document.body.dataset.user !== "";
let client = null;

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function clock(seconds) {
  const date = seconds ? new Date(seconds * 1000) : new Date();
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function show(kind, parts, time) {
  const list = $("messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const item = element("li", kind);
  item.append(element("time", "", clock(time)));
  for (const [className, text] of parts) item.append(element("span", className, text));
  list.append(item);
  if (atBottom) list.scrollTop = list.scrollHeight;
}

const STATUS_TEXT = {
  idle: () => "not connected",
  connecting: () => "connecting…",
  open: () => "connected",
  reconnecting: (d) =>
    d.delay === undefined ? "reconnecting…" : `reconnecting in ${Math.ceil(d.delay / 1000)} s`,
  closed: () => "left",
};

function setStatus(detail) {
  const status = $("status");
  status.dataset.status = detail.status;
  status.textContent = STATUS_TEXT[detail.status](detail);
  const open = detail.status === "open";
  for (const control of $("send").elements) control.disabled = !open;
  if (open) $("text").focus();
  if (detail.status === "reconnecting" && detail.delay !== undefined) {
    show("notice", [["", "connection lost; reconnecting"]]);
  }
}

function showMembers(members) {
  const list = $("members");
  list.replaceChildren(...members.map((nick) => element("li", "", nick)));
  $("count").textContent = String(members.length);
}

function join(nick, room) {
  client = new ChatClient(`${chatPath}/${room}`, { nick });
  client.addEventListener("status", (e) => setStatus(e.detail));
  client.addEventListener("presence", (e) => showMembers(e.detail.members));
  client.addEventListener("join", (e) => {
    const who = e.detail.self ? `you joined as ${e.detail.nick}` : `${e.detail.nick} joined`;
    show("notice", [["", who]], e.detail.time);
  });
  client.addEventListener("leave", (e) => show("notice", [["", `${e.detail.nick} left`]], e.detail.time));
  client.addEventListener("message", (e) => {
    const d = e.detail;
    show(d.self ? "message own" : "message", [["nick", d.sender], ["text", d.text]], d.time);
  });
  client.addEventListener("error", (e) => show("notice error", [["", e.detail.detail]]));
  client.addEventListener("resumed", (e) => {
    if (!e.detail.recovered) show("notice", [["", "messages sent while you were away may be missing"]]);
    else if (e.detail.count) show("notice", [["", `${e.detail.count} missed while away`]]);
  });
  $("join").hidden = true;
  $("chat").hidden = false;
  $("leave").hidden = false;
  $("room-label").textContent = `# ${room}`;
  document.title = `${room} — tornws chat`;
  const query = new URLSearchParams({ room });
  if (nick && !signedIn) query.set("nick", nick);
  history.replaceState(null, "", `?${query}`);
  window.tornwsChat = client; // for your browser's console
  client.connect();
}

$("join").addEventListener("submit", (event) => {
  event.preventDefault();
  const nick = $("nick").value.trim();
  const room = $("room").value.trim();
  if ((nick && !NICK_RE.test(nick)) || !ROOM_RE.test(room)) {
    $("join").reportValidity();
    return;
  }
  try {
    localStorage.setItem("tornws.nick", nick);
  } catch {
    // storage may be disabled; the nick is then only in the address
  }
  join(nick, room);
});

$("send").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("text");
  if (client && client.send(input.value)) input.value = "";
});

$("leave").addEventListener("click", () => {
  if (client) client.close();
  client = null;
  $("messages").replaceChildren();
  showMembers([]);
  $("chat").hidden = true;
  $("leave").hidden = true;
  $("join").hidden = false;
  $("room-label").textContent = "";
  document.title = "tornws chat";
  history.replaceState(null, "", location.pathname);
});

// ?room=…&nick=… joins at once (a link to share); otherwise the form, prefilled.
const query = new URLSearchParams(location.search);
if (!signedIn) {
  let saved = "";
  try {
    saved = localStorage.getItem("tornws.nick") || "";
  } catch {
    saved = "";
  }
  $("nick").value = query.get("nick") || saved;
}
if (query.has("room")) $("room").value = query.get("room");
if (query.has("room") && ROOM_RE.test(query.get("room"))) {
  const nick = $("nick").value.trim();
  join(NICK_RE.test(nick) ? nick : "", query.get("room"));
}
