// The room over Server-Sent Events, for networks that block WebSockets
// (docs/protocol.md, section 17). A StreamLink looks like the WebSocket that
// RoomConnection drives: "open", "message" and "close" events, readyState,
// send() and close(). Frames are read from /sse/rooms/<slug>/; what a socket
// would send goes to the HTTP API instead, and its answer comes back as the
// frame the socket would have had (ack, error, history), so the page's logic
// is the same on both. Sends keep their client_id: a retry is stored once.

import { request } from "switchboard/http.js";

export const CONNECTING = 0;
export const OPEN = 1;
export const CLOSED = 3;

/** The error frame a socket would have sent for an HTTP refusal. */
async function errorFrame(response, clientId) {
  let detail = "";
  try {
    detail = (await response.json()).detail || "";
  } catch {
    // no JSON body: the status says enough
  }
  const frame = { type: "error", client_id: clientId ?? null, detail };
  if (response.status === 429) {
    const seconds = Number(response.headers.get("Retry-After")) || 1;
    return { ...frame, code: "rate_limited", retry_after_ms: seconds * 1000 };
  }
  if (response.status === 401) return { ...frame, code: "unauthenticated" };
  if (response.status === 403 || response.status === 404) {
    return { ...frame, code: clientId ? "forbidden" : "not_found" };
  }
  return { ...frame, code: "bad_frame" };
}

export class StreamLink extends EventTarget {
  /**
   * @param {string} url the stream (with ?after=<seq> to resume)
   * @param {{messagesApi: string, typingApi: string, readApi: string}} api
   *   the HTTP routes
   */
  constructor(url, { messagesApi, typingApi, readApi }) {
    super();
    Object.assign(this, { messagesApi, typingApi, readApi });
    this.readyState = CONNECTING;
    this.source = new EventSource(url, { withCredentials: true });
    this.source.addEventListener("open", () => {
      this.readyState = OPEN;
      this.dispatchEvent(new Event("open"));
    });
    this.source.addEventListener("message", (event) => this.deliver(event.data));
    // The server ends the stream with a close code, as a socket would.
    this.source.addEventListener("close", (event) => {
      let code = 1006;
      try {
        code = Number(JSON.parse(event.data).code) || 1006;
      } catch {
        // keep 1006
      }
      this.finish(code);
    });
    // RoomConnection reconnects itself (backoff, ?after=, the transport), so
    // the browser's own reconnect is switched off by closing at once.
    this.source.addEventListener("error", () => this.finish(1006));
  }

  deliver(data) {
    if (this.readyState !== OPEN) return;
    this.dispatchEvent(new MessageEvent("message", { data }));
  }

  deliverFrame(frame) {
    this.deliver(JSON.stringify(frame));
  }

  finish(code) {
    if (this.readyState === CLOSED) return;
    this.readyState = CLOSED;
    this.source.close();
    const event = new Event("close");
    Object.assign(event, { code, reason: "" });
    this.dispatchEvent(event);
  }

  close() {
    this.finish(1000);
  }

  /** What a socket would send, over HTTP; answers come back as frames. */
  send(text) {
    const frame = JSON.parse(text);
    this.perform(frame).catch(() => {
      // The network failed under a request: the link is as good as down,
      // and the page resends what was not acked after resuming.
      this.finish(1006);
    });
  }

  async perform(frame) {
    const byType = {
      ping: async () => this.deliverFrame({ type: "pong" }),
      typing: async () => {
        await request("POST", this.typingApi);
      },
      send: () =>
        this.write("POST", this.messagesApi, frame, { body: frame.body, client_id: frame.client_id }),
      edit: () =>
        this.write("PATCH", `${this.messagesApi}${frame.seq}/`, frame, {
          body: frame.body,
          client_id: frame.client_id,
        }),
      delete: () => this.write("DELETE", `${this.messagesApi}${frame.seq}/`, frame, { client_id: frame.client_id }),
      history: () => this.history(frame),
      read: () => this.read(frame),
    };
    if (Object.hasOwn(byType, frame.type)) await byType[frame.type]();
  }

  async write(method, url, frame, body) {
    const response = await request(method, url, body);
    if (response.ok) {
      const message = await response.json();
      this.deliverFrame({ type: "ack", client_id: frame.client_id, seq: message.seq });
    } else {
      this.deliverFrame(await errorFrame(response, frame.client_id));
    }
  }

  /** Mark read over HTTP; the answer comes back as the read frame a socket
   * would get through the user's group (it comes that way too). A refusal
   * is not an error to show: the page marks read again as more is seen. */
  async read(frame) {
    const response = await request("PUT", this.readApi, { seq: frame.seq });
    if (response.ok) this.deliverFrame({ type: "read", ...(await response.json()) });
  }

  async history(frame) {
    const params = new URLSearchParams();
    for (const name of ["after", "before", "limit"]) {
      if (Number.isSafeInteger(frame[name])) params.set(name, String(frame[name]));
    }
    const response = await request("GET", `${this.messagesApi}?${params}`);
    if (!response.ok) {
      this.deliverFrame(await errorFrame(response, null));
      return;
    }
    const page = await response.json();
    this.deliverFrame({ type: "history", messages: page.messages, has_more: page.has_more });
  }
}
