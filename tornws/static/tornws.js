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
//   presence_diff  the server's notice of a crowded room {joins, leaves}: who came and went in
//             the last second (then a presence event); your own join arrives in one.
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
    this._ownNick = undefined; // (the "you" of the presence sent on connecting)
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
      this._ownNick = undefined;
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
        if (event.you !== undefined) this._ownNick = event.you;
        if (event.nick !== undefined) {
          // A crowded room: the list is as of its last notice; our join is in the next one.
          this._ownJoinPending = false;
          this.nick = event.nick;
        }
        this._emit("presence", { members: this.members });
        break;
      case "presence_diff":
        for (const nick of event.joins) this._count(nick, 1);
        for (const nick of event.leaves) this._count(nick, -1);
        this._emit("presence_diff", event);
        this._emit("presence", { members: this.members });
        break;
      case "join":
        // The presence sent on connecting already lists this connection; our own join is the
        // first after it with our nick ("you": with several processes, another user's join
        // may come first).
        if (this._ownJoinPending && (this._ownNick === undefined || event.nick === this._ownNick)) {
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

// ---------------------------------------------------------------------------------------------
// LiveClient: the tornws.v1 protocol of /live (docs/protocol.md, "Live channels").
//
//   import { LiveClient } from "./tornws.js";
//   const live = new LiveClient("/live");
//   live.connect();
//   const news = await live.subscribe("news", (data, pub) => console.log(data), { presence: true });
//   await live.publish("news", { title: "hello" });   // resolves to {epoch, offset}
//   live.addEventListener("join", (e) => console.log(e.detail.channel, e.detail.members));
//
// One socket, many subscriptions; a promise per command (rejected with an Error whose `code`
// is the server's error code). After a lost connection it reconnects with exponential backoff
// and jitter, and subscribes again to every channel with `since` = the last publication it saw
// there: what was missed arrives first, in order, nothing twice. Events (CustomEvent, `detail`):
//   status  {status, delay}: "connecting", "open", "reconnecting", "closed"
//   join, leave  {channel, members}: presence pushes (subscriptions made with presence: true)
//   gap     {channel}: after a reconnect the server could not prove the channel's history whole
//           (recovered: false): reload what the channel stands for.

export const LIVE_PROTOCOL = "tornws.v1";

export class LiveClient extends EventTarget {
  /**
   * @param {string} url   "/live" (same host as the page) or a full ws:// or wss:// URL.
   * @param {object} [options]
   * @param {number} [options.minDelay]  first reconnect delay, ms (default 500).
   * @param {number} [options.maxDelay]  reconnect delay cap, ms (default 10000).
   */
  constructor(url, { minDelay = 500, maxDelay = 10000 } = {}) {
    super();
    const target = new URL(url, globalThis.location ? globalThis.location.href : undefined);
    if (target.protocol === "http:") target.protocol = "ws:";
    if (target.protocol === "https:") target.protocol = "wss:";
    this.url = target;
    this.minDelay = minDelay;
    this.maxDelay = maxDelay;
    /** "idle" | "connecting" | "open" | "reconnecting" | "closed" */
    this.status = "idle";
    this.socket = null;
    /** channel -> {handler, presence, epoch, offset} */
    this.subscriptions = new Map();
    this._nextId = 1;
    this._pending = new Map(); // id -> {resolve, reject, command}
    this._attempt = 0;
    this._timer = null;
    this._opened = null; // a promise resolved when the socket is open
  }

  connect() {
    if (this.status === "closed") return;
    this._setStatus(this._attempt ? "reconnecting" : "connecting");
    let resolveOpen;
    this._opened = new Promise((resolve) => (resolveOpen = resolve));
    const socket = new WebSocket(this.url, LIVE_PROTOCOL);
    this.socket = socket;
    socket.onopen = () => {
      this._attempt = 0;
      this._setStatus("open");
      resolveOpen();
      this._resubscribe();
    };
    socket.onmessage = (event) => this._receive(JSON.parse(event.data));
    socket.onclose = () => {
      if (this.socket !== socket) return;
      for (const { reject } of this._pending.values()) reject(new Error("connection lost"));
      this._pending.clear();
      if (this.status === "closed") return;
      const delay = Math.min(this.maxDelay, this.minDelay * 2 ** this._attempt);
      this._attempt += 1;
      const jittered = delay / 2 + Math.random() * (delay / 2);
      this._setStatus("reconnecting", { delay: Math.round(jittered) });
      this._timer = setTimeout(() => this.connect(), jittered);
    };
  }

  close() {
    this._setStatus("closed");
    clearTimeout(this._timer);
    if (this.socket) this.socket.close(1000);
  }

  /** Subscribe; `handler(data, pub)` gets each publication. Resolves to the result. */
  async subscribe(channel, handler, { presence = false } = {}) {
    const fields = { channel };
    if (presence) fields.presence = true;
    const result = await this.command("subscribe", fields);
    this.subscriptions.set(channel, {
      handler, presence, epoch: result.epoch, offset: result.offset,
    });
    return result;
  }

  async unsubscribe(channel) {
    await this.command("unsubscribe", { channel });
    this.subscriptions.delete(channel);
  }

  publish(channel, data) {
    return this.command("publish", { channel, data });
  }

  presence(channel) {
    return this.command("presence", { channel });
  }

  /** Send one command; resolves to its result, rejects with an Error carrying `code`. */
  async command(type, fields) {
    await this._opened;
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      this._pending.set(id, { resolve, reject });
      this.socket.send(JSON.stringify({ id, type, ...fields }));
    });
  }

  _receive(message) {
    if ("id" in message) {
      const waiting = this._pending.get(message.id);
      if (!waiting) return;
      this._pending.delete(message.id);
      if (message.error) {
        const error = new Error(message.error.message);
        error.code = message.error.code;
        waiting.reject(error);
      } else {
        waiting.resolve(message.result);
      }
      return;
    }
    if (message.type === "pub") {
      this._deliver(message);
    } else if (message.type === "join" || message.type === "leave") {
      this.dispatchEvent(new CustomEvent(message.type, { detail: message }));
    }
  }

  _deliver(pub) {
    const subscription = this.subscriptions.get(pub.channel);
    if (!subscription) return;
    if (subscription.epoch === pub.epoch && pub.offset <= subscription.offset) return; // seen
    subscription.epoch = pub.epoch;
    subscription.offset = pub.offset;
    subscription.handler(pub.data, pub);
  }

  async _resubscribe() {
    // Every subscription answered on an earlier socket, from where it was.
    for (const [channel, subscription] of [...this.subscriptions]) {
      const fields = { channel, since: `${subscription.epoch}:${subscription.offset}` };
      if (subscription.presence) fields.presence = true;
      let result;
      try {
        result = await this.command("subscribe", fields);
      } catch (error) {
        continue; // the connection dropped again: the next open retries
      }
      for (const pub of result.publications || []) this._deliver(pub);
      if (!result.recovered) {
        subscription.epoch = result.epoch;
        subscription.offset = result.offset;
        this.dispatchEvent(new CustomEvent("gap", { detail: { channel } }));
      }
    }
  }

  _setStatus(status, extra = {}) {
    this.status = status;
    this.dispatchEvent(new CustomEvent("status", { detail: { status, ...extra } }));
  }
}
