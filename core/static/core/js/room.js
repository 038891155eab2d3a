// The room page: live messages over /ws/rooms/<slug>/ (docs/protocol.md).
//
// Messages are kept sorted and deduplicated by seq. Own messages show at
// once as pending (data-client-id, data-pending) and take their seq from the
// ack or from their own broadcast, whichever comes first. Messages typed
// while offline wait in the outbox and go out, with the same client_id, once
// the socket has resumed with ?after=<highest contiguous seq>; the server
// acks a repeat with the original seq, so nothing is ever doubled.

import { RoomConnection } from "switchboard/connection.js";
import {
  Announcer,
  ConnectionStatus,
  Notice,
  PresenceList,
  TypingIndicator,
} from "switchboard/indicators.js";
import { MessageList, parseSentAt } from "switchboard/messages.js";
import { Timeline } from "switchboard/timeline.js";

const GAP_FILL_DELAY_MS = 2000;
const TYPING_SEND_EVERY_MS = 3000;
const OLDER_PAGE = 50;
const FILL_PAGE = 100;
const COMPOSER_MAX_HEIGHT_PX = 200;

const $ = (id) => document.getElementById(id);
const root = $("room");
const { room: slug, messagesApi, loginUrl } = root.dataset;
const me = root.dataset.user || null;
const composer = $("composer");
const field = composer?.elements.body;
const loadButton = $("load-earlier");

const messages = new MessageList(
  { list: $("messages"), scroller: $("scroller"), jump: $("jump"), empty: $("empty") },
  me,
);
const typing = new TypingIndicator($("typing"), me);
const presence = new PresenceList(
  { panel: $("people"), list: $("presence"), summary: $("presence-summary"), count: $("people-count") },
  me,
);
const announcer = new Announcer($("announcer"));
const notice = new Notice($("notice"));
const status = new ConnectionStatus(
  { root, pill: $("connection"), banner: $("connection-banner"), loginUrl },
  () => ({ retryAt, unsent: unsentCount(), reason: closedReason }),
);

const initial = JSON.parse($("initial-messages").textContent);
const timeline = new Timeline(Math.max(0, ...initial.messages.map((m) => m.seq)));
const outbox = new Map(); // client_id -> {clientId, body, item, inFlight}
let live = false; // resumed: the replay is done, sends and history may go out
let everLive = false;
let historyRequests = []; // what each unanswered history frame asked for
let fillInFlight = false;
let olderInFlight = false;
let moreAbove = initial.has_more;
let gapTimer = null;
let missedWhileAway = 0;
let lastTypingSent = -Infinity;
let sendsPausedUntil = 0; // after rate_limited: hold sends, keep their order
let resumeTimer = null;
let retryAt = 0;
let closedReason = null; // "forbidden" or "signed-out" once access is gone
let reloadAfterReplay = false; // historyWentBack: fetch the latest page once live

// --- incoming messages ------------------------------------------------------

/**
 * Take one message frame from any source: "live", "replay", "fill",
 * "older" or "initial". Duplicates (by seq) are dropped.
 */
function receiveMessage(frame, source) {
  if (!Number.isSafeInteger(frame.seq)) return;
  const author = frame.author ?? null;
  typing.stopped(author);
  const own = frame.client_id && author === me ? outbox.get(frame.client_id) : undefined;
  if (own) {
    settle(own, frame.seq, parseSentAt(frame.sent_at));
    return;
  }
  if (!timeline.add(frame.seq)) {
    messages.refreshTime(frame);
    return;
  }
  messages.addHeld(frame);
  if (author === me) return;
  if (source === "live" || source === "fill") {
    announcer.say(`${author ?? "Announcement"}: ${frame.body}`);
  } else if (source === "replay") {
    missedWhileAway += 1;
  }
}

function receiveBatch(frames, source) {
  messages.appending(() => {
    for (const frame of frames) receiveMessage(frame, source);
  });
}

// --- own messages -------------------------------------------------------------

