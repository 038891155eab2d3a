// The room page: live messages over /ws/rooms/<slug>/ (docs/protocol.md).
//
// Messages are kept sorted and deduplicated by seq. Own messages show at
// once as pending (data-client-id, data-pending) and take their seq from the
// ack or from their own broadcast, whichever comes first. Messages typed
// while offline wait in the outbox and go out, with the same client_id, once
// the socket has resumed with ?after=<highest contiguous seq>; the server
// acks a repeat with the original seq, so nothing is ever doubled.
//
// Edits and deletions are change events: message frames with "kind" and
// "target" that take their own seq. They are never shown as rows; they are
// applied to the row of their target, and count like any seq for resuming
// and gap filling, so a page that was away catches up on them too. Own
// edits and deletions made offline wait in their own queue, as messages do,
// and go out with their client_id once resumed (a repeat is acked, not
// applied twice).

import { RoomConnection } from "switchboard/connection.js";
import { StreamLink } from "switchboard/stream.js";
import { InlineEditor } from "switchboard/edits.js";
import {
  Announcer,
  ConnectionStatus,
  Notice,
  PresenceList,
  TypingIndicator,
} from "switchboard/indicators.js";
import { mountMembers } from "switchboard/members.js";
import { MessageList, parseSentAt } from "switchboard/messages.js";
import { Timeline } from "switchboard/timeline.js";

const GAP_FILL_DELAY_MS = 2000;
const TYPING_SEND_EVERY_MS = 3000;
const OLDER_PAGE = 50;
const FILL_PAGE = 100;
const COMPOSER_MAX_HEIGHT_PX = 200;
const MAX_BODY_CODE_POINTS = 4000;

const READ_DEBOUNCE_MS = 600;

/**
 * Mount the room page's live part on ``root`` (the #room element): its
 * timeline, composer, presence and connection. Returns a handle whose
 * ``unmount()`` closes the connection, clears every timer and removes every
 * listener this mount added outside ``root``, so another room can be
 * mounted in its place (a switch without a page load).
 *
 * ``hooks`` (all optional): ``onWatch(frame)`` gets the frames about other
 * rooms (``rooms``, ``activity``, ``read``, ``room``: docs/protocol.md);
 * ``readSeq(slug)`` tells the read position known for a room (null if none);
 * ``onMessage(frame, {seen})`` gets each live message of someone else
 * (``seen``: shown at the bottom of a visible tab).
 */
