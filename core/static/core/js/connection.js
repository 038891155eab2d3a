// One room's WebSocket, kept alive: reconnects with full-jitter exponential
// backoff, notices a dead link with ping/pong, and gives up only when the
// server says access is gone (close code 4403) or the room has become
// unreadable (checked over HTTP after refused handshakes).
//
// Where WebSockets cannot open (no WebSocket at all, or handshakes that keep
// failing while HTTP works), the link falls back to Server-Sent Events plus
// the HTTP API (a StreamLink, stream.js), resuming with the same ?after=,
// and now and then tries a WebSocket again: once one opens, it moves back.

export const CLOSE_ACCESS_REVOKED = 4403;
// A limit refused the connection (too many connections or handshakes); the
// close reason says when to come back: "retry_after_ms=<n>".
export const CLOSE_TOO_MANY = 4429;
// The server is busy admitting other handshakes (a reconnect storm); the
// reason says within how long to come back: "retry_window_ms=<n>".
export const CLOSE_BUSY = 4503;
// The server is shutting down (a deploy); the reason says over how long its
// clients should spread their reconnects: "retry_window_ms=<n>".
export const CLOSE_SHUTDOWN = 4012;
const SHUTDOWN_WINDOW_DEFAULT_MS = 5_000;

const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 10_000;
// A ping this often; a link with no frame since the previous ping is dead.
const HEARTBEAT_MS = 25_000;
// After this many handshakes in a row fail, ask over HTTP whether the room
// is still readable: a refused handshake looks like a network error (1006).
const PROBE_AFTER_FAILURES = 2;
const PROBE_EVERY_FAILURES = 4;
// WebSocket handshakes in a row that fail before falling back to a stream.
const SOCKET_FAILURES_BEFORE_STREAM = 2;
// While on a stream, try a WebSocket after this long, then twice as long
// after each failed try, up to the cap.
const UPGRADE_FIRST_MS = 30_000;
const UPGRADE_CAP_MS = 600_000;
// WebSocket.OPEN, also where window.WebSocket is missing.
const OPEN = 1;

export const WEBSOCKET = "websocket";
export const STREAM = "sse";

function socketsExist() {
  return typeof WebSocket === "function";
}

/** A close reason's ``<name>=<n>`` hint (a number of ms), or null. */
export function retryHint(reason, name = "retry_after_ms") {
  const match = new RegExp(`^${name}=(\\d{1,9})$`).exec(reason || "");
  return match ? Number(match[1]) : null;
}

/** Delay before reconnect attempt ``attempt`` (0-based): "full jitter",
 * anywhere from 0 to the exponential ceiling, so a crowd spreads out. */
export function backoffDelay(attempt) {
  const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt);
  return Math.random() * ceiling;
}

/** How long to wait after a close with ``code`` and ``reason`` before
 * attempt ``attempt``: the server's hint where it gives one. */
export function reconnectDelay(code, reason, attempt) {
  if (code === CLOSE_TOO_MANY) {
    // Stay away at least as long as asked, spread by up to as long again.
    const hint = retryHint(reason);
    if (hint !== null) return hint * (1 + Math.random());
  }
  if (code === CLOSE_BUSY) {
    // A random moment within the window the busy server names.
    const window = retryHint(reason, "retry_window_ms");
    if (window !== null) return Math.random() * window;
  }
  if ((code === CLOSE_SHUTDOWN || code === 1012) && attempt === 0) {
    // Every client of the instance is told at once: a random share of the
    // window, not all at the same moment.
    const window = retryHint(reason, "retry_window_ms") ?? SHUTDOWN_WINDOW_DEFAULT_MS;
    return Math.random() * window;
  }
  return backoffDelay(attempt);
}

export class RoomConnection {
  /**
   * @param {object} options
   * @param {() => string} options.url the URL of the next attempt
   * @param {(frame: object) => void} options.onFrame every parsed frame
   * @param {() => void} options.onOpen the socket opened (welcome follows)
   * @param {(info: {code: number, delayMs: number}) => void} options.onDrop
   *   the link is down; the next attempt starts in ``delayMs``
   * @param {(info: {code: number}) => void} options.onStop given up for good
   * @param {() => Promise<boolean>} options.isGone true if the room can no
   *   longer be read (asked after refused handshakes)
   * @param {(() => object) | undefined} options.openStream a StreamLink for
   *   the next attempt over Server-Sent Events (none: WebSocket only)
   * @param {(transport: string) => void} options.onTransport the transport
   *   of the next attempt ("websocket" or "sse")
   * @param {AbortSignal | undefined} options.signal aborting it closes the
   *   link for good, quietly (the room is unmounted)
   */
  constructor({ url, onFrame, onOpen, onDrop, onStop, isGone, openStream, onTransport, signal }) {
    Object.assign(this, { url, onFrame, onOpen, onDrop, onStop, isGone, openStream });
    this.onTransport = onTransport ?? (() => {});
    this.transport = WEBSOCKET;
    this.socketFailures = 0;
    this.upgradeTimer = null;
    this.upgradeDelay = UPGRADE_FIRST_MS;
    this.socket = null;
    this.attempt = 0;
    this.failedHandshakes = 0;
    this.retryTimer = null;
    this.heartbeat = null;
    this.heardSincePing = true;
    this.stopped = false;
    window.addEventListener("online", () => this.retryNow(), { signal });
    signal?.addEventListener("abort", () => this.close());
  }