function newClientId() {
  // getRandomValues works on plain http too, unlike crypto.randomUUID().
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function queueMessage(body) {
  const clientId = newClientId();
  const item = messages.addPending(body, clientId);
  outbox.set(clientId, { clientId, body, item, inFlight: false });
  pump();
  messages.scrollToBottom();
}

/**
 * Send own messages one at a time, in the order they were typed: the next
 * goes out after the previous one's ack, so a rate limit (which refuses one
 * and may accept the next) can never reorder them.
 */
function pump() {
  const paused = Date.now() < sendsPausedUntil;
  let blocked = !live || paused;
  for (const pending of outbox.values()) {
    if (pending.item.dataset.pending === "failed") continue;
    if (!blocked && !pending.inFlight) {
      const frame = { type: "send", body: pending.body, client_id: pending.clientId };
      pending.inFlight = connection.send(frame);
    }
    blocked = true;
    if (!live) messages.markPending(pending.item, "queued", "Waiting for connection");
    else if (paused) messages.markPending(pending.item, "sending", "Sending soon…");
    else messages.markPending(pending.item, "sending", "Sending…");
  }
  status.refresh();
}

function pauseSends(ms) {
  sendsPausedUntil = Date.now() + ms;
  clearTimeout(resumeTimer);
  resumeTimer = setTimeout(() => {
    sendsPausedUntil = 0;
    pump();
  }, ms);
  pump();
}

function unsentCount() {
  let count = 0;
  for (const pending of outbox.values()) if (pending.item.dataset.pending !== "failed") count += 1;
  return count;
}

/** An own message got its seq: it becomes an ordinary held message. */
function settle(pending, seq, sentAt) {
  outbox.delete(pending.clientId);
  if (timeline.add(seq)) messages.settle(pending.item, seq, sentAt);
  else messages.remove(pending.item); // shown already through another path
  pump();
}

function actionButton(text, onClick) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "link-button";
  button.textContent = text;
  button.addEventListener("click", onClick);
  return button;
}

/** The server refused an own message: say why, offer Retry and Discard. */
function failPending(pending, detail, { canRetry = true } = {}) {
  pending.inFlight = false;
  messages.markPending(pending.item, "failed", `Not sent: ${detail}`);
  pump();
  pending.item.querySelector(".msg-actions")?.remove();
  const actions = document.createElement("span");
  actions.className = "msg-actions";
  if (canRetry) {
    actions.append(
      actionButton("Retry", () => {
        actions.remove();
        pending.item.dataset.pending = "queued";
        pump();
      }),
    );
  }
  actions.append(
    actionButton("Discard", () => {
      outbox.delete(pending.clientId);
      messages.remove(pending.item);
      field?.focus();
    }),
  );
  pending.item.querySelector(".msg-meta").append(actions);
}

// --- history: gaps and scroll-back -------------------------------------------

function sendHistory(params, request) {
  if (!live || !connection.send({ type: "history", ...params })) return false;
  historyRequests.push(request);
  return true;
}

/** Fetch what lies above the highest contiguous seq. */
function requestFill() {
  clearTimeout(gapTimer);
  gapTimer = null;
  if (fillInFlight) return;
  fillInFlight = sendHistory({ after: timeline.contiguous, limit: FILL_PAGE }, { kind: "fill" });
}

/** A gap that live frames have not filled within 2 s is fetched. */
function scheduleGapCheck() {
  if (!timeline.hasGap || gapTimer || fillInFlight) return;
  gapTimer = setTimeout(() => {
    gapTimer = null;
    if (timeline.hasGap) requestFill();
  }, GAP_FILL_DELAY_MS);
}

function loadEarlier() {
  if (olderInFlight) return;
  // Nothing held (after historyWentBack): the latest page.
  const before = timeline.lowest ?? timeline.contiguous + 1;
  if (before <= 1) return;
  olderInFlight = sendHistory({ before, limit: OLDER_PAGE }, { kind: "older" });
  updateHistoryEdge();
}