export function mountRoom(root, hooks = {}) {
  const $ = (id) => root.querySelector(`#${id}`);
  const lifetime = new AbortController();
  const signal = lifetime.signal;
  const timers = new Set();
  let unmounted = false;
  /** setTimeout that unmount() clears, and that never fires after it. */
  function later(fn, ms) {
    const id = setTimeout(() => {
      timers.delete(id);
      if (!unmounted) fn();
    }, ms);
    timers.add(id);
    return id;
  }
  function cancel(id) {
    clearTimeout(id);
    timers.delete(id);
  }
  const { room: slug, messagesApi, loginUrl } = root.dataset;
  const me = root.dataset.user || null;
  const composer = $("composer");
  const field = composer?.elements.body;
  const loadButton = $("load-earlier");
  const readApi = messagesApi.replace(/messages\/$/, "read/");

  const messages = new MessageList(
    { list: $("messages"), scroller: $("scroller"), jump: $("jump"), empty: $("empty") },
    me,
    { canPost: Boolean(composer), canModerate: root.dataset.canModerate === "1" },
    { signal },
  );
  const editor = new InlineEditor({ onSave: saveEdit, fallbackFocus: field ?? null });
  const typing = new TypingIndicator($("typing"), me);
  const presence = new PresenceList(
    { panel: $("people"), list: $("presence"), summary: $("presence-summary"), count: $("people-count") },
    me,
  );
  const announcer = new Announcer($("announcer"));
  const notice = new Notice($("notice"));
  const members = mountMembers(root, { slug, me, signal, notice, homeUrl: "/" });
  const status = new ConnectionStatus(
    { root, pill: $("connection"), banner: $("connection-banner"), loginUrl },
    () => ({ retryAt, unsent: unsentCount(), reason: closedReason }),
  );

  const initial = JSON.parse($("initial-messages").textContent);
  const timeline = new Timeline(Math.max(0, ...initial.messages.map((m) => m.seq)));
  const outbox = new Map(); // client_id -> {clientId, body, item, inFlight}
  const changes = new Map(); // client_id -> {clientId, type, seq, body, item, inFlight}
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
  // ?at=<seq> (a search result): the page holds the messages around it.
  const jumpedTo = Number.isSafeInteger(initial.at) ? initial.at : null;
  let readTimer = null;
  let lastReadSent = 0;

  // --- incoming messages ------------------------------------------------------

  /**
   * Take one message frame from any source: "live", "replay", "fill",
   * "older" or "initial". Duplicates (by seq) are dropped.
   */
  function receiveMessage(frame, source) {
    if (!Number.isSafeInteger(frame.seq)) return;
    if (frame.kind !== undefined && frame.kind !== null) {
      receiveChange(frame, source);
      return;
    }
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
    if (author === me) return false;
    if (source === "live" || source === "fill") {
      announcer.say(`${author ?? "Announcement"}: ${frame.body}`);
    } else if (source === "replay" && (everLive || jumpedTo === null)) {
      // Opened at a message, the first replay is the rest of the room, not news.
      missedWhileAway += 1;
    }
    return true;
  }

  /**
   * A change event (or a kind this page does not know): its seq counts as
   * held, and it changes the row of its target, never adding one. An "older"
   * page's changes are already in the state of the messages it brings, and
   * anything newer has been applied: they are only counted.
   */
  function receiveChange(frame, source) {
    if (!timeline.add(frame.seq)) return;
    const own = frame.client_id && frame.author === me ? changes.get(frame.client_id) : undefined;
    if (own) changeStored(own, frame.seq);
    if (source === "older") return;
    messages.applyChange(frame);
    if (editor.item?.dataset.deleted) {
      editor.cancel();
      notice.show("The message you were editing has been deleted.");
    }
  }

  function receiveBatch(frames, source) {
    const fresh = [];
    messages.appending(() => {
      for (const frame of frames) if (receiveMessage(frame, source)) fresh.push(frame);
    });
    if (source !== "live" && source !== "fill") return;
    const seen = document.visibilityState === "visible" && messages.nearBottom();
    for (const frame of fresh) hooks.onMessage?.(frame, { seen });
    scheduleRead();
  }

  // --- read position ----------------------------------------------------------------

  /** Soon, if the newest message is on screen in a visible tab: mark it read. */
  function scheduleRead() {
    if (!me || readTimer !== null) return;
    readTimer = later(() => {
      readTimer = null;
      markRead();
    }, READ_DEBOUNCE_MS);
  }

  function markRead() {
    if (!live || document.visibilityState !== "visible" || !messages.nearBottom()) return;
    const seq = timeline.contiguous;
    const known = hooks.readSeq?.(slug) ?? 0;
    if (seq <= Math.max(lastReadSent, known)) return;
    if (connection.send({ type: "read", seq })) lastReadSent = seq;
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
    pumpChanges(paused);
    status.refresh();
  }

  // --- own edits and deletions ----------------------------------------------------

  const CHANGE_LABELS = {
    edit: { queued: "Edit waiting for connection", sending: "Saving…" },
    delete: { queued: "Deletion waiting for connection", sending: "Deleting…" },
  };

  /**
   * Queue an edit or a deletion of the row ``item``. While offline it waits
   * (the row says so) and goes out after resuming, with the same client_id:
   * the server acks a repeat with the original event's seq.
   */
  function queueChange(type, item, body = null) {
    const seq = Number(item.dataset.seq);
    if (!Number.isSafeInteger(seq)) return;
    const clientId = newClientId();
    changes.set(clientId, { clientId, type, seq, body, item, inFlight: false });
    messages.markChanging(item, "queued", CHANGE_LABELS[type].queued, body);
    pump();
  }

  /** Like sends, one at a time and in order, so a rate limit cannot reorder them. */
  function pumpChanges(paused) {
    let blocked = !live || paused;
    for (const change of changes.values()) {
      if (!blocked && !change.inFlight) {
        const frame = { type: change.type, seq: change.seq, client_id: change.clientId };
        if (change.type === "edit") frame.body = change.body;
        change.inFlight = connection.send(frame);
      }
      blocked = true;
      const state = live ? "sending" : "queued";
      const label = CHANGE_LABELS[change.type][state];
      if (change.item.dataset.changing) messages.markChanging(change.item, state, label);
    }
  }

  /** Own change stored as event ``seq`` (from its ack or its own event). */
  function changeStored(change, seq) {
    changes.delete(change.clientId);
    messages.changeStored(change.item, { seq, deleted: change.type === "delete", body: change.body });
    pump();
  }

  const CHANGE_REFUSALS = {
    not_found: "That message has been deleted.",
    forbidden: "You may not change that message.",
  };

  /** The server refused an own change: say why, and show the row as stored. */
  function changeRefused(change, code, detail) {
    changes.delete(change.clientId);
    messages.changeEnded(change.item);
    const what = change.type === "edit" ? "Not saved" : "Not deleted";
    notice.show(`${what}: ${CHANGE_REFUSALS[code] ?? detail ?? "something went wrong."}`);
    pump();
  }

  function startEdit(item) {
    if (!item?.querySelector('.msg-tool[data-action="edit"]')) return;
    editor.open(item, messages.stored.get(item) ?? "");
  }

  /** The editor's Save; false keeps the editor open. */
  function saveEdit(item, body) {
    if (body === (messages.stored.get(item) ?? "")) return true; // unchanged: nothing to send
    if (!body.trim()) {
      notice.show("A message cannot be empty. To remove it, delete it.");
      return false;
    }
    if ([...body].length > MAX_BODY_CODE_POINTS) {
      notice.show(`A message can be at most ${MAX_BODY_CODE_POINTS} characters.`);
      return false;
    }
    if (!item.isConnected || item.dataset.deleted) return true;
    queueChange("edit", item, body);
    return true;
  }

  /** A real confirm step: the browser's own dialog, which takes the keyboard. */
  function confirmDelete(item) {
    const author = item.dataset.author;
    let what = "this message";
    if (!author) what = "this announcement";
    else if (author !== me) what = `this message by ${author}`;
    if (!window.confirm(`Delete ${what}? Everyone will see “message deleted” instead.`)) return;
    if (!item.isConnected || item.dataset.deleted) return;
    if (editor.item === item) editor.cancel({ refocus: false });
    queueChange("delete", item);
    field?.focus();
  }

  function pauseSends(ms) {
    sendsPausedUntil = Date.now() + ms;
    cancel(resumeTimer);
    resumeTimer = later(() => {
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
    cancel(gapTimer);
    gapTimer = null;
    if (fillInFlight) return;
    fillInFlight = sendHistory({ after: timeline.contiguous, limit: FILL_PAGE }, { kind: "fill" });
  }

  /** A gap that live frames have not filled within 2 s is fetched. */
  function scheduleGapCheck() {
    if (!timeline.hasGap || gapTimer || fillInFlight) return;
    gapTimer = later(() => {
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
    // Queued changes name seqs that may now belong to other messages.
    changes.clear();
    editor.cancel({ refocus: false });
    messages.clearHeld();
    timeline.reset(lastSeq);
    moreAbove = lastSeq > 0;
    reloadAfterReplay = moreAbove;
    notice.show("This room's history was restored from a backup; the messages are shown again.");
  }

  function receiveOlder(frames, hasMore) {
    const rows = messages.rowCount;
    messages.prepending(() => {
      for (const frame of frames) receiveMessage(frame, "older");
    });
    olderInFlight = false;
    moreAbove = hasMore;
    updateHistoryEdge();
    // A page of nothing but edits and deletions shows nothing: go on.
    if (messages.rowCount === rows && moreAbove) loadEarlier();
  }

  /** The top of the list: "Load earlier messages", or the room's start. */
  function updateHistoryEdge() {
    const hadFocus = document.activeElement === loadButton;
    loadButton.hidden = !moreAbove;
    loadButton.disabled = !live || olderInFlight;
    loadButton.textContent = olderInFlight ? "Loading…" : "Load earlier messages";
    const start = $("history-start");
    start.hidden = moreAbove || timeline.size === 0;
    messages.hasEarlier = moreAbove;
    messages.updateEmpty();
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
      if (reloadAfterReplay || (moreAbove && messages.rowCount === 0)) {
        // Nothing to show yet (a restored room, or a latest page of changes only).
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
      scheduleRead();
    },
    ack(frame) {
      if (!Number.isSafeInteger(frame.seq)) return;
      timeline.noteExists(frame.seq);
      const change = changes.get(frame.client_id);
      if (change) changeStored(change, frame.seq);
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
    // About the rooms the user watches (?watch=1): the sidebar's business.
    rooms(frame) {
      hooks.onWatch?.(frame);
      scheduleRead();
    },
    activity(frame) {
      hooks.onWatch?.(frame);
    },
    read(frame) {
      hooks.onWatch?.(frame);
    },
    room(frame) {
      if (frame.slug === slug) roomChanged(frame);
      hooks.onWatch?.(frame);
    },
    error(frame) {
      const change = frame.client_id ? changes.get(frame.client_id) : undefined;
      // An own change's forbidden means "not yours", not lost access.
      if (change && frame.code !== "unauthenticated") {
        changeError(frame, change);
        return;
      }
      const pending = frame.client_id ? outbox.get(frame.client_id) : undefined;
      if (frame.code === "forbidden") accessLost("forbidden");
      else if (frame.code === "unauthenticated") accessLost("signed-out");
      else if (frame.code === "rate_limited") rateLimited(frame, pending);
      else if (pending) failPending(pending, frame.detail || frame.code);
      else notice.show(frame.detail || "Something went wrong.");
    },
  };

  function changeError(frame, change) {
    if (frame.code === "rate_limited") {
      // Not stored: it goes again when the pause is over.
      change.inFlight = false;
      pauseSends(Math.max(Number(frame.retry_after_ms) || 1000, 100));
      return;
    }
    changeRefused(change, frame.code, frame.detail);
  }

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
    if (request) later(() => retryHistory(request), wait);
  }

  /** This room was renamed, or its members changed (a ``room`` frame). */
  function roomChanged(frame) {
    if (typeof frame.name === "string" && frame.name) {
      const heading = root.querySelector(".room-title h1");
      if (heading) heading.textContent = frame.name;
      document.title = `${frame.name} · Switchboard`;
    }
    members.update(frame);
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

  // Signed in, the one connection also tells of the other rooms (?watch=1).
  const watch = me ? "&watch=1" : "";
  const connection = new RoomConnection({
    url: () => {
      const scheme = location.protocol === "https:" ? "wss" : "ws";
      return `${scheme}://${location.host}/ws/rooms/${slug}/?after=${timeline.contiguous}${watch}`;
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
      cancel(gapTimer);
      gapTimer = null;
      typing.clear();
      presence.markStale();
      // An unacked send may or may not have arrived: it goes again, with the
      // same client_id, after resuming (the server acks a repeat, stores once).
      for (const pending of outbox.values()) pending.inFlight = false;
      for (const change of changes.values()) change.inFlight = false;
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
      for (const change of [...changes.values()]) changeRefused(change, null, why);
      editor.cancel({ refocus: false });
      if (composer) {
        field.disabled = true;
        composer.querySelector("button[type=submit]").disabled = true;
      }
      presence.markStale();
      status.set("closed");
      updateHistoryEdge();
    },
    isGone: roomIsGone,
    // Without WebSockets: the same frames over Server-Sent Events, the same
    // resume, and writes through the HTTP API (stream.js).
    openStream: () =>
      new StreamLink(`/sse/rooms/${slug}/?after=${timeline.contiguous}${watch}`, {
        messagesApi,
        typingApi: messagesApi.replace(/messages\/$/, "typing/"),
        readApi,
      }),
    onTransport: (transport) => status.setTransport(transport),
    signal,
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
      if (event.key === "ArrowUp" && field.value === "" && !hasModifier(event) && !event.isComposing) {
        // Up in an empty composer edits your last message (as in most chat apps).
        const item = messages.lastEditable();
        if (item) {
          event.preventDefault();
          startEdit(item);
        }
        return;
      }
      // Enter sends, Shift+Enter is a new line; never mid-composition (IME).
      if (event.key !== "Enter" || event.shiftKey || event.altKey || event.isComposing) return;
      event.preventDefault();
      composer.requestSubmit();
    });
    field.addEventListener("input", () => {
      resizeComposer();
      if (field.value.trim()) sendTyping();
    });
    window.addEventListener(
      "beforeunload",
      (event) => {
        if (unsentCount() || changes.size) event.preventDefault();
      },
      { signal },
    );
  }

  function hasModifier(event) {
    return event.shiftKey || event.altKey || event.ctrlKey || event.metaKey;
  }

  $("messages").addEventListener("click", (event) => {
    const button = event.target.closest("button.msg-tool[data-action]");
    const item = button?.closest("li[data-seq]");
    if (!item) return;
    if (button.dataset.action === "edit") startEdit(item);
    else if (button.dataset.action === "delete") confirmDelete(item);
  });

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
  document.addEventListener(
    "keydown",
    (event) => {
      if (event.key === "Escape" && root.classList.contains("people-open")) {
        showPeople(false);
        peopleToggle.focus();
      }
    },
    { signal },
  );
  $("scroller").addEventListener("scroll", scheduleRead, { signal, passive: true });
  document.addEventListener("visibilitychange", scheduleRead, { signal });

  /** Show the message the page was opened at, marked, with the keyboard on it. */
  function showTarget(seq) {
    const item = messages.find(seq);
    if (!item) return false;
    item.classList.add("msg-target");
    item.tabIndex = -1;
    item.scrollIntoView({ block: "center" });
    item.focus({ preventScroll: true });
    return true;
  }

  for (const frame of initial.messages) receiveMessage(frame, "initial");
  messages.updateEmpty();
  updateHistoryEdge();
  if (jumpedTo === null || !showTarget(jumpedTo)) messages.scrollToBottom();
  status.set("connecting");
  connection.start();

  return {
    slug,
    root,
    /** Own messages and changes not yet stored. */
    get unsent() {
      return unsentCount() + changes.size;
    },
    /** Tear the room down: no socket, no timer, no listener outlives it. */
    unmount() {
      if (unmounted) return;
      unmounted = true;
      lifetime.abort();
      for (const id of timers) clearTimeout(id);
      timers.clear();
      connection.close();
      editor.cancel({ refocus: false });
      typing.dispose();
      announcer.dispose();
      notice.dispose();
      status.dispose();
    },
  };
}
