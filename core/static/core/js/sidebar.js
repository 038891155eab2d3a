// The room page's rooms sidebar: the rooms the user can see, the current
// one marked (aria-current), each with its unread count and, apart, its
// mentions of the user. The list is rendered by the server, so it works
// before (and without) the socket; the counts come live from the frames a
// watching connection gets (docs/protocol.md, "Watching rooms"): "rooms"
// (the whole list), "activity" (something happened in another room),
// "read" (a read position moved, in any tab) and "room" (renamed).
// Text goes in through textContent only.

import { api } from "switchboard/http.js";
import { el } from "switchboard/render.js";

// Counts are capped by the server: 999 means "999 or more".
const COUNT_CAP = 999;
// New unread counts are announced at most this often, summed up.
const ANNOUNCE_EVERY_MS = 5000;
// An edit or deletion elsewhere: that room's counts are read again, once
// things settle.
const REFRESH_DELAY_MS = 1500;

const SVG = "http://www.w3.org/2000/svg";
const LOCK_PATH =
  "M6 9V7a4 4 0 1 1 8 0v2h1a1 1 0 0 1 1 1v7a1 1 0 0 1-1 1H5a1 1 0 0 1-1-1v-7a1 1 0 0 1 1-1h1Zm2 0h4V7a2 2 0 1 0-4 0v2Z";

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

export function formatCount(n) {
  return n >= COUNT_CAP ? `${COUNT_CAP}+` : String(n);
}

function count(value) {
  const n = Number(value);
  return Number.isSafeInteger(n) && n > 0 ? Math.min(n, COUNT_CAP) : 0;
}

function lockIcon() {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 20 20");
  svg.setAttribute("width", "14");
  svg.setAttribute("height", "14");
  const path = document.createElementNS(SVG, "path");
  path.setAttribute("d", LOCK_PATH);
  path.setAttribute("fill", "currentColor");
  svg.append(path);
  return svg;
}

export class RoomsSidebar {
  /**
   * @param {HTMLElement} nav the #rooms-nav element
   * @param {{me: string|null, current: string}} options
   */
  constructor(nav, { me, current }) {
    this.nav = nav;
    this.list = nav.querySelector("#rooms-list");
    this.announcer = document.getElementById("rooms-announcer");
    this.me = me ? me.toLowerCase() : null;
    this.current = current;
    this.rooms = new Map(); // slug -> {name, isPrivate, readSeq, lastSeq, unread, mentions}
    this.pendingAnnounce = new Set();
    this.announceTimer = null;
    this.lastAnnounced = 0;
    this.refreshTimers = new Map();
    for (const item of this.list.children) {
      const slug = item.dataset.slug;
      const readSeq = Number(item.dataset.readSeq);
      this.rooms.set(slug, {
        name: item.querySelector(".rooms-name").textContent,
        isPrivate: item.dataset.private === "1",
        readSeq: item.dataset.readSeq !== undefined && Number.isSafeInteger(readSeq) ? readSeq : null,
        lastSeq: null,
        unread: count(item.dataset.unread),
        mentions: count(item.dataset.mentions),
      });
    }
    nav.addEventListener("keydown", (event) => this.onKey(event));
    this.setCurrent(current);
  }

  get links() {
    return [...this.list.querySelectorAll("a.rooms-link")];
  }

  item(slug) {
    for (const item of this.list.children) if (item.dataset.slug === slug) return item;
    return null;
  }

  /** The read position the server last told of for ``slug``, or null. */
  readSeq(slug) {
    return this.rooms.get(slug)?.readSeq ?? null;
  }

