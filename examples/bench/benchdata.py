"""Reads the JSON lines of examples/bench/run.sh and compare.sh for
plot.py and table.py (stdlib only).

A file mixes four kinds of lines; only lines starting with "{" are read:
  - markers {"load": ..., "rep": ..., "args": "-nodes 4 -size ..."} that
    run.sh and compare.sh write before each workload: the results after
    one belong to that workload and repetition; run.sh's markers before
    scalebench and remotebench name the "program" and its flags, which
    the results after them keep as "_args";
  - broadcast results (examples/bench: systems "abcast" and, with
    -baseline, "quic-go-fanout"; examples/gossipbench: "gossipsub");
  - scalebench results (bench "scale");
  - remotebench -json results (bench "remote").

A broadcast result's workload comes from its marker when there is one:
the raw baseline reports publishers "one" and abort fraction 0 whatever
abcast ran beside it, and the results carry no -rate. Without markers
(issue 8's run.sh) the fields are used, and a baseline line takes the
workload of the abcast line just before it.
"""
import json
import statistics
import sys
from collections import namedtuple

# Display names, in the order legends list them.
SYSTEMS = {"abcast": "abcast", "gossipsub": "GossipSub", "quic-go-fanout": "raw quic-go"}
RAW = "quic-go-fanout"

Workload = namedtuple("Workload", "nodes size count publishers abort rate")


class Data:
    def __init__(self):
        self.runs = []      # broadcast results, each with "_wl", "_rep", "_args", "_load"
        self.scale = []     # scalebench results
        self.remote = []    # remotebench results
        self.skipped = 0    # lines that start with "{" but do not parse


def parse_args(args):
    """Flags of a marker's args string as a dict ("-nodes 4" -> {"nodes": "4"})."""
    out, words = {}, args.split()
    i = 0
    while i < len(words):
        w = words[i]
        if w.startswith("-") and i + 1 < len(words) and not words[i + 1].startswith("-"):
            out[w.lstrip("-")] = words[i + 1]
            i += 2
        else:
            if w.startswith("-"):
                out[w.lstrip("-")] = "true"
            i += 1
    return out


def workload_of(r, flags):
    f = lambda k, conv, default: conv(flags[k]) if k in flags else default
    return Workload(
        nodes=f("nodes", int, r.get("nodes", 0)),
        size=f("size", int, r.get("size", 0)),
        count=f("count", int, r.get("count", 0)),
        publishers=flags.get("publishers", r.get("publishers", "all")),
        abort=f("abort-fraction", float, float(r.get("abort_fraction", 0))),
        rate=f("rate", float, 0.0),
    )


def load(paths):
    d = Data()
    for path in paths:
        marker = program = None
        last_abcast = None
        seen = {}   # (workload, system, label) -> results so far, the rep without markers
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                try:
                    r = json.loads(line)
                except ValueError:
                    d.skipped += 1
                    continue
                if "args" in r and "system" not in r:
                    if "program" in r:
                        program = r
                    else:
                        marker = r
                    continue
                if r.get("bench") in ("scale", "remote"):
                    prog = "scalebench" if r["bench"] == "scale" else "remotebench"
                    r["_args"] = program["args"] if program is not None and program["program"] == prog else None
                    (d.scale if r["bench"] == "scale" else d.remote).append(r)
                    continue
                if "system" not in r or "goodput_MBps" not in r:
                    d.skipped += 1
                    continue
                if marker is not None:
                    wl = workload_of(r, parse_args(marker["args"]))
                elif r["system"] == RAW and last_abcast is not None and \
                        (last_abcast.nodes, last_abcast.size, last_abcast.count) == (r["nodes"], r["size"], r["count"]):
                    wl = last_abcast
                else:
                    wl = workload_of(r, {})
                if r["system"] == "abcast":
                    last_abcast = wl
                key = (wl, r["system"], r.get("label", ""))
                seen[key] = seen.get(key, 0) + 1
                r["_wl"] = wl
                r["_rep"] = (path, marker["rep"]) if marker is not None and "rep" in marker else (path, seen[key])
                r["_load"] = float(marker["load"]) if marker is not None and "load" in marker else None
                d.runs.append(r)
    if d.skipped:
        print(f"benchdata: skipped {d.skipped} lines that are not results", file=sys.stderr)
    return d


def series_name(r):
    """Legend name: the system, and the build's label for abcast (before/after)."""
    name = SYSTEMS.get(r["system"], r["system"])
    if r.get("label") and r["system"] != RAW:
        name += f" ({r['label']})"
    return name


def series_order(name):
    base = list(SYSTEMS.values())
    for i, b in enumerate(base):
        if name == b or name.startswith(b + " ("):
            return (i, name)
    return (len(base), name)


def size_text(b):
    if b >= 1 << 20 and b % (1 << 20) == 0:
        return f"{b >> 20} MiB"
    if b >= 1 << 10 and b % (1 << 10) == 0:
        return f"{b >> 10} KiB"
    return f"{b} B"


def size_slug(b):
    return size_text(b).replace(" ", "")


def workload_text(wl):
    """Human description: N=4, 100 KiB × 500, all publishing, abort 0.5, 250/s per publisher."""
    s = f"N={wl.nodes}, {size_text(wl.size)} × {wl.count}, " + \
        ("all publishing" if wl.publishers == "all" else "one publisher")
    s += f", abort {wl.abort:g}" if wl.abort else ", no aborts"
    s += f", {wl.rate:g}/s per publisher" if wl.rate else ", unpaced"
    return s


def workload_flags(wl):
    """The flags both drivers were given for wl."""
    s = f"-nodes {wl.nodes} -size {wl.size} -count {wl.count} -publishers {wl.publishers}"
    if wl.abort:
        s += f" -abort-fraction {wl.abort:g}"
    if wl.rate:
        s += f" -rate {wl.rate:g}"
    return s


def median(xs):
    return statistics.median(xs)
