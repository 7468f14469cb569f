"""Prints the BENCHMARKS.md tables (markdown) from the JSON lines of
run.sh (or issue 8's run.sh, or compare.sh): medians over repetitions,
ratios taken per repetition (systems measured in the same repetition of
a workload) and their median.

    python3 examples/bench/table.py FILE...

Tables, each printed only when its data is there: every broadcast
result; abcast against raw quic-go fan-out and GossipSub; small
artifacts; aborts; the remote (remotebench -json); the footprint
(scalebench), with the per-peer cost fitted as per-node figure ≈ a + b·(N−1).
"""
import os
import sys
from collections import defaultdict

sys.dont_write_bytecode = True  # no __pycache__ beside the scripts
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchdata as bd  # noqa: E402

med = bd.median


def by_workload(data):
    out = defaultdict(lambda: defaultdict(list))  # workload -> series name -> [result]
    for r in data.runs:
        out[r["_wl"]][bd.series_name(r)].append(r)
    return out


def wl_order(wl):
    return (wl.abort, wl.rate, wl.size, wl.nodes, wl.publishers, wl.count)


def paired(a, b, f):
    """Median over the repetitions a and b share of f(a's result, b's);
    without shared repetitions, f of the medians is not defined, so None."""
    ra, rb = {r["_rep"]: r for r in a}, {r["_rep"]: r for r in b}
    vals = [f(ra[k], rb[k]) for k in ra if k in rb]
    vals = [v for v in vals if v is not None]
    return med(vals) if vals else None


def div(x, y):
    return x / y if y else None


def ratio_text(v):
    return "–" if v is None else f"{v:.2f}"


def load_text(rs):
    loads = [r["_load"] for r in rs if r["_load"] is not None]
    return f"{med(loads):.1f}" if loads else "–"


def cpu_per_gb(r):
    """Process CPU seconds per GB of payload delivered (bench results only)."""
    gb = r["goodput_MBps"] * r["seconds"] / 1000
    return r["cpu_s"] / gb if gb and r.get("cpu_s") else None


def opt_med(rs, f):
    vals = [v for v in (f(r) for r in rs) if v is not None]
    return med(vals) if vals else None


def num(v, fmt):
    return "–" if v is None else format(v, fmt)


