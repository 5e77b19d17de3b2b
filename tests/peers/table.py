"""Prints compare.sh's table: per case, the median over rounds of each server's figure,
and the ratios rewind/peer, then issue 14's targets as met or not.

Usage: python3 table.py RESULTS.jsonl (one JSON object per measurement, with "server" and
"case" added to what `rewind bench ... --json` or socketio/loadgen.js printed)."""

import json
import re
import statistics
import sys

SERVERS = ["rewind_durable", "rewind_relaxed", "bare", "socketioxide", "socketio"]
NAMES = {
    "rewind_durable": "rewind durable",
    "rewind_relaxed": "rewind relaxed",
    "bare": "bare broadcast",
    "socketioxide": "socketioxide 0.18",
    "socketio": "socket.io 4.8",
}
PEERS = ["bare", "socketioxide", "socketio"]


def kib_each(d):
    m = re.search(r"([0-9.]+) KiB each", d.get("name", ""))
    return float(m.group(1)) if m else None


# (case, label, how to read it, unit format)
ROWS = [
    ("paced_100x200", "paced 100 × 200/s: server CPU-s per million deliveries",
     lambda d: d.get("server_cpu_s_per_million"), "{:.2f}"),
    ("paced_100x200", "paced 100 × 200/s: p99 publish→receive (ms)",
     lambda d: d["p99_us"] / 1000, "{:.2f}"),
    ("paced_100x10000", "paced 100 × 10,000/s: p99 (ms)", lambda d: d["p99_us"] / 1000, "{:.2f}"),
    ("paced_100x10000", "paced 100 × 10,000/s: server CPU-s per million",
     lambda d: d.get("server_cpu_s_per_million"), "{:.2f}"),
    ("paced_1000x20", "paced 1,000 × 20/s: p99 (ms)", lambda d: d["p99_us"] / 1000, "{:.2f}"),
    ("flood_1000", "flood, 1,000 subscribers: deliveries/s (M)",
     lambda d: d["events_per_sec"] / 1e6, "{:.2f}"),
    ("flood_100", "flood, 100 subscribers: server CPU-s per million",
     lambda d: d.get("server_cpu_s_per_million"), "{:.3f}"),
    ("flood_100", "flood, 100 subscribers: deliveries/s (M)",
     lambda d: d["events_per_sec"] / 1e6, "{:.2f}"),
    ("idle", "idle: server KiB per connection", kib_each, "{:.2f}"),
]


def load(path):
    by = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                by.setdefault((d["case"], d["server"]), []).append(d)
    return by


def median(by, case, server, get):
    vals = [get(d) for d in by.get((case, server), []) if not d.get("failed")]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


# Deliveries/s a paced case asks for: subscribers × events/s.
PACED = {"paced_100x200": 100 * 200, "paced_100x10000": 100 * 10000, "paced_1000x20": 1000 * 20}


def notes(by, case, server):
    runs = by.get((case, server), [])
    out = []
    want = PACED.get(case)
    rates = [d["events_per_sec"] for d in runs if not d.get("failed")]
    if want and rates and statistics.median(rates) < 0.9 * want:
        out.append(f"delivered {statistics.median(rates) / want:.0%} of the rate")
    lost = sum(d.get("lost") or 0 for d in runs)
    if lost:
        out.append(f"lost {lost}")
    if any(d.get("failed") for d in runs):
        out.append("failed")
    if any("load generator" in (d.get("warning") or "") for d in runs):
        out.append("LG-bound")
    return f" ({', '.join(out)})" if out else ""


