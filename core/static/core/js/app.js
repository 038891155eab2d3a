// The room page: the rooms sidebar (sidebar.js) and one mounted room
// (room.js). Picking a room in the sidebar switches without a page load: the
// room's page is fetched, its #room element put in place of the current
// one (whose connection, timers and listeners go with it), and the address
// pushed to the history, so Back and Forward switch the same way. Any
// failure falls back to an ordinary page load.

import { configureMentions, mentionsMe } from "switchboard/render.js";
import { mentionedNames } from "switchboard/mentions.js";
import { mountRoom } from "switchboard/room.js";
import { MentionNotifier, RoomsSidebar } from "switchboard/sidebar.js";

const nav = document.getElementById("rooms-nav");
const me = document.getElementById("room").dataset.user || null;
configureMentions(mentionedNames, me);

const sidebar = new RoomsSidebar(nav, { me, current: document.getElementById("room").dataset.room });
const notifier = new MentionNotifier(
  document.getElementById("notify-mentions"),
  document.getElementById("notify-state"),
  { onOpen: (slug) => switchTo(new URL(`/rooms/${encodeURIComponent(slug)}/`, location.href), { push: true }) },
);
let view = null;
let switching = null;

function roomName(slug) {
  return sidebar.rooms.get(slug)?.name ?? slug;
}

function mount(root) {
  const slug = root.dataset.room;
  sidebar.setCurrent(slug);
  view = mountRoom(root, {
    onWatch(frame) {
      sidebar.apply(frame);
      if (frame.type === "activity" && frame.kind === "message" && sidebar.mentionsMe(frame)) {
        notifier.notify({ slug: frame.room, roomName: roomName(frame.room), author: frame.author });
      }
    },
    readSeq: (room) => sidebar.readSeq(room),
    onMessage(frame, { seen }) {
      const mention = mentionsMe(String(frame.body ?? ""));
      if (mention) notifier.notify({ slug, roomName: roomName(slug), author: frame.author, body: frame.body });
      if (!seen) sidebar.bump(slug, { mention });
    },
  });
  sidebar.updateTotal();
}

// --- switching rooms ------------------------------------------------------------

function isRoomPath(url) {
  return url.origin === location.origin && /^\/rooms\/[^/]+\/$/.test(url.pathname);
}

/** Show the room at ``url`` in place of the current one; false: stay. */
async function switchTo(url, { push }) {
  if (view && view.unsent && !window.confirm("Some of your messages are not sent yet. Leave this room anyway?")) {
    return false;
  }
  switching?.abort();
  const controller = new AbortController();
  switching = controller;
  let page;
  try {
    const response = await fetch(url, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "text/html" },
      signal: controller.signal,
    });
    if (!response.ok || new URL(response.url).pathname !== url.pathname) throw new Error("not a room page");
    page = new DOMParser().parseFromString(await response.text(), "text/html");
  } catch (error) {
    if (error.name === "AbortError") return false;
    location.assign(url);
    return false;
  }
  if (switching !== controller) return false;
  switching = null;
  const fresh = page.getElementById("room");
  if (!fresh || fresh.dataset.user !== (me ?? "")) {
    location.assign(url); // signed out meanwhile, or not a room: a real load
    return false;
  }
  view?.unmount();
  view = null;
  const old = document.getElementById("room");
  const root = document.adoptNode(fresh);
  old.replaceWith(root);
  for (const notices of document.querySelectorAll("main > .notices")) notices.remove();
  document.title = page.title;
  if (push) history.pushState({ room: root.dataset.room }, "", url);
  mount(root);
  showRooms(false, { refocus: false });
  // The keyboard (and a screen reader) lands on the new room's name.
  root.querySelector(".room-title h1")?.focus();
  return true;
}

nav.addEventListener("click", (event) => {
  const link = event.target.closest("a.rooms-link");
  if (!link || event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const url = new URL(link.href);
  if (!isRoomPath(url)) return;
  event.preventDefault();
  if (url.pathname === location.pathname && !url.search && !location.search) {
    showRooms(false);
    return;
  }
  switchTo(url, { push: true });
});

window.addEventListener("popstate", () => {
  const url = new URL(location.href);
  if (!isRoomPath(url)) {
    location.reload();
    return;
  }
  if (view && url.pathname === `/rooms/${view.slug}/` && !url.search) return;
  switchTo(url, { push: false });
});
history.replaceState({ room: document.getElementById("room").dataset.room }, "", location.href);

// --- the sidebar on phones: behind the Rooms button -----------------------------

function showRooms(open, { refocus = true } = {}) {
  const wasOpen = document.body.classList.contains("rooms-open");
  document.body.classList.toggle("rooms-open", open);
  document.getElementById("rooms-toggle")?.setAttribute("aria-expanded", String(open));
  if (open) (nav.querySelector("a[aria-current=page]") ?? nav.querySelector("a.rooms-link"))?.focus();
  else if (wasOpen && refocus) document.getElementById("rooms-toggle")?.focus();
}

document.addEventListener("click", (event) => {
  if (event.target.closest("#rooms-toggle")) {
    showRooms(!document.body.classList.contains("rooms-open"));
    return;
  }
  // A tap beside the open panel closes it.
  if (document.body.classList.contains("rooms-open") && !nav.contains(event.target)) showRooms(false);
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && document.body.classList.contains("rooms-open")) showRooms(false);
});

mount(document.getElementById("room"));
