// #messages and its scroller: held messages sorted by seq, pending own
// messages after them, and the reader's scroll position kept sensible.
// Edits and deletions (change events) are applied to the rows they target;
// they never get rows of their own.

import {
  messageItem,
  regroup,
  setBody,
  setEdited,
  setStatus,
  setTime,
  setTombstone,
  setTools,
} from "switchboard/render.js";

// Within this distance of the bottom, new messages keep the view pinned.
const NEAR_BOTTOM_PX = 120;

/** A frame's sent_at as a Date (now, if it cannot be read). */
export function parseSentAt(text) {
  // Microseconds are beyond what every Date parser accepts; keep milliseconds.
  const date = new Date(String(text).replace(/(\.\d{3})\d+/, "$1"));
  return Number.isNaN(date.getTime()) ? new Date() : date;
}

export class MessageList {
  /**
   * @param {{canPost: boolean, canModerate: boolean}} rights what the viewer
   *   may do: edit (own) and delete (own; anyone's when moderating)
   */
  constructor(
    { list, scroller, jump, empty },
    me,
    rights = { canPost: false, canModerate: false },
    { signal } = {},
  ) {
    Object.assign(this, { list, scroller, jump, empty, me, rights });
    // The body the server holds, per row: what a cancelled or refused
    // change shows again (the row may show a draft meanwhile).
    this.stored = new WeakMap();
    // The latest change event per target seq not held when it came: a row
    // loaded later applies it unless its own state is newer already.
    this.unapplied = new Map();
    // True while older messages exist above: an empty list is not "no messages".
    this.hasEarlier = false;
    jump.addEventListener("click", () => this.scrollToBottom(), { signal });
    scroller.addEventListener(
      "scroll",
      () => {
        if (this.nearBottom()) jump.hidden = true;
      },
      { signal },
    );
  }

  /** Show a held message frame in seq order, as edited or deleted as it comes. */
  addHeld(frame) {
    const item = messageItem(
      {
        seq: frame.seq,
        author: frame.author ?? null,
        body: String(frame.body),
        sentAt: parseSentAt(frame.sent_at),
      },
      this.me,
    );
    this.stored.set(item, String(frame.body));
    if (frame.deleted === true) setTombstone(item);
    else if (typeof frame.edited_at === "string") this.markEdited(item, frame.edited_at);
    this.insertSorted(item, frame.seq);
    this.adopt(item);
  }

  /** A row that has its seq: its controls, and any change that came first. */
  adopt(item) {
    const seq = Number(item.dataset.seq);
    if (!this.stored.has(item)) this.stored.set(item, item.querySelector(".msg-body").textContent);
    this.refreshTools(item);
    const change = this.unapplied.get(seq);
    if (change) {
      this.unapplied.delete(seq);
      this.applyTo(item, change, { loaded: true });
    }
  }

  refreshTools(item) {
    if (item.dataset.deleted || item.dataset.changing) {
      setTools(item, { canEdit: false, canDelete: false });
      return;
    }
    const author = item.dataset.author || null;
    const own = author !== null && author === this.me;
    const { canPost, canModerate } = this.rights;
    setTools(item, { canEdit: canPost && own, canDelete: canPost && (own || canModerate) });
  }

  find(seq) {
    return this.list.querySelector(`li[data-seq="${Number(seq)}"]`);
  }

  /**
   * Apply a change event (kind "edit" or "delete") to the row of its target.
   * Kinds this page does not know change nothing. A target not held is
   * remembered: a history answer read before the change was stored may
   * bring that message later, in its older state.
   */
  applyChange(frame) {
    if (frame.kind !== "edit" && frame.kind !== "delete") return;
    const target = Number(frame.target);
    if (!Number.isSafeInteger(target)) return;
    const item = this.find(target);
    if (item) {
      this.applyTo(item, frame, { loaded: false });
      return;
    }
    const known = this.unapplied.get(target);
    if (!known || (!isRemoval(known) && (isRemoval(frame) || frame.seq > known.seq))) {
      this.unapplied.set(target, frame);
    }
  }

  /**
   * ``loaded``: the row came from the server after ``frame`` did, so its
   * state may already include it or a later edit; edits then go by time.
   * Otherwise edits go by seq: a lower one arriving late changes nothing.
   */
  applyTo(item, frame, { loaded }) {
    if (item.dataset.deleted) return; // a tombstone stays one
    if (isRemoval(frame)) {
      this.tombstone(item);
      return;
    }
    const editedAt = String(frame.sent_at);
    const changeSeq = Number(item.dataset.changeSeq || 0);
    const shownAt = item.dataset.editedAt;
    if (loaded || !changeSeq) {
      if (shownAt && editedAt < shownAt) return; // same format: text order is time order
    } else if (frame.seq <= changeSeq) {
      return;
    }
    if (!loaded) item.dataset.changeSeq = String(frame.seq);
    const body = String(frame.body);
    this.stored.set(item, body);
    // A draft being saved stays on show until its own answer comes.
    if (!item.dataset.changing) setBody(item, body);
    this.markEdited(item, editedAt);
  }

  markEdited(item, editedAt) {
    item.dataset.editedAt = editedAt;
    setEdited(item, parseSentAt(editedAt));
  }

