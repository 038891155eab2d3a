// The search box of the top bar: GET /api/search/ (docs/protocol.md §15),
// each result a link to /rooms/<slug>/?at=<seq>, which opens the room at
// that message. User text goes in through textContent only; the snippet's
// matches are <mark> elements made here, never markup from the server.

const form = document.getElementById("search");
const panel = document.getElementById("search-results");

const when = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** One result: where, who and when, then the snippet with its matches marked. */
function resultItem(hit) {
  const link = el("a", "search-hit");
  link.href = `/rooms/${encodeURIComponent(hit.room)}/?at=${Number(hit.seq)}`;
  const meta = el("span", "search-meta");
  meta.append(el("span", "search-room", `#${hit.room_name || hit.room}`));
  meta.append(el("span", "search-author", hit.author ?? "Announcement"));
  const sent = new Date(String(hit.sent_at).replace(/(\.\d{3})\d+/, "$1"));
  const time = el("time", "search-time", Number.isNaN(sent.getTime()) ? "" : when.format(sent));
  time.dateTime = String(hit.sent_at);
  meta.append(time);
  const snippet = el("span", "search-snippet");
  for (const segment of Array.isArray(hit.snippet) ? hit.snippet : []) {
    const text = String(segment.text);
    snippet.append(segment.match === true ? el("mark", "", text) : document.createTextNode(text));
  }
  link.append(meta, snippet);
  const item = el("li");
  item.append(link);
  return item;
}

if (form && panel) {
  const field = form.elements.q;
  const status = panel.querySelector(".search-status");
  const list = panel.querySelector(".search-list");
  const more = panel.querySelector(".search-more");
  let query = null; // what is on show: {q, page}
  let inFlight = null;

  function show(open) {
    panel.hidden = !open;
  }

  function refusal(response, body) {
    if (response.status === 429) {
      const seconds = Math.ceil((Number(body?.retry_after_ms) || 1000) / 1000);
      return `Too many searches; try again in ${seconds} s.`;
    }
    const first = body?.errors && Object.values(body.errors)[0];
    return (Array.isArray(first) && first[0]) || body?.detail || "Search failed.";
  }

  async function search(q, page) {
    inFlight?.abort();
    const controller = new AbortController();
    inFlight = controller;
    more.disabled = true;
    if (page === 1) {
      list.replaceChildren();
      status.textContent = "Searching…";
    }
    show(true);
    let response;
    let body = null;
    try {
      const params = new URLSearchParams({ q, page: String(page) });
      response = await fetch(`${form.dataset.api}?${params}`, {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "application/json" },
        signal: controller.signal,
      });
      body = await response.json().catch(() => null);
    } catch (error) {
      if (error.name === "AbortError") return;
      status.textContent = "Search is unavailable; check your connection.";
      more.hidden = true;
      return;
    } finally {
      if (inFlight === controller) inFlight = null;
      more.disabled = false;
    }
    if (!response.ok || !body || !Array.isArray(body.results)) {
      status.textContent = refusal(response, body);
      more.hidden = true;
      return;
    }
    query = { q, page };
    for (const hit of body.results) list.append(resultItem(hit));
    const count = list.childElementCount;
    status.textContent =
      count === 0
        ? `No messages match “${q}”.`
        : `${count}${body.has_more ? "+" : ""} message${count === 1 ? "" : "s"} match “${q}”.`;
    more.hidden = !body.has_more;
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const q = field.value.trim();
    if (q) search(q, 1);
  });
  more.addEventListener("click", () => {
    if (query) search(query.q, query.page + 1);
  });
  // Escape closes the results and gives the keyboard back to the box.
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || panel.hidden) return;
    if (!panel.contains(document.activeElement) && document.activeElement !== field) return;
    show(false);
    field.focus();
  });
  document.addEventListener("click", (event) => {
    if (!panel.hidden && !panel.contains(event.target) && !form.contains(event.target)) show(false);
  });
}
