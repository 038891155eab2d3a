// Seq bookkeeping for one room: which messages are held, how far they run
// without a hole, and whether the server has told of later ones.
//
// "contiguous" is the highest seq such that every message from the page's
// first one up to it is held: the socket resumes with ?after=<contiguous>
// and a gap above it is fetched with history (docs/protocol.md §9.3, the no-loss algorithm).

export class Timeline {
  /** @param {number} base the highest seq the page started with (0: empty) */
  constructor(base = 0) {
    this.seqs = new Set();
    this.contiguous = base;
    this.known = base;
    this.lowest = null;
  }

  has(seq) {
    return this.seqs.has(seq);
  }

  /** Record a held message; false if it was held already (a duplicate). */
  add(seq) {
    if (this.seqs.has(seq)) return false;
    this.seqs.add(seq);
    if (this.lowest === null || seq < this.lowest) this.lowest = seq;
    this.noteExists(seq);
    while (this.seqs.has(this.contiguous + 1)) this.contiguous += 1;
    return true;
  }

  /** The server says messages up to ``seq`` exist (welcome, ack, message). */
  noteExists(seq) {
    if (seq > this.known) this.known = seq;
  }

  /** Forget every held message: the room's history now ends at ``base``. */
  reset(base) {
    this.seqs.clear();
    this.contiguous = base;
    this.known = base;
    this.lowest = null;
  }

  /** True while some message above ``contiguous`` is known but not held. */
  get hasGap() {
    return this.known > this.contiguous;
  }

  get size() {
    return this.seqs.size;
  }
}