  tombstone(item) {
    this.stored.set(item, "");
    delete item.dataset.changing;
    item.classList.remove("msg-changing");
    setStatus(item, "");
    setTombstone(item);
  }

  /** The newest own message that can still be edited (for the Up arrow). */
  lastEditable() {
    const items = this.list.querySelectorAll("li[data-seq]");
    for (let i = items.length - 1; i >= 0; i -= 1) {
      const item = items[i];
      if (item.querySelector('.msg-tool[data-action="edit"]')) return item;
    }
    return null;
  }

  /**
   * A change of the viewer's own is on its way: ``draft`` (an edit's new
   * text) shows at once; ``state`` says how far it got.
   */
  markChanging(item, state, text, draft = null) {
    item.dataset.changing = state;
    item.classList.add("msg-changing");
    if (draft !== null) setBody(item, draft);
    setStatus(item, text);
    this.refreshTools(item);
  }

  /**
   * The change is stored as event ``seq``: the row shows it (unless a later
   * edit came first); the event itself brings the "edited" marker.
   */
  changeStored(item, { seq, deleted, body }) {
    if (deleted) {
      this.tombstone(item);
      return;
    }
    if (seq > Number(item.dataset.changeSeq || 0)) this.stored.set(item, body);
    this.changeEnded(item);
  }

  /** The change is over (stored or refused): show what the server holds. */
  changeEnded(item) {
    if (item.dataset.deleted) return;
    delete item.dataset.changing;
    item.classList.remove("msg-changing");
    setStatus(item, "");
    setBody(item, this.stored.get(item) ?? "");
    this.refreshTools(item);
  }

  /** Show an own message that has no seq yet, at the very end. */
  addPending(body, clientId) {
    const item = messageItem({ author: this.me, body, sentAt: new Date() }, this.me);
    item.dataset.clientId = clientId;
    item.classList.add("msg-pending");
    this.list.append(item);
    regroup(item);
    this.updateEmpty();
    return item;
  }

  /** ``state``: "sending", "queued" or "failed"; ``text`` says it to people. */
  markPending(item, state, text) {
    item.dataset.pending = state;
    item.classList.toggle("msg-failed", state === "failed");
    setStatus(item, text);
    regroup(item.nextElementSibling);
  }

  /** A pending item got its seq: move it among the held ones. */
  settle(item, seq, sentAt) {
    this.remove(item);
    delete item.dataset.pending;
    delete item.dataset.clientId;
    item.classList.remove("msg-pending", "msg-failed");
    item.querySelector(".msg-actions")?.remove();
    setStatus(item, "");
    if (sentAt) this.setSentAt(item, sentAt);
    item.dataset.seq = String(seq);
    this.insertSorted(item, seq);
    this.adopt(item);
  }

  /** Take the server's sent_at for a message shown with the local time. */
  refreshTime(frame) {
    const item = this.list.querySelector(`li[data-seq="${Number(frame.seq)}"]`);
    if (item) this.setSentAt(item, parseSentAt(frame.sent_at));
  }

  setSentAt(item, sentAt) {
    item.dataset.sentAt = String(sentAt.getTime());
    setTime(item.querySelector("time"), sentAt);
  }

  insertSorted(item, seq) {
    let next = null;
    let node = this.list.lastElementChild;
    while (node && (node.dataset.seq === undefined || Number(node.dataset.seq) > seq)) {
      next = node;
      node = node.previousElementSibling;
    }
    this.list.insertBefore(item, next);
    regroup(item);
    regroup(item.nextElementSibling);
  }

  /** Take away every held message; own pending ones stay. */
  clearHeld() {
    for (const item of this.list.querySelectorAll("li[data-seq]")) item.remove();
    this.unapplied.clear();
    regroup(this.list.firstElementChild);
    this.updateEmpty();
  }

  remove(item) {
    const next = item.nextElementSibling;
    item.remove();
    regroup(next);
    this.updateEmpty();
  }

  updateEmpty() {
    this.empty.hidden = this.list.childElementCount > 0 || this.hasEarlier;
  }

  get rowCount() {
    return this.list.childElementCount;
  }

  nearBottom() {
    const { scrollHeight, scrollTop, clientHeight } = this.scroller;
    return scrollHeight - scrollTop - clientHeight < NEAR_BOTTOM_PX;
  }

  scrollToBottom() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
    this.jump.hidden = true;
  }

  /** Run ``change`` (which adds at the end); follow it if the reader was there. */
  appending(change) {
    const stick = this.nearBottom();
    change();
    this.updateEmpty();
    if (stick) this.scrollToBottom();
    else if (this.list.childElementCount) this.jump.hidden = false;
  }

  /** Run ``change`` (which adds above); what the reader sees stays put. */
  prepending(change) {
    const { scrollHeight, scrollTop } = this.scroller;
    change();
    this.updateEmpty();
    this.scroller.scrollTop = scrollTop + (this.scroller.scrollHeight - scrollHeight);
  }
}

/** A delete event, or an edit of a message deleted since (it comes blank). */
function isRemoval(frame) {
  return frame.kind === "delete" || frame.deleted === true;
}
