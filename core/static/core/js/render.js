// DOM for messages and people. User text goes in through textContent only:
// a body such as <img onerror=...> shows as those characters and runs nothing.

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
const dayTimeFormat = new Intl.DateTimeFormat(undefined, {
  month: "short",
  day: "numeric",
  hour: "numeric",
  minute: "2-digit",
});
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "medium" });

// Consecutive messages of one author closer than this share one header.
const GROUP_GAP_MS = 5 * 60 * 1000;

/** An element with a class and text (text only through textContent). */
export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// --- mentions -------------------------------------------------------------------

// What a mention is, is defined once (core/mentions.py; its browser copy,
// mentions.js, is handed in by configureMentions). Here only where they are:
// each "@" followed by a run of characters that may be in a name (a
// superset of the definition's), asked about with its preceding character.
const NAME_CHAR = /[\p{L}\p{M}\p{N}\p{Pc}.@+-]/u;
let mentionedNames = null;
let meLower = null;

/** ``names(text)``: the lowercased names ``text`` mentions (mentions.js). */
export function configureMentions(names, me) {
  mentionedNames = names;
  meLower = me ? me.toLowerCase() : null;
}

/** The mentions in ``text``: [start, end, lowercased name], in order. */
export function mentionSpans(text) {
  const spans = [];
  if (!mentionedNames) return spans;
  let at = text.indexOf("@");
  while (at !== -1) {
    let end = at + 1;
    while (end < text.length) {
      const char = String.fromCodePoint(text.codePointAt(end));
      if (!NAME_CHAR.test(char)) break;
      end += char.length;
    }
    let start = at > 0 ? at - 1 : at;
    if (start > 0 && /[\uDC00-\uDFFF]/.test(text[start])) start -= 1; // a whole character
    const names = [...mentionedNames(text.slice(start, end))].map(String);
    const here = text.slice(at + 1, end).toLowerCase();
    // The longest name this "@" starts (the run holds one mention at most).
    const name = names.filter((n) => n && here.startsWith(n)).sort((a, b) => b.length - a.length)[0];
    if (name) spans.push([at, at + 1 + name.length, name]);
    at = text.indexOf("@", end);
  }
  return spans;
}

/** Put ``text`` in ``node``: plain text, with mentions in <mark class="mention">. */
export function fillText(node, text) {
  const parts = [];
  let done = 0;
  for (const [start, end, name] of mentionSpans(text)) {
    if (start > done) parts.push(document.createTextNode(text.slice(done, start)));
    const mark = el("mark", name === meLower ? "mention mention-me" : "mention", text.slice(start, end));
    parts.push(mark);
    done = end;
  }
  if (done < text.length || parts.length === 0) parts.push(document.createTextNode(text.slice(done)));
  node.replaceChildren(...parts);
}

/** True if ``text`` mentions the signed-in user. */
export function mentionsMe(text) {
  return meLower !== null && mentionSpans(text).some(([, , name]) => name === meLower);
}

/** A stable hue for a name, so each person keeps one avatar colour. */
export function hueFor(name) {
  let hash = 2166136261; // FNV-1a spreads similar names apart
  for (const char of name) hash = Math.imul(hash ^ char.codePointAt(0), 16777619) >>> 0;
  return hash % 360;
}

export function avatar(name, extraClass = "") {
  const node = el("span", `avatar ${extraClass}`.trim());
  node.setAttribute("aria-hidden", "true");
  if (name) {
    node.textContent = [...name][0].toUpperCase();
    node.style.setProperty("--hue", String(hueFor(name)));
  } else {
    node.classList.add("avatar-system");
    node.textContent = "★";
  }
  return node;
}

function sameDay(a, b) {
  return a.toDateString() === b.toDateString();
}

/** Fill a <time> element with a short local time and a full title. */
export function setTime(node, date) {
  node.dateTime = date.toISOString();
  node.textContent = sameDay(date, new Date()) ? timeFormat.format(date) : dayTimeFormat.format(date);
  node.title = fullFormat.format(date);
}

/**
 * A message list item.
 * @param {{seq?: number, author: string|null, body: string, sentAt: Date}} message
 * @param {string|null} me the signed-in username
 */
export function messageItem({ seq, author, body, sentAt }, me) {
  const item = el("li", "msg");
  if (seq !== undefined) item.dataset.seq = String(seq);
  item.dataset.author = author ?? "";
  item.dataset.sentAt = String(sentAt.getTime());
  if (author === null) item.classList.add("msg-system");
  if (author !== null && author === me) item.classList.add("msg-own");

  const main = el("div", "msg-main");
  const meta = el("div", "msg-meta");
  meta.append(el("span", "msg-author", author ?? "Announcement"));
  const time = el("time", "msg-time");
  setTime(time, sentAt);
  meta.append(time, el("span", "msg-status"));
  const bodyNode = el("p", "msg-body");
  fillText(bodyNode, body);
  main.append(meta, bodyNode);
  item.append(avatar(author), main);
  return item;
}

/** Set the text a row shows (its current body, or a draft being saved). */
export function setBody(item, text) {
  fillText(item.querySelector(".msg-body"), text);
}

/** The "edited" marker after the body; its title tells when. */
export function setEdited(item, editedAt) {
  let marker = item.querySelector(".msg-edited");
  if (!marker) {
    marker = el("span", "msg-edited", "edited");
    item.querySelector(".msg-body").after(marker);
  }
  marker.title = `Edited ${fullFormat.format(editedAt)}`;
}

/**
 * A deleted message: "message deleted" in place of its text, no marker, no
 * controls. The row stays, so the conversation around it keeps its shape.
 */
export function setTombstone(item) {
  item.dataset.deleted = "true";
  item.classList.add("msg-deleted");
  item.querySelector(".msg-body").textContent = "message deleted";
  item.querySelector(".msg-edited")?.remove();
  item.querySelector(".msg-tools")?.remove();
}

function toolButton(action, text, label) {
  const button = el("button", "msg-tool", text);
  button.type = "button";
  button.dataset.action = action;
  button.setAttribute("aria-label", label);
  return button;
}

/** Edit and Delete buttons for a row; room.js listens on #messages for them. */
export function setTools(item, { canEdit, canDelete }) {
  item.querySelector(".msg-tools")?.remove();
  if (!canEdit && !canDelete) return;
  const tools = el("span", "msg-tools");
  const whose = item.classList.contains("msg-own") ? "your message" : "message";
  if (canEdit) tools.append(toolButton("edit", "Edit", `Edit ${whose}`));
  if (canDelete) tools.append(toolButton("delete", "Delete", `Delete ${whose}`));
  item.append(tools);
}

/** Show a pending message's state: "Sending…", "Queued", "Not sent: …". */
export function setStatus(item, text) {
  item.querySelector(".msg-status").textContent = text;
}

/** Mark ``item`` as continuing its predecessor's group (same author, soon). */
export function regroup(item) {
  if (!item) return;
  const previous = item.previousElementSibling;
  const continued =
    previous !== null &&
    item.dataset.author !== "" &&
    previous.dataset.author === item.dataset.author &&
    !previous.classList.contains("msg-failed") &&
    Math.abs(Number(item.dataset.sentAt) - Number(previous.dataset.sentAt)) < GROUP_GAP_MS;
  item.classList.toggle("msg-continued", continued);
}

/** One person in the presence list. */
export function personItem(name, me) {
  const item = el("li", "person");
  item.append(avatar(name, "avatar-sm"), el("span", "person-name", name));
  if (name === me) item.append(el("span", "person-you", "you"));
  return item;
}
