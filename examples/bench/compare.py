"""Prints the before/after/raw quic-go/GossipSub tables of compare.sh
from its JSON lines: medians over repetitions, ratios taken per repetition (same run)."""
import json, statistics, sys
from collections import defaultdict
runs = defaultdict(lambda: defaultdict(list))   # (args) -> sys -> [results]
loads = defaultdict(list)
cur = None
for line in open(sys.argv[1]):
    line = line.strip()
    if not line.startswith("{"): continue
    r = json.loads(line)
    if "args" in r:
        cur = (r["rep"], r["args"]); loads[r["args"]].append(float(r["load"])); continue
    name = r.get("label") or r["system"]
    if r["system"] == "quic-go-fanout": name = "raw"
    if r["system"] == "gossipsub": name = "gossipsub"
    runs[cur[1]][name].append((cur[0], r))
med = statistics.median
def byrep(rs): return {rep: r for rep, r in rs}
print("| workload | reps | load | before MB/s | after MB/s | raw MB/s | before/raw | after/raw | CPU s per GB delivered before / after / raw | heap alloc per delivered byte before / after |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for args, d in runs.items():
    if "-rate" in args: continue
    b, a, raw = byrep(d["before"]), byrep(d["after"]), byrep(d["raw"])
    reps = sorted(set(b) & set(a) & set(raw))
    if not reps: continue
    g = lambda x, k: med(x[i][k] for i in reps)
    cpu = lambda x: med(x[i]["cpu_s"] / (x[i]["goodput_MBps"] * x[i]["seconds"] / 1000) for i in reps)
    rb = med(b[i]["goodput_MBps"] / raw[i]["goodput_MBps"] for i in reps)
    ra = med(a[i]["goodput_MBps"] / raw[i]["goodput_MBps"] for i in reps)
    print(f"| `{args}` | {len(reps)} | {med(loads[args]):.0f} | {g(b,'goodput_MBps'):.1f} | {g(a,'goodput_MBps'):.1f} | {g(raw,'goodput_MBps'):.1f} | {rb:.2f} | {ra:.2f} | {cpu(b):.1f} / {cpu(a):.1f} / {cpu(raw):.1f} | {g(b,'alloc_per_byte'):.2f} / {g(a,'alloc_per_byte'):.2f} |")
print()
print("| workload | reps | load | before deliveries/s | after deliveries/s | GossipSub deliveries/s | after / GossipSub | p50 ms before / after / GossipSub | p99 ms before / after / GossipSub |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for args, d in runs.items():
    if "-size 1024 " not in args + " ": continue
    b, a, gs = byrep(d["before"]), byrep(d["after"]), byrep(d["gossipsub"])
    reps = sorted(set(b) & set(a) & set(gs))
    if not reps: continue
    g = lambda x, k: med(x[i][k] for i in reps)
    ratio = med(a[i]["msgs_per_s"] / gs[i]["msgs_per_s"] for i in reps)
    print(f"| `{args}` | {len(reps)} | {med(loads[args]):.0f} | {g(b,'msgs_per_s'):.0f} | {g(a,'msgs_per_s'):.0f} | {g(gs,'msgs_per_s'):.0f} | {ratio:.2f} | {g(b,'latency_p50_ms'):.1f} / {g(a,'latency_p50_ms'):.1f} / {g(gs,'latency_p50_ms'):.1f} | {g(b,'latency_p99_ms'):.0f} / {g(a,'latency_p99_ms'):.0f} / {g(gs,'latency_p99_ms'):.0f} |")
