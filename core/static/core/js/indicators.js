// The room page's indicators: who is here, who is typing, the connection
// status, and polite announcements for screen readers. DOM only: the
// protocol state lives in room.js. Text goes in through textContent.

import { personItem } from "switchboard/render.js";

const TYPING_SHOW_MS = 5000;
const ANNOUNCE_BATCH_MS = 800;
const ANNOUNCE_MAX_CHARS = 300;
const NOTICE_SHOW_MS = 6000;

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

/** "alice is typing…", for a few seconds after each typing frame. */
export class TypingIndicator {
  constructor(node, me) {
    this.node = node;
    this.me = me;
    this.until = new Map();
    this.timer = null;
  }

  started(name) {
    if (!name || name === this.me) return;
    this.until.set(name, Date.now() + TYPING_SHOW_MS);
    this.render();
  }

  stopped(name) {
    if (name && this.until.delete(name)) this.render();
  }

  clear() {
    this.until.clear();
    this.render();
  }

  dispose() {
    clearTimeout(this.timer);
  }

  render() {
    const now = Date.now();
    for (const [name, until] of this.until) if (until <= now) this.until.delete(name);
    const names = [...this.until.keys()];
    let text = "";
    if (names.length === 1) text = `${names[0]} is typing…`;
    else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
    else if (names.length > 2) text = "Several people are typing…";
    this.node.textContent = text;
    clearTimeout(this.timer);
    if (names.length) {
      const next = Math.min(...this.until.values()) - now;
      this.timer = setTimeout(() => this.render(), Math.max(next, 50));
    }
  }
}

/** #presence and its counts, from presence frames. */
export class PresenceList {
  constructor({ panel, list, summary, count }, me) {
    Object.assign(this, { panel, list, summary, count, me });
  }

  render(frame) {
    const users = Array.isArray(frame.users) ? frame.users.map(String) : [];
    this.list.replaceChildren(...users.map((name) => personItem(name, this.me)));
    const total = Number(frame.total_users) || users.length;
    const guests = Number(frame.anonymous) || 0;
    const parts = [];
    if (total > users.length) parts.push(`+${total - users.length} more`);
    if (guests) parts.push(plural(guests, "guest"));
    this.summary.textContent = parts.length ? `· ${parts.join(", ")}` : "";
    this.count.textContent = String(total + guests);
    this.panel.classList.remove("stale");
  }

  /** Offline: the list is what it was, shown dimmed. */
  markStale() {
    this.panel.classList.add("stale");
  }
}

/** A polite live region; bursts are summed up instead of read one by one. */
export class Announcer {
  constructor(node) {
    this.node = node;
    this.queue = [];
    this.timer = null;
  }

  say(text) {
    const short = text.length > ANNOUNCE_MAX_CHARS ? `${text.slice(0, ANNOUNCE_MAX_CHARS)}…` : text;
    this.queue.push(short);
    this.timer ??= setTimeout(() => this.flush(), ANNOUNCE_BATCH_MS);
  }

  dispose() {
    clearTimeout(this.timer);
    this.queue = [];
  }

  flush() {
    this.timer = null;
    const count = this.queue.length;
    const latest = this.queue[count - 1];
    this.node.textContent = count === 1 ? latest : `${count} new messages. Latest: ${latest}`;
    this.queue = [];
  }
}

/** A short notice (e.g. "slow down"); its region stays in the page. */
export class Notice {
  constructor(node) {
    this.node = node;
    this.timer = null;
  }

  dispose() {
    clearTimeout(this.timer);
  }

  show(text) {
    this.node.textContent = text;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.node.textContent = "";
    }, NOTICE_SHOW_MS);
  }
}

const STATE_LABELS = {
  connecting: "Connecting…",
  open: "Live",
  reconnecting: "Reconnecting…",
  closed: "Offline",
};

/**
 * ``data-ws-state`` on the room root, the status pill, and the banner.
 * ``describe()`` gives what the banner says: {retryAt, unsent, reason}.
 */
export class ConnectionStatus {
  constructor({ root, pill, banner, loginUrl }, describe) {
    Object.assign(this, { root, pill, banner, loginUrl, describe });
    this.countdown = null;
  }

  get state() {
    return this.root.dataset.wsState;
  }

  /** Which transport carries the room: "websocket", or "sse" (over HTTP). */
  setTransport(transport) {
    this.root.dataset.transport = transport;
    let label = this.pill.querySelector(".conn-transport");
    if (!label) {
      label = document.createElement("span");
      label.className = "conn-transport";
      this.pill.append(label);
    }
    label.textContent = transport === "sse" ? " (over HTTP)" : "";
    this.pill.title = transport === "sse" ? "WebSockets are blocked here: live updates come over HTTP." : "";
  }

  set(state) {
    this.root.dataset.wsState = state;
    this.pill.querySelector(".conn-text").textContent = STATE_LABELS[state];
    clearInterval(this.countdown);
    if (state === "reconnecting") this.countdown = setInterval(() => this.refresh(), 1000);
    this.refresh();
  }

  dispose() {
    clearInterval(this.countdown);
  }

  refresh() {
    const { retryAt, unsent, reason } = this.describe();
    const state = this.state;
    let text = "";
    if (state === "reconnecting") {
      const seconds = Math.ceil((retryAt - Date.now()) / 1000);
      text = seconds > 0 ? `Connection lost. Retrying in ${seconds} s.` : "Connection lost. Reconnecting…";
      if (unsent) text += ` ${plural(unsent, "unsent message")} will go out once you are back.`;
    } else if (state === "closed") {
      text =
        reason === "signed-out"
          ? "You have been signed out. Log in again to keep chatting."
          : "You no longer have access to this room.";
    }
    const banner = this.banner;
    banner.hidden = !text;
    banner.dataset.kind = state;
    banner.querySelector(".banner-text").textContent = text;
    banner.querySelector(".banner-action").hidden = state !== "reconnecting";
    const link = banner.querySelector(".banner-link");
    link.hidden = state !== "closed";
    if (state === "closed" && reason === "signed-out") {
      link.textContent = "Log in";
      link.href = this.loginUrl;
    }
  }
}