  setCurrent(slug) {
    this.current = slug;
    for (const item of this.list.children) {
      const link = item.querySelector("a.rooms-link");
      if (item.dataset.slug === slug) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
  }

  /** One frame about the watched rooms. */
  apply(frame) {
    if (frame.type === "rooms" && Array.isArray(frame.rooms)) this.replaceAll(frame.rooms, frame.more === true);
    else if (frame.type === "activity") this.activity(frame);
    else if (frame.type === "read") this.readMoved(frame);
    else if (frame.type === "room") this.renamed(frame);
  }

  /** A "rooms" frame: the whole list, in its order (by slug). */
  replaceAll(rooms, more) {
    const seen = new Set();
    const items = [];
    for (const room of rooms) {
      if (!room || typeof room.slug !== "string" || seen.has(room.slug)) continue;
      seen.add(room.slug);
      const state = {
        name: String(room.name ?? room.slug),
        isPrivate: room.is_private === true,
        readSeq: Number.isSafeInteger(room.read_seq) ? room.read_seq : null,
        lastSeq: Number.isSafeInteger(room.last_seq) ? room.last_seq : null,
        unread: count(room.unread),
        mentions: count(room.mentions),
      };
      this.rooms.set(room.slug, state);
      const item = this.item(room.slug) ?? this.newItem(room.slug, state);
      this.render(item, state);
      items.push(item);
    }
    // Cut short ("more"), the list keeps the rooms it had; the current room
    // stays in any case (losing access to it closes the page's socket).
    for (const item of [...this.list.children]) {
      const slug = item.dataset.slug;
      if (seen.has(slug)) continue;
      if (more || slug === this.current) {
        items.push(item);
        seen.add(slug);
      } else {
        this.rooms.delete(slug);
      }
    }
    items.sort((a, b) => (a.dataset.slug < b.dataset.slug ? -1 : 1));
    const focused = this.list.contains(document.activeElement) ? document.activeElement : null;
    this.list.replaceChildren(...items);
    focused?.focus({ preventScroll: true });
    this.setCurrent(this.current);
    this.updateTotal();
  }

  newItem(slug, state) {
    const item = el("li");
    item.dataset.slug = slug;
    if (state.isPrivate) item.dataset.private = "1";
    const link = el("a", "rooms-link");
    link.href = `/rooms/${encodeURIComponent(slug)}/`;
    const icon = el("span", "rooms-icon");
    icon.setAttribute("aria-hidden", "true");
    if (state.isPrivate) icon.append(lockIcon());
    else icon.textContent = "#";
    const mentions = el("span", "rooms-mentions");
    const unread = el("span", "rooms-unread");
    mentions.setAttribute("aria-hidden", "true");
    unread.setAttribute("aria-hidden", "true");
    link.append(icon, el("span", "rooms-name"), mentions, unread, el("span", "rooms-counts visually-hidden"));
    item.append(link);
    return item;
  }

  /** Show a room's name and counts (the badges, and their words for screen readers). */
  render(item, state) {
    item.querySelector(".rooms-name").textContent = state.name;
    item.dataset.unread = String(state.unread);
    item.dataset.mentions = String(state.mentions);
    const unread = item.querySelector(".rooms-unread");
    unread.hidden = state.unread === 0;
    unread.textContent = formatCount(state.unread);
    const mentions = item.querySelector(".rooms-mentions");
    mentions.hidden = state.mentions === 0;
    mentions.textContent = `@${formatCount(state.mentions)}`;
    const words = [];
    if (state.unread) words.push(`${formatCount(state.unread)} unread`);
    if (state.mentions) words.push(plural(formatCount(state.mentions), "mention"));
    item.querySelector(".rooms-counts").textContent = words.length ? `, ${words.join(", ")}` : "";
    item.classList.toggle("rooms-has-unread", state.unread > 0);
  }

  update(slug, change, { announce = false } = {}) {
    const state = this.rooms.get(slug);
    const item = this.item(slug);
    if (!state || !item) return;
    Object.assign(state, change);
    state.unread = count(state.unread);
    state.mentions = count(state.mentions);
    this.render(item, state);
    this.updateTotal();
    if (announce && slug !== this.current) this.announce(slug);
  }

  /** Something happened in a room other than the connection's own. */
  activity(frame) {
    const slug = frame.room;
    const state = this.rooms.get(slug);
    if (!state) return;
    if (Number.isSafeInteger(frame.seq) && (state.lastSeq === null || frame.seq > state.lastSeq)) {
      state.lastSeq = frame.seq;
    }
    if (frame.kind === "message") {
      if (frame.author !== null && String(frame.author).toLowerCase() === this.me) return;
      if (Number.isSafeInteger(frame.seq) && state.readSeq !== null && frame.seq <= state.readSeq) return;
      this.update(
        slug,
        { unread: state.unread + 1, mentions: state.mentions + (this.mentionsMe(frame) ? 1 : 0) },
        { announce: true },
      );
    } else if (frame.kind === "edit" || frame.kind === "delete") {
      this.refreshSoon(slug);
    }
  }

  /** A message in ``slug`` that the user has not seen (the current room, away). */
  bump(slug, { mention = false } = {}) {
    const state = this.rooms.get(slug);
    if (!state) return;
    this.update(slug, { unread: state.unread + 1, mentions: state.mentions + (mention ? 1 : 0) });
  }

  mentionsMe(frame) {
    return Array.isArray(frame.mentions) && this.me !== null && frame.mentions.includes(this.me);
  }

  /** A read position moved (this tab, another, another device). */
  readMoved(frame) {
    if (!this.rooms.has(frame.room)) return;
    const change = { unread: frame.unread, mentions: frame.mentions };
    if (Number.isSafeInteger(frame.read_seq)) change.readSeq = frame.read_seq;
    this.update(frame.room, change);
  }

  renamed(frame) {
    if (typeof frame.name === "string" && frame.name && this.rooms.has(frame.slug)) {
      this.update(frame.slug, { name: frame.name });
    }
  }

  /** Edits and deletions change counts in ways only the server knows. */
  refreshSoon(slug) {
    clearTimeout(this.refreshTimers.get(slug));
    this.refreshTimers.set(
      slug,
      setTimeout(async () => {
        this.refreshTimers.delete(slug);
        try {
          const result = await api("GET", `/api/rooms/${encodeURIComponent(slug)}/read/`);
          if (result.ok && result.data) this.readMoved({ ...result.data, room: slug });
        } catch {
          // offline: the next rooms frame (after reconnecting) has the counts
        }
      }, REFRESH_DELAY_MS),
    );
  }

  /** The phone's Rooms button shows how many rooms have unread messages. */
  updateTotal() {
    let rooms = 0;
    for (const [slug, state] of this.rooms) if (slug !== this.current && state.unread > 0) rooms += 1;
    const badge = document.querySelector("#rooms-toggle .rooms-toggle-count");
    if (!badge) return;
    badge.hidden = rooms === 0;
    badge.textContent = String(rooms);
    const label = document.querySelector("#rooms-toggle .visually-hidden");
    if (label) label.textContent = rooms ? `Rooms (${plural(rooms, "room")} with unread messages)` : "Rooms";
  }

  /** Polite, and no more often than every few seconds: what is new where. */
  announce(slug) {
    this.pendingAnnounce.add(slug);
    if (this.announceTimer !== null) return;
    const wait = Math.max(0, this.lastAnnounced + ANNOUNCE_EVERY_MS - Date.now());
    this.announceTimer = setTimeout(() => this.flushAnnouncements(), wait);
  }

  flushAnnouncements() {
    this.announceTimer = null;
    this.lastAnnounced = Date.now();
    const parts = [];
    for (const slug of this.pendingAnnounce) {
      const state = this.rooms.get(slug);
      if (!state || slug === this.current || state.unread === 0) continue;
      let text = `${state.name}: ${formatCount(state.unread)} unread`;
      if (state.mentions) text += `, ${plural(formatCount(state.mentions), "mention")}`;
      parts.push(text);
    }
    this.pendingAnnounce.clear();
    if (parts.length) this.announcer.textContent = `${parts.join(". ")}.`;
  }

  /** Arrow Up/Down (and Home/End) move between the rooms of the list. */
  onKey(event) {
    if (!["ArrowDown", "ArrowUp", "Home", "End"].includes(event.key)) return;
    if (event.altKey || event.ctrlKey || event.metaKey || event.shiftKey) return;
    const links = this.links;
    const index = links.indexOf(document.activeElement);
    if (index === -1 || links.length === 0) return;
    event.preventDefault();
    let next = index;
    if (event.key === "ArrowDown") next = Math.min(index + 1, links.length - 1);
    else if (event.key === "ArrowUp") next = Math.max(index - 1, 0);
    else if (event.key === "Home") next = 0;
    else next = links.length - 1;
    links[next].focus();
  }
}

/**
 * "Notify me of mentions": asks for the Notification permission on a click
 * only; once granted, ``notify`` shows a notification while the tab is hidden.
 */
export class MentionNotifier {
  constructor(button, state, { onOpen }) {
    Object.assign(this, { button, state, onOpen });
    this.supported = typeof window.Notification === "function";
    if (!button || !this.supported) return;
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        await Notification.requestPermission();
      } finally {
        button.disabled = false;
        this.show();
      }
    });
    this.show();
  }

  get permitted() {
    return this.supported && Notification.permission === "granted";
  }

  show() {
    if (!this.button) return;
    const permission = Notification.permission;
    this.button.hidden = permission !== "default";
    this.state.hidden = permission === "default";
    this.state.textContent =
      permission === "granted"
        ? "You are notified of mentions while this tab is hidden."
        : "Notifications are blocked in this browser's settings.";
  }

  /** A mention of the user in ``slug``; shown only with the tab hidden. */
  notify({ slug, roomName, author, body }) {
    if (!this.permitted || !document.hidden) return;
    const title = `${author ?? "Someone"} mentioned you in ${roomName}`;
    const options = { tag: `mention-${slug}` };
    if (body) options.body = body.length > 200 ? `${body.slice(0, 200)}…` : body;
    try {
      const notification = new Notification(title, options);
      notification.addEventListener("click", () => {
        window.focus();
        this.onOpen(slug);
        notification.close();
      });
    } catch {
      // some browsers allow notifications from a service worker only
    }
  }
}
