// A room's members panel (private rooms) and its rename form (the owner):
// the list with the owner marked; the owner adds members, the username
// checked as it is typed (GET /api/users/?prefix=), and removes them;
// everyone else may leave. Every change reaches every open page through the
// room's "room" frame (``update``); a removed person's socket closes (4403)
// as before. Text goes in through textContent only.

import { api, problem } from "switchboard/http.js";
import { avatar, el } from "switchboard/render.js";

const CHECK_DELAY_MS = 250;
const USERNAME_MAX = 150;

function later(result) {
  const seconds = result.retryAfter ?? Math.ceil((Number(result.data?.retry_after_ms) || 1000) / 1000);
  return `try again in ${seconds} s`;
}

/**
 * Wire the panel and the rename form inside ``root`` (#room); listeners end
 * with ``signal``. Returns ``{update(frame)}`` for the room's "room" frames.
 */
export function mountMembers(root, { slug, me, signal, notice, homeUrl }) {
  const roomApi = `/api/rooms/${encodeURIComponent(slug)}/`;
  const panel = root.querySelector("#members");
  const list = root.querySelector("#members-list");
  const canManage = panel?.dataset.canManage === "1";
  const owner = list?.querySelector("li[data-owner]")?.dataset.username ?? null;

  function memberItem(name) {
    const item = el("li", "member");
    item.dataset.username = name;
    item.append(avatar(name, "avatar-sm"), el("span", "member-name", name));
    if (name === owner) {
      item.dataset.owner = "1";
      item.append(el("span", "member-owner", "owner"));
    } else if (canManage) {
      const remove = el("button", "link-button member-remove", "Remove");
      remove.type = "button";
      remove.dataset.username = name;
      remove.setAttribute("aria-label", `Remove ${name}`);
      item.append(remove);
    }
    return item;
  }

  function names() {
    return [...list.children].map((item) => item.dataset.username);
  }

  function render(members) {
    if (!list) return;
    const focused = document.activeElement?.closest?.("#members-list li")?.dataset.username;
    const sorted = [...new Set(members.map(String))].sort();
    list.replaceChildren(...sorted.map(memberItem));
    root.querySelector("#members-count").textContent = `· ${sorted.length}`;
    // Focus stays with the same person's button, or goes to the panel's heading.
    if (focused) {
      const button = list.querySelector(`button[data-username="${CSS.escape(focused)}"]`);
      if (button) button.focus();
    }
  }

  // --- remove and leave --------------------------------------------------------

  list?.addEventListener(
    "click",
    async (event) => {
      const button = event.target.closest("button.member-remove");
      if (!button) return;
      const name = button.dataset.username;
      if (!window.confirm(`Remove ${name} from this room? They lose access at once.`)) return;
      button.disabled = true;
      const result = await api("DELETE", `${roomApi}members/${encodeURIComponent(name)}/`).catch(() => null);
      if (result?.ok || result?.status === 404) {
        render(names().filter((n) => n !== name));
        root.querySelector("#member-add-name")?.focus();
        notice.show(`${name} was removed from the room.`);
        return;
      }
      button.disabled = false;
      notice.show(result ? `Not removed: ${problem(result)}` : "Not removed: you are offline.");
    },
    { signal },
  );

  root.querySelector("#leave-room")?.addEventListener(
    "click",
    async (event) => {
      if (!window.confirm("Leave this room? You can come back only if its owner adds you again.")) return;
      const button = event.currentTarget;
      button.disabled = true;
      const result = await api("DELETE", `${roomApi}members/${encodeURIComponent(me)}/`).catch(() => null);
      if (result?.ok) {
        window.location.assign(homeUrl);
        return;
      }
      button.disabled = false;
      notice.show(result ? `You are still a member: ${problem(result)}` : "You are offline; try again.");
    },
    { signal },
  );

  // --- add, the username checked as it is typed -----------------------------------

  const form = root.querySelector("#member-add");
  if (form) {
    const field = form.elements.username;
    const status = form.querySelector("#member-add-status");
    const suggestions = form.querySelector("#member-suggestions");
    let timer = null;
    let lookup = null;
    let found = null; // the exact username, as the server spells it

    const say = (text, state = "") => {
      status.textContent = text;
      status.dataset.state = state;
      field.setAttribute("aria-invalid", state === "invalid" ? "true" : "false");
    };

    async function check() {
      const prefix = field.value.trim();
      lookup?.abort();
      found = null;
      if (!prefix) {
        say("");
        suggestions.replaceChildren();
        return null;
      }
      if (prefix.length > USERNAME_MAX) {
        say("No such user.", "invalid");
        return null;
      }
      const controller = new AbortController();
      lookup = controller;
      say("Checking…", "checking");
      let result;
      try {
        result = await api("GET", `/api/users/?${new URLSearchParams({ prefix })}`, undefined, {
          signal: controller.signal,
        });
      } catch (error) {
        if (error.name !== "AbortError" && lookup === controller) say("Cannot check now: you are offline.", "invalid");
        return null;
      }
      if (lookup !== controller) return null;
      lookup = null;
      if (!result.ok || !Array.isArray(result.data)) {
        say(result.status === 429 ? `Too many look-ups; ${later(result)}.` : problem(result), "invalid");
        return null;
      }
      const usernames = result.data.map((user) => String(user.username));
      suggestions.replaceChildren(
        ...usernames.map((name) => {
          const option = document.createElement("option");
          option.value = name;
          return option;
        }),
      );
      found = usernames.find((name) => name.toLowerCase() === prefix.toLowerCase()) ?? null;
      if (found === null) say("No such user.", "invalid");
      else if (names().includes(found)) say(`${found} is already a member.`, "member");
      else say(`${found} can be added.`, "valid");
      return found;
    }

    field.addEventListener(
      "input",
      () => {
        clearTimeout(timer);
        found = null;
        timer = setTimeout(check, CHECK_DELAY_MS);
      },
      { signal },
    );
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      lookup?.abort();
    });

    form.addEventListener(
      "submit",
      async (event) => {
        event.preventDefault();
        clearTimeout(timer);
        const name = found ?? (await check());
        if (name === null) {
          field.focus();
          return;
        }
        if (names().includes(name)) return;
        const submit = form.querySelector("button[type=submit]");
        submit.disabled = true;
        const result = await api("POST", `${roomApi}members/`, { username: name }).catch(() => null);
        submit.disabled = false;
        if (result?.ok) {
          render([...names(), name]);
          field.value = "";
          found = null;
          suggestions.replaceChildren();
          say(`${name} was added.`, "valid");
          field.focus();
          return;
        }
        if (!result) say("Not added: you are offline.", "invalid");
        else if (result.status === 429) say(`Too many members added; ${later(result)}.`, "invalid");
        else say(`Not added: ${problem(result)}`, "invalid");
      },
      { signal },
    );
  }

  // --- rename (the owner) -----------------------------------------------------------

  const renameButton = root.querySelector("#rename-room");
  const renameForm = root.querySelector("#rename-form");
  if (renameButton && renameForm) {
    const field = renameForm.elements.name;
    const status = renameForm.querySelector(".rename-status");
    const show = (open) => {
      renameForm.hidden = !open;
      renameButton.setAttribute("aria-expanded", String(open));
      status.textContent = "";
      if (open) {
        field.value = root.querySelector(".room-title h1").textContent;
        field.focus();
        field.select();
      } else {
        renameButton.focus();
      }
    };
    renameButton.addEventListener("click", () => show(renameForm.hidden), { signal });
    renameForm.querySelector(".rename-cancel").addEventListener("click", () => show(false), { signal });
    renameForm.addEventListener(
      "keydown",
      (event) => {
        if (event.key === "Escape") {
          event.stopPropagation();
          show(false);
        }
      },
      { signal },
    );
    renameForm.addEventListener(
      "submit",
      async (event) => {
        event.preventDefault();
        const name = field.value.trim();
        if (!name) {
          status.textContent = "A room needs a name.";
          return;
        }
        const result = await api("PATCH", roomApi, { name }).catch(() => null);
        if (result?.ok) {
          const heading = root.querySelector(".room-title h1");
          heading.textContent = result.data?.name ?? name;
          document.title = `${heading.textContent} · Switchboard`;
          show(false);
          notice.show("The room was renamed.");
          return;
        }
        status.textContent = result ? `Not renamed: ${problem(result)}` : "Not renamed: you are offline.";
      },
      { signal },
    );
  }

  return {
    /** A "room" frame for this room: its members as they now are. */
    update(frame) {
      if (Array.isArray(frame.members) && list) render(frame.members);
    },
  };
}
