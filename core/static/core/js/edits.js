// Editing a message in place: a textarea where the row's text was, with
// the composer's keys (Enter saves, Shift+Enter is a new line) and Escape
// to cancel. DOM only: what a save sends is room.js's business.

const EDITOR_MAX_HEIGHT_PX = 240;

let editorCount = 0;

export class InlineEditor {
  /**
   * @param {object} options
   * @param {(item: HTMLElement, body: string) => boolean} options.onSave
   *   the new text; true closes the editor, false keeps it open
   * @param {HTMLElement|null} options.fallbackFocus where focus goes when the
   *   control that opened the editor is gone (the composer)
   */
  constructor({ onSave, fallbackFocus }) {
    Object.assign(this, { onSave, fallbackFocus });
    this.item = null;
    this.form = null;
    this.returnFocus = null;
  }

  get isOpen() {
    return this.item !== null;
  }

  /** Edit ``item``, starting from ``text``; any other edit is cancelled. */
  open(item, text) {
    this.cancel({ refocus: false });
    this.returnFocus = document.activeElement;
    this.item = item;
    editorCount += 1;
    const id = `edit-body-${editorCount}`;

    const form = document.createElement("form");
    form.className = "msg-editor";
    form.autocomplete = "off";
    const label = document.createElement("label");
    label.className = "visually-hidden";
    label.htmlFor = id;
    label.textContent = "Edit message";
    const field = document.createElement("textarea");
    field.id = id;
    field.name = "body";
    field.rows = 1;
    field.maxLength = 4000;
    field.value = text;
    const hint = document.createElement("span");
    hint.className = "msg-editor-hint";
    hint.textContent = "Enter to save · Escape to cancel";
    const save = button("Save", "btn btn-primary btn-sm");
    save.type = "submit";
    const cancel = button("Cancel", "btn btn-ghost btn-sm");
    cancel.addEventListener("click", () => this.cancel());
    const actions = document.createElement("div");
    actions.className = "msg-editor-actions";
    actions.append(hint, cancel, save);
    form.append(label, field, actions);

    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (this.onSave(item, field.value)) this.close();
    });
    field.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && !event.isComposing) {
        event.preventDefault();
        event.stopPropagation(); // the page's own Escape (the people panel) waits
        this.cancel();
        return;
      }
      // Enter saves, Shift+Enter is a new line; never mid-composition (IME).
      if (event.key !== "Enter" || event.shiftKey || event.altKey || event.isComposing) return;
      event.preventDefault();
      form.requestSubmit();
    });
    field.addEventListener("input", () => fit(field));

    item.classList.add("msg-editing");
    item.querySelector(".msg-body").after(form);
    this.form = form;
    fit(field);
    field.focus();
    field.setSelectionRange(field.value.length, field.value.length);
    form.scrollIntoView({ block: "nearest" });
  }

  /** Close without saving: the row shows what it showed before. */
  cancel({ refocus = true } = {}) {
    if (this.isOpen) this.close({ refocus });
  }

  close({ refocus = true } = {}) {
    if (!this.isOpen) return;
    const { item, form, returnFocus } = this;
    this.item = null;
    this.form = null;
    this.returnFocus = null;
    const hadFocus = form.contains(document.activeElement);
    form.remove();
    item.classList.remove("msg-editing");
    if (!refocus || !hadFocus) return;
    // Back where the edit started (its Edit button, or the composer).
    const target = returnFocus?.isConnected && !returnFocus.disabled ? returnFocus : this.fallbackFocus;
    target?.focus();
  }
}

function button(text, className) {
  const node = document.createElement("button");
  node.type = "button";
  node.className = className;
  node.textContent = text;
  return node;
}

function fit(field) {
  field.style.height = "auto";
  field.style.height = `${Math.min(field.scrollHeight, EDITOR_MAX_HEIGHT_PX)}px`;
}