def main(path):
    by = load(path)
    rounds = max((len(by_round(v)) for v in by.values()), default=0)
    head = [NAMES[s] for s in SERVERS]
    ratios = [(r, p) for r in ("rewind_durable", "rewind_relaxed") for p in PEERS]
    print(f"Median of {rounds} round(s); (lost N): deliveries lost summed over rounds; "
          "(LG-bound): the load generator used ≥ 0.9 core; (delivered N %): a paced case delivered "
          "less than 90 % of subscribers × rate over its seconds.\n")
    print("| case | " + " | ".join(head) + " | "
          + " | ".join(f"{'durable' if r.endswith('durable') else 'relaxed'}/{NAMES[p].split()[0]}"
                       for r, p in ratios) + " |")
    print("| --- |" + " ---: |" * (len(head) + len(ratios)))
    for case, label, get, fmt in ROWS:
        vals = {s: median(by, case, s, get) for s in SERVERS}
        cells = [("–" if vals[s] is None else fmt.format(vals[s])) + notes(by, case, s)
                 for s in SERVERS]
        rcells = []
        for r, p in ratios:
            if vals[r] is None or not vals[p]:
                rcells.append("–")
            else:
                rcells.append(f"{vals[r] / vals[p]:.2f}")
        print(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(rcells) + " |")

    def v(case, server, get):
        return median(by, case, server, get)

    cpu = ROWS[0][2]
    p99 = ROWS[1][2]
    checks = []
    d, b, x, n = (v("paced_100x200", s, cpu) for s in ("rewind_durable", "bare", "socketioxide", "socketio"))
    if None not in (d, b, x, n):
        checks.append((f"paced 100 × 200/s CPU/M ≤ 1.3× bare and below both Socket.IO servers "
                       f"({d:.2f} vs {1.3 * b:.2f}, {x:.2f}, {n:.2f})", d <= 1.3 * b and d < x and d < n))
    d, b = v("paced_100x200", "rewind_durable", p99), v("paced_100x200", "bare", p99)
    if None not in (d, b):
        disk = v("sync", "disk", p99)
        alone = "" if disk is None else f"; the disk's own fdatasync p99 in this run: {disk:.2f} ms"
        checks.append((f"paced 100 × 200/s p99 ≤ bare + 0.5 ms ({d:.2f} vs {b + 0.5:.2f} ms{alone})",
                       d <= b + 0.5))
    d, b = v("paced_100x10000", "rewind_durable", p99), v("paced_100x10000", "bare", p99)
    if None not in (d, b):
        checks.append((f"paced 100 × 10,000/s p99 ≤ 2× bare ({d:.2f} vs {2 * b:.2f} ms)", d <= 2 * b))
    rate = ROWS[5][2]
    d, b = v("flood_1000", "rewind_durable", rate), v("flood_1000", "bare", rate)
    if None not in (d, b):
        checks.append((f"flood 1,000 ≥ 75 % of bare ({d:.2f} vs {0.75 * b:.2f} M/s)", d >= 0.75 * b))
    d = v("idle", "rewind_durable", kib_each)
    if d is not None:
        checks.append((f"idle ≤ 8 KiB per connection ({d:.2f} KiB)", d <= 8))
    lost = {s: sum(x.get("lost") or 0 for (c, s2), runs in by.items() if s2 == s for x in runs)
            for s in SERVERS}
    checks.append(("zero events lost by rewind (durable: %d, relaxed: %d; peers: %s)" % (
        lost["rewind_durable"], lost["rewind_relaxed"],
        ", ".join(f"{NAMES[p]} {lost[p]}" for p in PEERS)),
        lost["rewind_durable"] == 0 and lost["rewind_relaxed"] == 0))
    p50 = lambda d: d["p50_us"] / 1000
    disk = (v("sync", "disk", p50), v("sync", "disk", p99))
    if None not in disk:
        print("\nThe disk alone (200-byte write + fdatasync every 5 ms, no server running): "
              f"p50 {disk[0]:.2f} ms, p99 {disk[1]:.2f} ms: every durable publish waits for one.")
    sync_cpu = v("sync", "disk", lambda d: d.get("cpu_us_per_op"))
    if sync_cpu is not None:
        print(f"Its CPU: {sync_cpu:.0f} µs per write + fdatasync; at 100 × 200/s, where each durable "
              f"event has a sync of its own, that alone is {sync_cpu / 100:.2f} CPU-s per million "
              "deliveries (µs per event ÷ 100 deliveries).")
    print("\nTargets of issue 14 (rewind durable):\n")
    for text, ok in checks:
        print(f"- {'met' if ok else 'NOT met'}: {text}")
    if rounds > 1:
        print("\nRound by round (each server's measurement of the same round):\n")
        for case, peer, get, test, text in ROUND_CHECKS:
            for r in ("rewind_durable", "rewind_relaxed"):
                k, n = rounds_where(by, case, r, peer, get, test)
                if n:
                    print(f"- {NAMES[r]}: {text} in {k} of {n} rounds")


# (case, peer, figure, test of rewind's figure against the peer's, what the test says)
ROUND_CHECKS = [
    ("paced_100x200", "bare", ROWS[0][2], lambda r, p: r <= 1.3 * p,
     "paced 100 × 200/s CPU/M ≤ 1.3× bare"),
    ("paced_100x200", "socketioxide", ROWS[0][2], lambda r, p: r < p,
     "paced 100 × 200/s CPU/M below socketioxide"),
    ("paced_100x200", "socketio", ROWS[0][2], lambda r, p: r < p,
     "paced 100 × 200/s CPU/M below socket.io"),
    ("paced_100x200", "bare", ROWS[1][2], lambda r, p: r <= p + 0.5,
     "paced 100 × 200/s p99 ≤ bare + 0.5 ms"),
    ("paced_100x10000", "bare", ROWS[2][2], lambda r, p: r <= 2 * p,
     "paced 100 × 10,000/s p99 ≤ 2× bare"),
]


def by_round(runs):
    """A server's measurements of one case by round: their "round" (compare.sh records
    it), else their position (files written before it did)."""
    return {d.get("round", i + 1): d for i, d in enumerate(runs)}


def rounds_where(by, case, server, peer, get, test):
    """In how many rounds `test(server's figure, peer's figure)` held, of the rounds where
    both were measured."""
    mine, theirs = by_round(by.get((case, server), [])), by_round(by.get((case, peer), []))
    pairs = [(mine[r], theirs[r]) for r in mine if r in theirs]
    figures = [(get(a), get(b)) for a, b in pairs if not a.get("failed") and not b.get("failed")]
    figures = [(a, b) for a, b in figures if a is not None and b is not None]
    return sum(1 for a, b in figures if test(a, b)), len(figures)


if __name__ == "__main__":
    main(sys.argv[1])
