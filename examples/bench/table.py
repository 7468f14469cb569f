"""Prints the BENCHMARKS.md table from the JSON lines of run.sh: the
median of each field over the repetitions, per system and workload."""
import json
import statistics
import sys
from collections import defaultdict

runs = defaultdict(list)
for line in open(sys.argv[1]):
    line = line.strip()
    if line.startswith("{"):
        r = json.loads(line)
        runs[(r["nodes"], r["size"], r["count"], r["system"])].append(r)

def med(rs, k):
    return statistics.median(r[k] for r in rs)

def size(b):
    return f"{b >> 20} MiB" if b >= 1 << 20 else f"{b >> 10} KiB"

print("| N | size × count | system | runs | goodput MB/s (min–max) | msgs/s | p50 ms | p99 ms | missing | dups | wire MB | wasted MB | peak heap MB |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for key in sorted(runs, key=lambda k: (k[0], k[1], k[3])):
    rs = runs[key]
    n, sz, count, system = key
    g = [r["goodput_MBps"] for r in rs]
    print(f"| {n} | {size(sz)} × {count} | {system} | {len(rs)} | {med(rs, 'goodput_MBps'):.1f} ({min(g):.1f}–{max(g):.1f}) | "
          f"{med(rs, 'msgs_per_s'):.0f} | {med(rs, 'latency_p50_ms'):.0f} | {med(rs, 'latency_p99_ms'):.0f} | "
          f"{max(r['missing'] for r in rs)} | {max(r['duplicates'] for r in rs)} | {med(rs, 'wire_MB'):.1f} | "
          f"{med(rs, 'wasted_MB'):.3f} | {med(rs, 'peak_heap_MB'):.0f} |")

print()
print("| N | size | abcast / GossipSub goodput | abcast / raw quic-go fan-out | abcast wasted / GossipSub wasted |")
print("| --- | --- | --- | --- | --- |")
for (n, sz, count, system) in sorted(runs):
    if system != "abcast":
        continue
    a = runs[(n, sz, count, "abcast")]
    gs = runs.get((n, sz, count, "gossipsub"))
    raw = runs.get((n, sz, count, "quic-go-fanout"))
    ratio = lambda other, k: f"{med(a, k) / med(other, k):.2f}" if other and med(other, k) else "–"
    print(f"| {n} | {size(sz)} | {ratio(gs, 'goodput_MBps')} | {ratio(raw, 'goodput_MBps')} | {ratio(gs, 'wasted_MB')} |")