  start() {
    if (this.stopped || this.socket) return;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.transport === WEBSOCKET && this.openStream && !socketsExist()) {
      this.useTransport(STREAM);
    }
    const socket = this.transport === STREAM ? this.openStream() : new WebSocket(this.url());
    const transport = this.transport;
    let opened = false;
    socket.addEventListener("open", () => {
      opened = true;
      if (transport === WEBSOCKET) this.socketFailures = 0;
      else this.scheduleUpgrade();
      this.failedHandshakes = 0;
      this.heardSincePing = true;
      this.heartbeat = setInterval(() => this.checkHeartbeat(), HEARTBEAT_MS);
      this.onOpen();
    });
    socket.addEventListener("message", (event) => {
      this.heardSincePing = true;
      this.receive(event.data);
    });
    socket.addEventListener("close", (event) => {
      if (this.socket === socket) this.dropped(event.code, opened, event.reason);
    });
    this.socket = socket;
  }

  get isOpen() {
    return this.socket?.readyState === OPEN;
  }

  /** Send a frame if the socket is open; false if it could not go now. */
  send(frame) {
    if (!this.isOpen) return false;
    this.socket.send(JSON.stringify(frame));
    return true;
  }

  /** The link has stayed up long enough: the next drop starts over fast. */
  markHealthy() {
    this.attempt = 0;
  }

  /** Skip the rest of the backoff (a "Retry now" button, the browser online). */
  retryNow() {
    if (this.stopped || this.socket) return;
    this.start();
  }

  /** Close for good; ``onStop`` is called with ``code``. */
  stop(code) {
    if (this.stopped) return;
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.upgradeTimer);
    this.abandon();
    this.onStop({ code });
  }

  /** Close for good without a word to the page (it is going away). */
  close() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.upgradeTimer);
    this.abandon();
  }

  receive(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return; // the server sends JSON only; anything else is noise
    }
    if (frame && typeof frame.type === "string") this.onFrame(frame);
  }

  checkHeartbeat() {
    if (!this.heardSincePing) {
      // Nothing since the last ping: the TCP link is gone without a close.
      // Waiting for the browser's close handshake can take minutes.
      this.abandon();
      this.dropped(1006, true);
      return;
    }
    this.heardSincePing = false;
    this.send({ type: "ping" });
  }

  abandon() {
    clearInterval(this.heartbeat);
    const socket = this.socket;
    this.socket = null;
    if (socket && socket.readyState <= OPEN) socket.close();
  }

  useTransport(transport) {
    this.transport = transport;
    this.onTransport(transport);
  }

  /** On a stream: try a WebSocket later; if it opens, move back to it. */
  scheduleUpgrade() {
    clearTimeout(this.upgradeTimer);
    if (!socketsExist()) return;
    this.upgradeTimer = setTimeout(() => this.tryUpgrade(), this.upgradeDelay);
  }

  tryUpgrade() {
    if (this.stopped || this.transport !== STREAM || !this.socket) return;
    let probe;
    try {
      probe = new WebSocket(this.url());
    } catch {
      return;
    }
    let done = false;
    const settle = (works) => {
      if (done) return;
      done = true;
      probe.close();
      if (this.stopped) return;
      if (!works) {
        this.upgradeDelay = Math.min(this.upgradeDelay * 2, UPGRADE_CAP_MS);
        this.scheduleUpgrade();
        return;
      }
      // WebSockets work again: leave the stream and resume on a socket.
      this.upgradeDelay = UPGRADE_FIRST_MS;
      this.socketFailures = 0;
      this.useTransport(WEBSOCKET);
      this.abandon();
      this.start();
    };
    probe.addEventListener("open", () => settle(true));
    probe.addEventListener("close", () => settle(false));
  }

  async dropped(code, opened, reason = "") {
    clearInterval(this.heartbeat);
    clearTimeout(this.upgradeTimer);
    this.socket = null;
    if (this.stopped) return;
    if (code === CLOSE_ACCESS_REVOKED) {
      this.stop(code);
      return;
    }
    if (this.transport === WEBSOCKET && !opened && this.openStream) {
      this.socketFailures += 1;
      if (this.socketFailures >= SOCKET_FAILURES_BEFORE_STREAM) {
        // WebSockets do not get through: read over HTTP instead, at once.
        this.useTransport(STREAM);
        this.retryTimer = setTimeout(() => this.start(), 0);
        this.onDrop({ code, delayMs: 0 });
        return;
      }
    }
    // 1006 (link lost), 1012 and 4012 (server restarting or draining) and
    // anything else: try again, later each time, never in lockstep. A limit
    // (4429) or a busy server (4503) says how long to stay away; a shutdown
    // (4012) over how long to spread the first try.
    const delayMs = reconnectDelay(code, reason, this.attempt);
    this.attempt += 1;
    this.retryTimer = setTimeout(() => this.start(), delayMs);
    this.onDrop({ code, delayMs });
    if (!opened) {
      this.failedHandshakes += 1;
      if (this.shouldProbe() && (await this.isGone())) this.stop(CLOSE_ACCESS_REVOKED);
    }
  }

  shouldProbe() {
    const n = this.failedHandshakes - PROBE_AFTER_FAILURES;
    return n >= 0 && n % PROBE_EVERY_FAILURES === 0;
  }
}