/**
 * The room holds fewer messages than this page: its database was restored
 * from a backup, and the seqs above ``lastSeq`` will be given to new
 * messages. What the page holds is dropped, as a fresh page would not show
 * it, and the latest page is fetched once the replay is done; own messages
 * not yet acked stay, and go again.
 */
function historyWentBack(lastSeq) {
  messages.clearHeld();
  timeline.reset(lastSeq);
  moreAbove = lastSeq > 0;
  reloadAfterReplay = moreAbove;
  notice.show("This room's history was restored from a backup; the messages are shown again.");
}

function receiveOlder(frames, hasMore) {
  messages.prepending(() => {
    for (const frame of frames) receiveMessage(frame, "older");
  });
  olderInFlight = false;
  moreAbove = hasMore;
  updateHistoryEdge();
}

/** The top of the list: "Load earlier messages", or the room's start. */
function updateHistoryEdge() {
  const hadFocus = document.activeElement === loadButton;
  loadButton.hidden = !moreAbove;
  loadButton.disabled = !live || olderInFlight;
  loadButton.textContent = olderInFlight ? "Loading…" : "Load earlier messages";
  const start = $("history-start");
  start.hidden = moreAbove || timeline.size === 0;
  if (hadFocus && loadButton.hidden) start.focus();
}

function retryHistory(request) {
  if (request.kind === "fill") {
    fillInFlight = false;
    requestFill();
  } else {
    olderInFlight = false;
    loadEarlier();
  }
}

// --- frames ---------------------------------------------------------------------

const handlers = {
  welcome(frame) {
    if (me && frame.user !== me) {
      accessLost("signed-out"); // the session ended: this socket is a guest's
      return;
    }
    if (!Number.isSafeInteger(frame.last_seq)) return;
    if (frame.last_seq < timeline.contiguous) historyWentBack(frame.last_seq);
    timeline.noteExists(frame.last_seq);
  },
  message(frame) {
    // Before "replayed", message frames are the replay.
    receiveBatch([frame], live ? "live" : "replay");
    scheduleGapCheck();
  },
  replayed(frame) {
    live = true;
    everLive = true;
    connection.markHealthy();
    status.set("open");
    updateHistoryEdge();
    pump();
    if (reloadAfterReplay) {
      reloadAfterReplay = false;
      loadEarlier();
    }
    if (frame.complete === false) requestFill();
    else scheduleGapCheck();
    if (missedWhileAway) {
      const n = missedWhileAway;
      announcer.say(`${n} new message${n === 1 ? "" : "s"} while you were away.`);
      missedWhileAway = 0;
    }
  },
  ack(frame) {
    if (!Number.isSafeInteger(frame.seq)) return;
    timeline.noteExists(frame.seq);
    const pending = outbox.get(frame.client_id);
    if (pending) messages.appending(() => settle(pending, frame.seq, null));
    scheduleGapCheck();
  },
  history(frame) {
    const request = historyRequests.shift() ?? { kind: "fill" };
    const frames = Array.isArray(frame.messages) ? frame.messages : [];
    if (request.kind === "older") {
      receiveOlder(frames, frame.has_more === true);
      return;
    }
    fillInFlight = false;
    receiveBatch(frames, "fill");
    if (frame.has_more) requestFill();
    else scheduleGapCheck();
  },
  presence(frame) {
    presence.render(frame);
  },
  typing(frame) {
    typing.started(frame.user);
  },
  pong() {},
  error(frame) {
    const pending = frame.client_id ? outbox.get(frame.client_id) : undefined;
    if (frame.code === "forbidden") accessLost("forbidden");
    else if (frame.code === "unauthenticated") accessLost("signed-out");
    else if (frame.code === "rate_limited") rateLimited(frame, pending);
    else if (pending) failPending(pending, frame.detail || frame.code);
    else notice.show(frame.detail || "Something went wrong.");
  },
};