def all_results(groups):
    print("| N | size × count | publishers | abort | rate/s | system | runs | goodput MB/s (min–max) | msgs/s | p50 ms | p99 ms | missing | dups | wire MB | wasted MB | peak heap MB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for wl in sorted(groups, key=wl_order):
        for name in sorted(groups[wl], key=bd.series_order):
            rs = groups[wl][name]
            m = lambda k: med(r[k] for r in rs)
            g = [r["goodput_MBps"] for r in rs]
            print(f"| {wl.nodes} | {bd.size_text(wl.size)} × {wl.count} | {wl.publishers} | {wl.abort:g} | {wl.rate:g} | {name} | {len(rs)} | "
                  f"{m('goodput_MBps'):.1f} ({min(g):.1f}–{max(g):.1f}) | {m('msgs_per_s'):.0f} | {m('latency_p50_ms'):.1f} | "
                  f"{m('latency_p99_ms'):.0f} | {max(r['missing'] for r in rs)} | {max(r['duplicates'] for r in rs)} | "
                  f"{m('wire_MB'):.1f} | {m('wasted_MB'):.3f} | {m('peak_heap_MB'):.0f} |")
    print()


def abcast_series(d):
    return [n for n in sorted(d, key=bd.series_order) if n.split(" (")[0] == "abcast"]


def versus(groups, header, keep, row):
    """One row per workload that keep(wl) accepts and abcast build in it:
    row(wl, name, abcast's results, raw's, GossipSub's)."""
    rows = []
    for wl in sorted(groups, key=wl_order):
        d = groups[wl]
        raw, gs = d.get("raw quic-go", []), d.get("GossipSub", [])
        if keep(wl, raw, gs):
            rows += [f"| `{bd.workload_flags(wl)}` | {name} | {len(d[name])} | " + row(d[name], raw, gs) + " |"
                     for name in abcast_series(d)]
    if rows:
        print("| " + " | ".join(header) + " |")
        print("| " + " | ".join("---" for _ in header) + " |")
        print("\n".join(rows))
        print()


def m(rs, k):
    return med(r[k] for r in rs)


def ratio_of(a, b, k):
    return ratio_text(paired(a, b, lambda x, y: div(x[k], y[k])))


def vs_baselines(groups):
    versus(groups, ["workload", "build", "reps", "load", "abcast MB/s", "raw quic-go MB/s", "abcast / raw", "GossipSub MB/s",
                    "abcast / GossipSub", "CPU s per GB delivered abcast / raw", "heap alloc per delivered byte"],
           lambda wl, raw, gs: raw or gs,
           lambda a, raw, gs: " | ".join([
               load_text(a), f"{m(a, 'goodput_MBps'):.1f}", num(opt_med(raw, lambda r: r["goodput_MBps"]), ".1f"),
               ratio_of(a, raw, "goodput_MBps"), num(opt_med(gs, lambda r: r["goodput_MBps"]), ".1f"),
               ratio_of(a, gs, "goodput_MBps"), f"{num(opt_med(a, cpu_per_gb), '.1f')} / {num(opt_med(raw, cpu_per_gb), '.1f')}",
               num(opt_med(a, lambda r: r.get("alloc_per_byte")), ".2f")]))


def small(groups, limit=16 << 10):
    versus(groups, ["small artifacts", "build", "reps", "abcast deliveries/s", "GossipSub deliveries/s", "abcast / GossipSub",
                    "p50 ms abcast / GossipSub", "p99 ms abcast / GossipSub"],
           lambda wl, raw, gs: wl.size <= limit and not wl.abort and gs,
           lambda a, raw, gs: " | ".join([
               f"{m(a, 'msgs_per_s'):.0f}", f"{m(gs, 'msgs_per_s'):.0f}", ratio_of(a, gs, "msgs_per_s"),
               f"{m(a, 'latency_p50_ms'):.2f} / {m(gs, 'latency_p50_ms'):.2f}",
               f"{m(a, 'latency_p99_ms'):.1f} / {m(gs, 'latency_p99_ms'):.1f}"]))


def aborts(groups):
    versus(groups, ["aborts", "build", "reps", "goodput MB/s abcast / GossipSub", "wire MB abcast / GossipSub",
                    "wasted MB abcast / GossipSub", "abcast wasted / GossipSub wasted"],
           lambda wl, raw, gs: wl.abort and gs,
           lambda a, raw, gs: " | ".join([
               f"{m(a, 'goodput_MBps'):.1f} / {m(gs, 'goodput_MBps'):.1f}", f"{m(a, 'wire_MB'):.1f} / {m(gs, 'wire_MB'):.1f}",
               f"{m(a, 'wasted_MB'):.3f} / {m(gs, 'wasted_MB'):.3f}", ratio_of(a, gs, "wasted_MB")]))


REMOTE_NAMES = {"quic": "quicremote", "grpc": "protoactor gRPC remote"}


def remote(rs):
    if not rs:
        return
    by = defaultdict(list)
    for r in rs:
        by[(r["system"], r.get("n"), r.get("rt"))].append(r)
    print("| remote | messages | round trips | runs | one-way msg/s (min–max) | CPU µs per message | allocs per message | round-trip p50 µs | p99 µs |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for (system, n, rt), g in sorted(by.items(), key=lambda kv: (kv[0][1] or 0, kv[0][2] or 0, kv[0][0] != "quic")):
        m = lambda k: med(r[k] for r in g)
        ow = [r["one_way_msgs_per_s"] for r in g]
        print(f"| {REMOTE_NAMES.get(system, system)} | {n} | {rt} | {len(g)} | {m('one_way_msgs_per_s'):,.0f} ({min(ow):,.0f}–{max(ow):,.0f}) | "
              f"{m('cpu_us_per_msg'):.2f} | {m('allocs_per_msg'):.0f} | {m('rt_p50_us'):.0f} | {m('rt_p99_us'):.0f} |")
    q = [r for r in rs if r["system"] == "quic"]
    g = [r for r in rs if r["system"] == "grpc"]
    if q and g:
        m = lambda rs, k: med(r[k] for r in rs)
        print(f"\nquicremote / gRPC (medians): one-way {m(q, 'one_way_msgs_per_s') / m(g, 'one_way_msgs_per_s'):.2f}, "
              f"round-trip p50 {m(q, 'rt_p50_us') / m(g, 'rt_p50_us'):.2f}")
    print()


def fit(points):
    """Least-squares a, b of y ≈ a + b·x, or None with fewer than two distinct x."""
    xs = [x for x, _ in points]
    if len(set(xs)) < 2:
        return None
    n = len(points)
    mx, my = sum(xs) / n, sum(y for _, y in points) / n
    b = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


SCALE_FIT = [("peak_heap_per_node_MB", "peak heap per node", "MiB"), ("idle_heap_per_node_MB", "idle heap per node", "MiB"),
             ("peak_goroutines_per_node", "peak goroutines per node", "goroutines"),
             ("idle_goroutines_per_node", "idle goroutines per node", "goroutines")]


def scale(rs):
    if not rs:
        return
    print("| N | build | converged | peak heap MiB (per node) | peak live MiB per node | peak goroutines (per node) | idle heap MiB per node | idle goroutines per node | CPU µs per delivery | 100 B p50 / p99 ms | virtual s | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    g = lambda r, k: r.get(k, 0)
    for r in sorted(rs, key=lambda r: (r.get("label", ""), r["nodes"])):
        print(f"| {r['nodes']} | {r.get('label') or '–'} | {'yes' if r.get('converged') else 'NO'} | "
              f"{g(r, 'peak_heap_MB'):,.0f} ({g(r, 'peak_heap_per_node_MB'):.1f}) | {g(r, 'peak_live_per_node_MB'):.1f} | "
              f"{g(r, 'peak_goroutines'):,} ({g(r, 'peak_goroutines_per_node'):,.0f}) | {g(r, 'idle_heap_per_node_MB'):.1f} | "
              f"{g(r, 'idle_goroutines_per_node'):,.0f} | {g(r, 'cpu_us_per_delivery'):.0f} | "
              f"{g(r, 'latency_100B_p50_ms'):.0f} / {g(r, 'latency_100B_p99_ms'):.0f} | {g(r, 'virtual_s'):.1f} | {g(r, 'wall_s'):.0f} |")
    print()
    for label in sorted({r.get("label", "") for r in rs}):
        lines = []
        for key, what, unit in SCALE_FIT:
            f = fit([(r["nodes"] - 1, r[key]) for r in rs if r.get("label", "") == label and key in r])
            if f:
                lines.append(f"{what} ≈ {f[0]:.2f} + {f[1]:.3f}·(N−1) {unit}")
        if lines:
            print(f"Per-peer cost{' (' + label + ')' if label else ''}, least squares over N: " + "; ".join(lines) + ".")
            print()


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    data = bd.load(sys.argv[1:])
    groups = by_workload(data)
    if groups:
        all_results(groups)
        vs_baselines(groups)
        small(groups)
        aborts(groups)
    remote(data.remote)
    scale(data.scale)


if __name__ == "__main__":
    main()
