"""Latency histograms of openloop runs (bench/tools/src/hist.rs), merged.

openloop prints its histogram's non-empty buckets as [index, count] pairs. A round of figure 3
runs each target in several short segments, interleaved with the other targets; merging a
target's segments gives percentiles over the same stretch of time for every target, so that
what else the machine does in that time weighs on the direct run as on the proxies'.
"""

import math
import statistics

SUB = 128  # buckets per power of two
SUB_BITS = 7
EXACT = 2 * SUB  # 0..256 ns counted one per bucket


def bucket(i):
    """Lower bound and width of bucket i, in ns (hist.rs `bucket`)."""
    if i < EXACT:
        return i, 1
    shift = (i - EXACT) // SUB + 1
    m = (i - EXACT) % SUB + SUB
    return m << shift, 1 << shift


def quantile_us(counts, n, lo, hi, q):
    """The value at quantile q in µs, as hist.rs `quantile_ns` computes it."""
    if n == 0:
        return 0.0
    rank = min(max(-(-q * n // 1), 1), n)
    seen = 0
    for i in sorted(counts):
        seen += counts[i]
        if seen >= rank:
            low, width = bucket(i)
            mid = low + (width - 1) / 2
            return tenths(min(max(mid, lo), hi))
    return tenths(hi)


def tenths(ns):
    """ns in µs rounded to 0.1, as openloop computes its own figures ((ns / 100).round() / 10:
    halves away from zero, not to even as Python's round)."""
    return math.floor(ns / 100 + 0.5) / 10


def percentiles_by_round(rows, qs=(0.50, 0.99)):
    """[{round: {target: value}} per quantile]: each target's segments of a round merged (rows
    with a "hist"), else the median of its rows' own percentiles (older results)."""
    groups = {}
    for r in rows:
        groups.setdefault((r["round"], r["target"]), []).append(r)
    out = [{} for _ in qs]
    for (rnd, target), segs in groups.items():
        if all("hist" in s for s in segs):
            counts = {}
            for s in segs:
                for i, c in s["hist"]:
                    counts[i] = counts.get(i, 0) + c
            n = sum(counts.values())
            lo = min(s["min_ns"] for s in segs if s["hist"]) if n else 0
            hi = max(s["max_ns"] for s in segs) if n else 0
            values = [quantile_us(counts, n, lo, hi, q) for q in qs]
        else:
            keys = {0.50: "p50_us", 0.90: "p90_us", 0.99: "p99_us", 0.999: "p999_us"}
            values = [statistics.median(s[keys[q]] for s in segs) for q in qs]
        for table, v in zip(out, values):
            table.setdefault(rnd, {})[target] = v
    return out
