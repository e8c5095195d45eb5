// What one subscriber received in the measured window (seq > lo): every seq once, in order?
//
// A bitmap of the seqs seen since `lo` tells a duplicate from a first receipt whatever the
// order (the peer does not promise a global order; Duckcast does). It outlives reconnections,
// so a subscriber that is dropped and resumes is counted as one: what it missed and never got
// back is lost, what it got twice is duplicated.
"use strict";

const ONES = Uint8Array.from({ length: 256 }, (_, b) => {
  let n = 0;
  for (let v = b; v; v >>= 1) n += v & 1;
  return n;
});

class Tally {
  constructor(lo) {
    this.last = 0; // highest seq ever received: where a resume starts from
    this.arm(lo);
  }

  arm(lo) {
    this.lo = lo;
    this.bits = new Uint8Array(256);
    this.unique = 0; // distinct seqs > lo (uniqueUpTo(hi) counts those <= hi)
    this.received = 0; // every event, duplicates and seqs <= lo included
    this.dups = 0;
    this.outOfOrder = 0; // first receipts below the highest seq already seen
    this.early = 0; // seqs <= lo (a replay reaching back before the window)
    this.high = lo;
  }

  // True on the first receipt of an in-window seq (the one whose latency counts).
  see(seq) {
    this.received += 1;
    if (seq > this.last) this.last = seq;
    if (seq <= this.lo) {
      this.early += 1;
      return false;
    }
    const offset = seq - this.lo - 1;
    const byte = offset >> 3;
    if (byte >= this.bits.length) {
      let size = this.bits.length * 2;
      while (size <= byte) size *= 2;
      const grown = new Uint8Array(size);
      grown.set(this.bits);
      this.bits = grown;
    }
    const mask = 1 << (offset & 7);
    if (this.bits[byte] & mask) {
      this.dups += 1;
      return false;
    }
    this.bits[byte] |= mask;
    this.unique += 1;
    if (seq < this.high) {
      this.outOfOrder += 1;
    } else {
      this.high = seq;
    }
    return true;
  }

  // Distinct seqs in (lo, hi]: what was committed before the writer's last answer. A write
  // the writer gave up on may still commit later; its seq is above hi and not expected.
  uniqueUpTo(hi) {
    const bits = Math.max(0, Math.min(hi - this.lo, this.bits.length * 8));
    let n = 0;
    const whole = bits >> 3;
    for (let i = 0; i < whole; i++) n += ONES[this.bits[i]];
    const rest = bits & 7;
    if (rest) n += ONES[this.bits[whole] & ((1 << rest) - 1)];
    return n;
  }
}

module.exports = { Tally };
