// #messages and its scroller: held messages sorted by seq, pending own
// messages after them, and the reader's scroll position kept sensible.

import { messageItem, regroup, setStatus, setTime } from "switchboard/render.js";

// Within this distance of the bottom, new messages keep the view pinned.
const NEAR_BOTTOM_PX = 120;

/** A frame's sent_at as a Date (now, if it cannot be read). */
export function parseSentAt(text) {
  // Microseconds are beyond what every Date parser accepts; keep milliseconds.
  const date = new Date(String(text).replace(/(\.\d{3})\d+/, "$1"));
  return Number.isNaN(date.getTime()) ? new Date() : date;
}

export class MessageList {
  constructor({ list, scroller, jump, empty }, me) {
    Object.assign(this, { list, scroller, jump, empty, me });
    jump.addEventListener("click", () => this.scrollToBottom());
    scroller.addEventListener("scroll", () => {
      if (this.nearBottom()) jump.hidden = true;
    });
  }

  /** Show a held message frame in seq order. */
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
    this.insertSorted(item, frame.seq);
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
    this.empty.hidden = this.list.childElementCount > 0;
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
