// tornws.js — a browser client for the tornws chat.json protocol (docs/protocol.md).
// No dependencies, no build step: copy it into your project.
//
//   import { ChatClient } from "./tornws.js";
//   const chat = new ChatClient("/chat/lobby", { nick: "ann" });
//   chat.addEventListener("message", (e) => console.log(e.detail.sender, e.detail.text));
//   chat.addEventListener("status", (e) => console.log(e.detail.status));
//   chat.connect();
//   chat.send("hello");
//
// Events (CustomEvent, the payload in `detail`):
//   status    {status, code, reason, delay}: "connecting", "open", "reconnecting" (after a lost
//             connection; `delay` ms until the next attempt), "closed" (after close()).
//   join, leave, message   the server's events as they arrive; `self` is true on your own join
//             and on messages sent under your nick; `replayed` is true on the events missed
//             while disconnected, sent again on reconnecting.
//   presence  {members}: who is in the room, sorted (nicks are not unique: a nick present twice
//             is listed twice). Sent when connected and whenever someone joins or leaves.
//   resumed   {recovered, count} after a reconnect: `count` missed events were replayed, or
//             (recovered false) the server could not tell them all and replayed none.
//   error     the server's error event {code, detail}; the connection stays open.
// The connection is retried for ever with exponential backoff and jitter until close(); each
// reconnect asks for the events missed since the last one seen (since=<epoch>:<id>).

export const PROTOCOL = "chat.json";
export const NICK_RE = /^[^\s\x00-\x1f\x7f]{1,32}$/u;
export const ROOM_RE = /^[A-Za-z0-9_.~-]{1,64}$/;

export class ChatClient extends EventTarget {
  /**
   * @param {string} url   "/chat/<room>" (same host as the page) or a full ws:// or wss:// URL.
   * @param {object} [options]
   * @param {string} [options.nick]      asked for; the server may choose (signed-in user, guest-N).
   * @param {number} [options.minDelay]  first reconnect delay, ms (default 500).
   * @param {number} [options.maxDelay]  reconnect delay cap, ms (default 10000).
   */
  constructor(url, { nick = "", minDelay = 500, maxDelay = 10000 } = {}) {
    super();
    const target = new URL(url, globalThis.location ? globalThis.location.href : undefined);
    if (target.protocol === "http:") target.protocol = "ws:";
    if (target.protocol === "https:") target.protocol = "wss:";
    if (nick) target.searchParams.set("nick", nick);
    this.url = target;
    this.minDelay = minDelay;
    this.maxDelay = maxDelay;
    /** The nick the server gave this connection (known once its own join arrives). */
    this.nick = "";
    /** "idle" | "connecting" | "open" | "reconnecting" | "closed" */
    this.status = "idle";
    this.socket = null;
    this._members = new Map();
    this._attempt = 0;
    this._timer = null;
    this._ownJoinPending = false;
    this._replaying = false;
    /** The last event seen: where a reconnect resumes from. */
    this.epoch = "";
    this.lastId = 0;
  }

  /** Who is in the room now, sorted, one entry per connection. */
  get members() {
    const list = [];
    for (const [nick, count] of this._members) {
      for (let i = 0; i < count; i++) list.push(nick);
    }
    return list.sort();
  }

  connect() {
    if (this.socket || this.status === "open") return;
    clearTimeout(this._timer);
    this._setStatus(this._attempt ? "reconnecting" : "connecting");
    const url = new URL(this.url.href);
    const resuming = Boolean(this.epoch);
    if (resuming) url.searchParams.set("since", `${this.epoch}:${this.lastId}`);
    const socket = new WebSocket(url.href, [PROTOCOL]);
    this.socket = socket;
    socket.onopen = () => {
      if (socket.protocol !== PROTOCOL) {
        socket.close(1002, "expected the chat.json subprotocol");
        return;
      }
      this._attempt = 0;
      this._ownJoinPending = true;
      this._replaying = resuming;
      this._setStatus("open");
    };
    socket.onmessage = (message) => this._receive(message.data);
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      this._members.clear();
      if (this.status === "closed") return;
      const delay = this._nextDelay();
      this._setStatus("reconnecting", { code: event.code, reason: event.reason, delay });
      this._timer = setTimeout(() => this.connect(), delay);
    };
  }

  /** Send a chat line; false when not connected (nothing is queued). */
  send(text) {
    if (this.status !== "open" || !text) return false;
    this.socket.send(JSON.stringify({ type: "message", text }));
    return true;
  }

  /** Ask the server for who is in the room (answered by a "presence" event). */
  requestPresence() {
    if (this.status === "open") this.socket.send(JSON.stringify({ type: "presence" }));
  }

  /** Leave for good: no reconnect. */
  close() {
    clearTimeout(this._timer);
    this._setStatus("closed");
    if (this.socket) {
      this.socket.close(1000);
      this.socket = null;
    }
  }

  _nextDelay() {
    const ceiling = Math.min(this.maxDelay, this.minDelay * 2 ** this._attempt);
    this._attempt += 1;
    return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
  }

  _setStatus(status, extra = {}) {
    this.status = status;
    this._emit("status", { status, ...extra });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _receive(data) {
    let event;
    try {
      event = JSON.parse(data);
    } catch {
      return;
    }
    if (event.id !== undefined) {
      this.epoch = event.epoch;
      this.lastId = event.id;
    }
    if (this._replaying && event.type !== "resumed" && event.type !== "presence") {
      // Missed while away: shown, but the presence sent on connecting is already current.
      event.replayed = true;
      event.self = event.type === "message" && event.sender === this.nick;
      this._emit(event.type, event);
      return;
    }
    switch (event.type) {
      case "resumed":
        this._replaying = false;
        this._emit("resumed", event);
        break;
      case "presence":
        this._members = new Map();
        for (const nick of event.members) this._count(nick, 1);
        this._emit("presence", { members: this.members });
        break;
      case "join":
        // The presence sent on connecting already lists this connection; the first join after
        // it is our own (the server publishes it right after the presence).
        if (this._ownJoinPending) {
          this._ownJoinPending = false;
          this.nick = event.nick;
          event.self = true;
        } else {
          event.self = false;
          this._count(event.nick, 1);
        }
        this._emit("join", event);
        this._emit("presence", { members: this.members });
        break;
      case "leave":
        event.self = false;
        this._count(event.nick, -1);
        this._emit("leave", event);
        this._emit("presence", { members: this.members });
        break;
      case "message":
        event.self = event.sender === this.nick;
        this._emit("message", event);
        break;
      case "error":
        this._emit("error", event);
        break;
      default:
        break;
    }
  }

  _count(nick, by) {
    const count = (this._members.get(nick) || 0) + by;
    if (count > 0) this._members.set(nick, count);
    else this._members.delete(nick);
  }
}