function rateLimited(frame, pending) {
  const wait = Math.max(Number(frame.retry_after_ms) || 1000, 100);
  if (pending) {
    // Not stored: it goes again, in order, when the pause is over.
    pending.inFlight = false;
    notice.show("You are sending messages quickly; the rest will follow in a moment.");
    pauseSends(wait);
    return;
  }
  // Sends always carry a client_id, so a bare rate_limited answers history.
  const request = historyRequests.shift();
  if (request) setTimeout(() => retryHistory(request), wait);
}

function accessLost(reason) {
  closedReason = reason;
  live = false;
  connection.stop(4403);
}

async function roomIsGone() {
  // A refused handshake (403) looks like a network failure to the page; the
  // HTTP API tells "no such room for you" (404) from "server unreachable".
  try {
    const response = await fetch(`${messagesApi}?limit=1`, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "application/json" },
    });
    return response.status === 404 || response.status === 403;
  } catch {
    return false;
  }
}

const connection = new RoomConnection({
  url: () => {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    return `${scheme}://${location.host}/ws/rooms/${slug}/?after=${timeline.contiguous}`;
  },
  onFrame(frame) {
    if (Object.hasOwn(handlers, frame.type)) handlers[frame.type](frame);
  },
  onOpen() {},
  onDrop({ delayMs }) {
    live = false;
    historyRequests = [];
    fillInFlight = false;
    olderInFlight = false;
    clearTimeout(gapTimer);
    gapTimer = null;
    typing.clear();
    presence.markStale();
    // An unacked send may or may not have arrived: it goes again, with the
    // same client_id, after resuming (the server acks a repeat, stores once).
    for (const pending of outbox.values()) pending.inFlight = false;
    pump();
    retryAt = Date.now() + delayMs;
    // Until the first resume the banner stays calm: it is still connecting.
    status.set(everLive ? "reconnecting" : "connecting");
    updateHistoryEdge();
  },
  onStop() {
    live = false;
    closedReason ??= "forbidden";
    const why = closedReason === "signed-out" ? "signed out" : "no access to this room";
    for (const pending of outbox.values()) failPending(pending, why, { canRetry: false });
    if (composer) {
      field.disabled = true;
      composer.querySelector("button[type=submit]").disabled = true;
    }
    presence.markStale();
    status.set("closed");
    updateHistoryEdge();
  },
  isGone: roomIsGone,
});

// --- composer and page wiring ---------------------------------------------------

function sendTyping() {
  const now = Date.now();
  if (!live || now - lastTypingSent < TYPING_SEND_EVERY_MS) return;
  if (connection.send({ type: "typing" })) lastTypingSent = now;
}

function resizeComposer() {
  field.style.height = "auto";
  field.style.height = `${Math.min(field.scrollHeight, COMPOSER_MAX_HEIGHT_PX)}px`;
}

if (composer) {
  composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const body = field.value;
    if (!body.trim() || field.disabled) return;
    queueMessage(body);
    field.value = "";
    resizeComposer();
    field.focus();
  });
  field.addEventListener("keydown", (event) => {
    // Enter sends, Shift+Enter is a new line; never mid-composition (IME).
    if (event.key !== "Enter" || event.shiftKey || event.altKey || event.isComposing) return;
    event.preventDefault();
    composer.requestSubmit();
  });
  field.addEventListener("input", () => {
    resizeComposer();
    if (field.value.trim()) sendTyping();
  });
  window.addEventListener("beforeunload", (event) => {
    if (unsentCount()) event.preventDefault();
  });
}

loadButton.addEventListener("click", loadEarlier);
$("connection-banner")
  .querySelector(".banner-action")
  .addEventListener("click", () => connection.retryNow());

const peopleToggle = $("people-toggle");
function showPeople(open) {
  root.classList.toggle("people-open", open);
  peopleToggle.setAttribute("aria-expanded", String(open));
}
peopleToggle.addEventListener("click", () => showPeople(!root.classList.contains("people-open")));
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && root.classList.contains("people-open")) {
    showPeople(false);
    peopleToggle.focus();
  }
});

for (const frame of initial.messages) receiveMessage(frame, "initial");
messages.updateEmpty();
updateHistoryEdge();
messages.scrollToBottom();
status.set("connecting");
connection.start();
