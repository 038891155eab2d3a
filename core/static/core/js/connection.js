// One room's WebSocket, kept alive: reconnects with jittered exponential
// backoff, notices a dead link with ping/pong, and gives up only when the
// server says access is gone (close code 4403) or the room has become
// unreadable (checked over HTTP after refused handshakes).

export const CLOSE_ACCESS_REVOKED = 4403;
// A limit refused the connection (too many connections or handshakes); the
// close reason says when to come back: "retry_after_ms=<n>".
export const CLOSE_TOO_MANY = 4429;

const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 10_000;
// A ping this often; a link with no frame since the previous ping is dead.
const HEARTBEAT_MS = 25_000;
// After this many handshakes in a row fail, ask over HTTP whether the room
// is still readable: a refused handshake looks like a network error (1006).
const PROBE_AFTER_FAILURES = 2;
const PROBE_EVERY_FAILURES = 4;

/** The server's retry hint in a 4429 close reason, in ms, or null. */
export function retryHint(reason) {
  const match = /^retry_after_ms=(\d{1,9})$/.exec(reason || "");
  return match ? Number(match[1]) : null;
}

/** Delay before reconnect attempt ``attempt`` (0-based): "equal jitter". */
export function backoffDelay(attempt) {
  const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt);
  return ceiling / 2 + Math.random() * (ceiling / 2);
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
   */
  constructor({ url, onFrame, onOpen, onDrop, onStop, isGone }) {
    Object.assign(this, { url, onFrame, onOpen, onDrop, onStop, isGone });
    this.socket = null;
    this.attempt = 0;
    this.failedHandshakes = 0;
    this.retryTimer = null;
    this.heartbeat = null;
    this.heardSincePing = true;
    this.stopped = false;
    window.addEventListener("online", () => this.retryNow());
  }

  start() {
    if (this.stopped || this.socket) return;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    const socket = new WebSocket(this.url());
    let opened = false;
    socket.addEventListener("open", () => {
      opened = true;
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
    return this.socket?.readyState === WebSocket.OPEN;
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
    this.abandon();
    this.onStop({ code });
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
    if (socket && socket.readyState <= WebSocket.OPEN) socket.close();
  }

  async dropped(code, opened, reason = "") {
    clearInterval(this.heartbeat);
    this.socket = null;
    if (this.stopped) return;
    if (code === CLOSE_ACCESS_REVOKED) {
      this.stop(code);
      return;
    }
    // 1006 (link lost), 1012 and 4012 (server restarting or draining) and
    // anything else: try again, later each time, never in lockstep. A limit
    // (4429) says how long to stay away: at least that, spread by half.
    let delayMs = backoffDelay(this.attempt);
    const hint = code === CLOSE_TOO_MANY ? retryHint(reason) : null;
    if (hint !== null) delayMs = Math.max(delayMs, hint * (1 + Math.random() / 2));
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
