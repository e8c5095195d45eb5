// A latency histogram with ~1% wide logarithmic buckets: millions of samples in a few KB, and
// histograms of several processes merge by adding counts. loadtests/fanout/stats.py reads
// them with the same bucket rule (a test in the suite checks the two agree).
"use strict";

const MIN_MS = 0.01; // bucket 0 holds everything at or below this (and negative skews)
const GROWTH = 1.01;
const LOG_GROWTH = Math.log(GROWTH);
const BUCKETS = 2400; // up to ~0.01 ms * 1.01^2399, about 2.3e8 ms: nothing is clipped

function bucket(ms) {
  if (!(ms > MIN_MS)) {
    return 0;
  }
  return Math.min(BUCKETS - 1, 1 + Math.floor(Math.log(ms / MIN_MS) / LOG_GROWTH));
}

class Histogram {
  constructor() {
    this.counts = new Float64Array(BUCKETS);
    this.n = 0;
    this.max = null;
    this.min = null;
  }

  add(ms) {
    this.counts[bucket(ms)] += 1;
    this.n += 1;
    if (this.max === null || ms > this.max) this.max = ms;
    if (this.min === null || ms < this.min) this.min = ms;
  }

  toJSON() {
    const buckets = {};
    for (let i = 0; i < BUCKETS; i++) {
      if (this.counts[i] > 0) buckets[i] = this.counts[i];
    }
    return { buckets, n: this.n, max: this.max, min: this.min };
  }
}

module.exports = { BUCKETS, GROWTH, Histogram, MIN_MS, bucket };
