"""Draws the plots of issue 15 as SVG from the JSON lines of
examples/bench/run.sh (or compare.sh): stdlib only, no matplotlib.

    python3 examples/bench/plot.py [-o DIR] [--cdf SUBSTR]... [--abort F] FILE...
    python3 examples/bench/plot.py -selftest

Writes into DIR (default internal/docs/plots):
  goodput-<size>[-abort<f>][-rate<r>].svg  goodput vs N, abcast / GossipSub /
      raw quic-go, median over repetitions with min–max whiskers; solid
      lines all publishing, dashed one publisher;
  cdf-n<N>-<size>-x<count>-<publishers>[...].svg  delivery-latency CDF per
      system (the pointwise median of the runs' 101 percentiles), one per
      workload, or only those whose flags contain a --cdf substring;
  wire-abort<f>.svg  bytes on the wire and wasted bytes at abort fraction
      --abort (default 0.5), abcast vs GossipSub, grouped per workload;
  scale-heap.svg, scale-goroutines.svg, scale-cpu.svg  scalebench's
      per-node figures vs N.
A plot whose data is missing is skipped with a message on stderr.
"""
import argparse
import json
import math
import os
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from xml.sax.saxutils import escape, quoteattr

sys.dont_write_bytecode = True  # no __pycache__ beside the scripts
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchdata as bd  # noqa: E402

W, H = 640, 400
FONT = "Helvetica, Arial, sans-serif"
FIXED = {"abcast": "#1f77b4", "GossipSub": "#ff7f0e", "raw quic-go": "#2ca02c"}
EXTRA = ["#9467bd", "#d62728", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]


def text_width(s, size, bold=False):
    return (0.62 if bold else 0.57) * size * len(s)


def wrap(s, width, size, bold=False):
    lines, cur = [], ""
    for word in s.split(" "):
        cand = (cur + " " + word).strip()
        if cur and text_width(cand, size, bold) > width:
            lines.append(cur)
            cur = word
        else:
            cur = cand
    if cur:
        lines.append(cur)
    return lines


def fmt_num(v):
    if v == 0:
        return "0"
    if v == int(v):
        return f"{int(v):,}" if abs(v) >= 10000 else str(int(v))
    return f"{v:.3g}"


def fmt_value(v):
    """A bar's value label, in as few characters as its size allows."""
    if v == 0:
        return "0"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 1:
        return f"{v:.1f}"
    return f"{v:.2g}"


def colours(names):
    """One colour per series: the system's own, then the extras in order."""
    out, extra = {}, iter(EXTRA)
    ordered = sorted(set(names), key=bd.series_order)
    used = set()
    for n in ordered:
        if n in FIXED:
            out[n] = FIXED[n]
            used.add(n)
    for n in ordered:
        if n in out:
            continue
        base = n.split(" (")[0]
        if base in FIXED and base not in used:
            out[n] = FIXED[base]
            used.add(base)
        else:
            out[n] = next(extra, "#000000")
    return out


class Axis:
    """Maps data values to 0..1; linear from lo to hi or logarithmic."""

    def __init__(self, lo, hi, log=False, ticks=None, zero=True, n=5):
        self.log = log
        if log:
            lo_d, hi_d = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
            if hi_d == lo_d:
                hi_d += 1
            self.lo, self.hi = 10.0 ** lo_d, 10.0 ** hi_d
            decades = list(range(lo_d, hi_d + 1))
            mult = (1, 2, 5) if hi_d - lo_d <= 3 else (1,)
            self.ticks = [m * 10.0 ** d for d in decades for m in mult if m * 10.0 ** d <= self.hi]
        elif ticks is not None:
            self.lo, self.hi, self.ticks = lo, hi, ticks
        else:
            if zero:
                lo = min(0.0, lo)
            if hi <= lo:
                hi = lo + 1
            raw = (hi - lo) / n
            mag = 10 ** math.floor(math.log10(raw))
            step = next(m * mag for m in (1, 2, 2.5, 5, 10) if raw <= m * mag)
            self.lo = math.floor(lo / step + 1e-9) * step
            self.hi = math.ceil(hi / step - 1e-9) * step
            k = round((self.hi - self.lo) / step)
            self.ticks = [round(self.lo + i * step, 10) for i in range(k + 1)]

    def frac(self, v):
        if self.log:
            v = max(v, self.lo)
            return (math.log10(v) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        return (v - self.lo) / (self.hi - self.lo)


class Figure:
    """One 640×400 SVG: title, wrapped subtitle, plot area, axes with
    ticks, axis labels and a legend flowing in rows under the x label."""

    def __init__(self, title, subtitle, xlabel, ylabel, legend):
        self.title, self.xlabel, self.ylabel, self.legend = title, xlabel, ylabel, legend
        self.heads = wrap(title, W - 24, 15, bold=True)
        self.sub = wrap(subtitle, W - 24, 11)
        self.defs, self.body = [], []
        self.left, self.right = 72, W - 18
        self.sub_y = 22 + 18 * len(self.heads) - 2
        self.top = self.sub_y + 14 * len(self.sub) + 4
        self.rows = self._legend_rows()
        self.bottom = H - 46 - 16 * len(self.rows)

    def _legend_rows(self):
        rows, row, x = [], [], 0
        for item in self.legend:
            w = 30 + text_width(item[0], 11) + 16
            if row and x + w > W - 24:
                rows.append(row)
                row, x = [], 0
            row.append((item, x))
            x += w
        if row:
            rows.append(row)
        return rows

    def axes(self, xa, ya):
        self.xa, self.ya = xa, ya

    def px(self, v):
        return self.left + self.xa.frac(v) * (self.right - self.left)

    def py(self, v):
        return self.bottom - self.ya.frac(v) * (self.bottom - self.top)

    def add(self, s):
        self.body.append(s)

    def line(self, x1, y1, x2, y2, colour="#000", width=1, dash=None):
        d = f' stroke-dasharray="{dash}"' if dash else ""
        self.add(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{colour}" stroke-width="{width}"{d}/>')

    def text(self, x, y, s, size=11, anchor="start", weight="normal", rotate=None, colour="#000"):
        tr = f' transform="rotate({rotate} {x:.1f} {y:.1f})"' if rotate is not None else ""
        self.add(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
                 f'font-weight="{weight}" fill="{colour}"{tr}>{escape(s)}</text>')

    def polyline(self, pts, colour, width=2, dash=None):
        d = f' stroke-dasharray="{dash}"' if dash else ""
        p = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        self.add(f'<polyline points="{p}" fill="none" stroke="{colour}" stroke-width="{width}" stroke-linejoin="round"{d}/>')

    def marker(self, x, y, colour, filled=True):
        fill = colour if filled else "#fff"
        self.add(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{fill}" stroke="{colour}" stroke-width="1.5"/>')

    def whisker(self, x, y1, y2, colour):
        self.line(x, y1, x, y2, colour, 1.2)
        self.line(x - 4, y1, x + 4, y1, colour, 1.2)
        self.line(x - 4, y2, x + 4, y2, colour, 1.2)

    def rect(self, x, y, w, h, fill, stroke=None):
        s = f' stroke="{stroke}" stroke-width="1"' if stroke else ""
        self.add(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0):.1f}" height="{max(h, 0):.1f}" fill="{fill}"{s}/>')

    def hatch(self, colour):
        """A fill of diagonal stripes in colour, for the wasted share of a bar."""
        pid = "hatch" + colour.lstrip("#")
        if not any(pid in d for d in self.defs):
            self.defs.append(f'<pattern id="{pid}" patternUnits="userSpaceOnUse" width="6" height="6" '
                             f'patternTransform="rotate(45)"><rect width="6" height="6" fill="#fff"/>'
                             f'<line x1="0" y1="0" x2="0" y2="6" stroke="{colour}" stroke-width="3"/></pattern>')
        return f"url(#{pid})"

    def draw_frame(self, xticks=True):
        """Grid, axes, tick labels and axis titles (call before the data)."""
        for t in self.ya.ticks:
            y = self.py(t)
            self.line(self.left, y, self.right, y, "#e4e4e4")
            self.line(self.left - 4, y, self.left, y)
            self.text(self.left - 7, y + 4, fmt_num(t), 10, "end")
        if xticks:
            for t in self.xa.ticks:
                x = self.px(t)
                self.line(x, self.bottom, x, self.bottom + 4)
                self.text(x, self.bottom + 16, fmt_num(t), 10, "middle")
        self.line(self.left, self.top, self.left, self.bottom)
        self.line(self.left, self.bottom, self.right, self.bottom)
        cy = (self.top + self.bottom) / 2
        self.text(16, cy, self.ylabel, 11, "middle", rotate=-90)
        if self.xlabel:
            self.text((self.left + self.right) / 2, self.bottom + 32, self.xlabel, 11, "middle")

    def svg(self):
        leg = []  # first: a hatched swatch adds its pattern to defs
        for r, row in enumerate(self.rows):
            y = self.bottom + 50 + 16 * r
            for (label, colour, kind), x in row:
                x += 12
                if kind == "bar":
                    leg.append(f'<rect x="{x}" y="{y - 9}" width="22" height="10" fill="{colour}"/>')
                elif kind == "hatch":
                    leg.append(f'<rect x="{x}" y="{y - 9}" width="22" height="10" fill="{self.hatch(colour)}" stroke="{colour}"/>')
                else:
                    dash = ' stroke-dasharray="6,4"' if kind == "dash" else ""
                    leg.append(f'<line x1="{x}" y1="{y - 4}" x2="{x + 22}" y2="{y - 4}" stroke="{colour}" stroke-width="2"{dash}/>')
                leg.append(f'<text x="{x + 28}" y="{y}" font-size="11">{escape(label)}</text>')
        head = ['<?xml version="1.0" encoding="UTF-8"?>',
                f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
                f'font-family={quoteattr(FONT)}>',
                f'<title>{escape(self.title)}</title>',
                f'<rect width="{W}" height="{H}" fill="#fff"/>']
        if self.defs:
            head.append("<defs>" + "".join(self.defs) + "</defs>")
        top = [f'<text x="12" y="{22 + 18 * i}" font-size="15" font-weight="bold">{escape(s)}</text>'
               for i, s in enumerate(self.heads)]
        for i, s in enumerate(self.sub):
            top.append(f'<text x="12" y="{self.sub_y + 14 * i}" font-size="11" fill="#444">{escape(s)}</text>')
        return "\n".join(head + top + self.body + leg + ["</svg>", ""])

    def save(self, path):
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(self.svg())
        return path


def spread(vals):
    return bd.median(vals), min(vals), max(vals)


def n_axis(ns):
    lo, hi = min(ns), max(ns)
    pad = max(1.0, 0.08 * (hi - lo))
    return Axis(lo - pad, hi + pad, ticks=sorted(set(ns)))


def programs(names):
    """Which drivers made the named series: bench [-baseline] and/or gossipbench."""
    progs = []
    if any(not n.startswith("GossipSub") for n in names):
        progs.append("bench" + (" -baseline" if "raw quic-go" in names else ""))
    if any(n.startswith("GossipSub") for n in names):
        progs.append("gossipbench")
    return " and ".join(progs)


def runs_text(counts):
    """How many runs a median is over: "3 runs", or "up to 6 runs" when the points differ."""
    hi = max(counts)
    return ("" if min(counts) == hi else "up to ") + f"{hi} run" + ("" if hi == 1 else "s")


def joined(vals):
    return "/".join(fmt_num(v) for v in vals)


# --- goodput vs N ---------------------------------------------------------

def goodput_plots(data, outdir):
    groups = defaultdict(list)
    for r in data.runs:
        wl = r["_wl"]
        groups[(wl.size, wl.abort, wl.rate)].append(r)
    files = []
    for (size, abort, rate), runs in sorted(groups.items()):
        series = defaultdict(lambda: defaultdict(list))  # (name, publishers) -> N -> [goodput]
        counts = {}
        for r in runs:
            wl = r["_wl"]
            pub = "one" if r["system"] == bd.RAW else wl.publishers
            series[(bd.series_name(r), pub)][wl.nodes].append(r["goodput_MBps"])
            counts[wl.nodes] = counts.get(wl.nodes, set()) | {wl.count}
        keys = sorted(series, key=lambda k: (bd.series_order(k[0]), k[1] != "all"))
        col = colours(k[0] for k in keys)
        legend = []
        for name, pub in keys:
            if name == "raw quic-go":
                label = "raw quic-go, one sender to N−1"
            else:
                label = f"{name}, " + ("all publishing" if pub == "all" else "one publisher")
            legend.append((label, col[name], "line" if pub == "all" else "dash"))
        ns = sorted({n for k in keys for n in series[k]})
        reps = [len(v) for k in keys for v in series[k].values()]
        title = f"Goodput vs N, {bd.size_text(size)} payloads" + (f", abort {abort:g}" if abort else "") + \
            (f", {rate:g}/s per publisher" if rate else "")
        pubs = "|".join(sorted({k[1] for k in keys if k[0] != "raw quic-go"}, key=lambda p: p != "one")) or "one"
        cs = [joined(sorted(counts[n])) for n in ns]
        flags = f"-nodes {joined(ns)} -size {size} -count {cs[0] if len(set(cs)) == 1 else '/'.join(cs)} -publishers {pubs}"
        flags += (f" -abort-fraction {abort:g}" if abort else "") + (f" -rate {rate:g}" if rate else "")
        sub = f"{programs({k[0] for k in keys})} {flags}; " \
              f"median of {runs_text(reps)}, whiskers min–max; MB = 10^6 B of payload delivered to receivers"
        top = max(v for k in keys for vs in series[k].values() for v in vs)
        fig = Figure(title, sub, "subnet size N (nodes)", "goodput (MB/s)", legend)
        fig.axes(n_axis(ns), Axis(0, top * 1.05))
        fig.draw_frame()
        for i, key in enumerate(keys):
            name, pub = key
            dx = (i - (len(keys) - 1) / 2) * 5
            pts = []
            for n in sorted(series[key]):
                med, lo, hi = spread(series[key][n])
                x = fig.px(n) + dx
                fig.whisker(x, fig.py(lo), fig.py(hi), col[name])
                pts.append((x, fig.py(med)))
            fig.polyline(pts, col[name], dash=None if pub == "all" else "6,4")
            for x, y in pts:
                fig.marker(x, y, col[name], filled=pub == "all")
        tag = f"goodput-{bd.size_slug(size)}" + (f"-abort{abort:g}" if abort else "") + (f"-rate{rate:g}" if rate else "")
        files.append(fig.save(os.path.join(outdir, tag + ".svg")))
    if not groups:
        skip("goodput", "no broadcast results")
    return files


# --- latency CDF ----------------------------------------------------------

def cdf_plots(data, outdir, only=()):
    groups = defaultdict(lambda: defaultdict(list))  # workload -> name -> [cdf]
    lacking = set()
    for r in data.runs:
        cdf = r.get("latency_cdf_ms")
        if isinstance(cdf, list) and len(cdf) == 101:
            groups[r["_wl"]][bd.series_name(r)].append(cdf)
        else:
            lacking.add(r["_wl"])
    files = []
    if lacking - set(groups):
        skip(f"the CDFs of {len(lacking - set(groups))} workloads", "no latency_cdf_ms in their results")
    for wl, by in sorted(groups.items()):
        flags = bd.workload_flags(wl)
        if only and not any(s in flags for s in only):
            continue
        names = sorted(by, key=bd.series_order)
        col = colours(names)
        curves = {n: [bd.median(c[p] for c in by[n]) for p in range(101)] for n in names}
        vals = [v for c in curves.values() for v in c]
        pos = [v for v in vals if v > 0]
        log = bool(pos) and max(vals) / min(pos) >= 20
        xa = Axis(min(pos), max(vals), log=True) if log else Axis(0, max(vals) or 1)
        legend = [(n + (" (stream round trip)" if n == "raw quic-go" else ""), col[n], "line") for n in names]
        reps = [len(v) for v in by.values()]
        title = "Delivery latency CDF: " + bd.workload_text(wl)
        sub = f"{programs(by)} {flags}; pointwise median of the percentiles of {runs_text(reps)}; " \
              "latency from the publish call to the consumer's delivery, per artifact and receiver"
        fig = Figure(title, sub, "delivery latency (ms" + (", log scale)" if log else ")"),
                     "deliveries at or below (%)", legend)
        fig.axes(xa, Axis(0, 100, ticks=[0, 25, 50, 75, 100]))
        fig.draw_frame()
        for n in names:
            fig.polyline([(fig.px(v), fig.py(p)) for p, v in enumerate(curves[n])], col[n])
        tag = f"cdf-n{wl.nodes}-{bd.size_slug(wl.size)}-x{wl.count}-{wl.publishers}" + \
            (f"-abort{wl.abort:g}" if wl.abort else "") + (f"-rate{wl.rate:g}" if wl.rate else "")
        files.append(fig.save(os.path.join(outdir, tag + ".svg")))
    return files


# --- bytes on the wire at an abort fraction -------------------------------

def wire_plots(data, outdir, abort=0.5, per_chart=6):
    groups = defaultdict(lambda: defaultdict(list))  # workload -> name -> [run]
    for r in data.runs:
        if r["_wl"].abort == abort and r["system"] in ("abcast", "gossipsub"):
            groups[r["_wl"]][bd.series_name(r)].append(r)
    if not groups:
        skip(f"wire at abort {abort:g}", "no abcast or GossipSub results at that abort fraction")
        return []
    wls = sorted(groups, key=lambda w: (w.nodes, w.size, w.count, w.publishers, w.rate))
    names = sorted({n for w in wls for n in groups[w]}, key=bd.series_order)
    col = colours(names)
    files = []
    for part in range(0, len(wls), per_chart):
        chunk = wls[part:part + per_chart]
        bars = []  # (workload index, name, metric, median, lo, hi)
        for gi, wl in enumerate(chunk):
            for n in names:
                rs = groups[wl].get(n)
                if rs:
                    for metric in ("wire_MB", "wasted_MB"):
                        bars.append((gi, n, metric) + spread([r[metric] for r in rs]))
        pos = [v for b in bars for v in b[3:] if v > 0]
        log = bool(pos) and max(pos) / min(pos) >= 20
        ya = Axis(min(pos), max(pos), log=True) if log else Axis(0, max(pos, default=1) * 1.1)
        legend = []
        for n in names:
            legend += [(f"{n} on the wire", col[n], "bar"), (f"{n} wasted on aborted artifacts", col[n], "hatch")]
        title = f"Bytes on the wire at abort fraction {abort:g}"
        flags = "; ".join(bd.workload_flags(w).replace(f" -abort-fraction {abort:g}", "") for w in chunk)
        reps = [len(rs) for w in chunk for rs in groups[w].values()]
        sub = f"{programs(names)} -abort-fraction {abort:g} with {flags}; median of {runs_text(reps)}, " \
              "whiskers min–max; MB = 10^6 B of UDP payload sent by all nodes"
        fig = Figure(title, sub, "", "MB sent" + (" (log scale)" if log else ""), legend)
        fig.axes(Axis(0, len(chunk), ticks=[]), ya)
        fig.draw_frame(xticks=False)
        slot = (fig.right - fig.left) / len(chunk)
        per = 2 * len(names)
        bw = min(26.0, slot * 0.8 / per)
        for gi, wl in enumerate(chunk):
            cx = fig.left + slot * (gi + 0.5)
            fig.text(cx, fig.bottom + 14, f"N={wl.nodes}, {bd.size_text(wl.size)} × {wl.count}", 10, "middle")
            fig.text(cx, fig.bottom + 25, ("all publishing" if wl.publishers == "all" else "one publisher") +
                     (f", {wl.rate:g}/s" if wl.rate else ""), 9, "middle", colour="#555")
        base = fig.py(ya.lo)
        for gi, n, metric, med, lo, hi in bars:
            k = names.index(n) * 2 + (metric == "wasted_MB")
            x = fig.left + slot * (gi + 0.5) + (k - per / 2) * bw
            y = fig.py(med) if med > 0 else base - 1
            fill = col[n] if metric == "wire_MB" else fig.hatch(col[n])
            fig.rect(x + 1, y, bw - 2, base - y, fill, col[n])
            if hi > lo:
                fig.whisker(x + bw / 2, fig.py(max(lo, ya.lo)), fig.py(hi), "#333")
            label_y = min(y, fig.py(hi)) - 4
            fig.text(x + bw / 2 + 3, label_y, fmt_value(med), 9, "start", rotate=-90)
        tag = f"wire-abort{abort:g}" + (f"-{part // per_chart + 1}" if len(wls) > per_chart else "")
        files.append(fig.save(os.path.join(outdir, tag + ".svg")))
    return files


# --- scalebench -----------------------------------------------------------

SCALE = [
    ("heap", "heap per node (MiB)", [("peak_heap_per_node_MB", "peak heap objects"),
                                     ("peak_live_per_node_MB", "peak live heap"),
                                     ("idle_heap_per_node_MB", "idle heap (after GC)")]),
    ("goroutines", "goroutines per node", [("peak_goroutines_per_node", "peak"),
                                           ("idle_goroutines_per_node", "idle")]),
    ("cpu", "CPU per delivered artifact (µs)", [("cpu_us_per_delivery", "CPU (user + system)")]),
]


def scale_plots(data, outdir):
    if not data.scale:
        skip("scale", "no scalebench results")
        return []
    shapes = defaultdict(list)
    for r in data.scale:
        shapes[(tuple(r.get("rates", [])), r.get("phase_s"), r.get("latency_ms"), r.get("loss"),
                r.get("lifetime_s"), r.get("down_s"), r.get("seed"))].append(r)
    files = []
    for si, (shape, rs) in enumerate(sorted(shapes.items(), key=lambda kv: str(kv[0]))):
        rates, phase, lat, loss, life, down, seed = shape
        labels = sorted({r.get("label", "") for r in rs})
        ns = sorted({r["nodes"] for r in rs})
        recorded = {r.get("_args") for r in rs}
        cmd = f"scalebench {recorded.pop()}" if len(recorded) == 1 and None not in recorded else \
            f"scalebench -nodes {','.join(map(str, ns))}"
        flags = f"{cmd} (rates {','.join(map(str, rates))}/s per node, {fmt_num(phase)} s steps, {fmt_num(lat)} ms one-way, " \
                f"loss {fmt_num(loss)}, lifetime {fmt_num(life)} s, down {fmt_num(down)} s, seed {seed})"
        conv = all(r.get("converged") for r in rs)
        for tag, ylabel, metrics in SCALE:
            names, pts = [], {}
            for label in labels:
                for field, what in metrics:
                    name = what + (f" ({label})" if label else "")
                    by = defaultdict(list)
                    for r in rs:
                        if r.get("label", "") == label and field in r:
                            by[r["nodes"]].append(r[field])
                    if by:
                        names.append(name)
                        pts[name] = by
            if not names:
                skip(f"scale {tag}", "no such fields")
                continue
            col = dict(zip(names, [FIXED["abcast"], "#9467bd", "#17becf", "#d62728", "#8c564b", "#7f7f7f"] * 3))
            title = f"Footprint vs N: {ylabel.split(' (')[0]}, scalebench replay shape"
            sub = f"{flags}; every node in one process, process figure ÷ N" + \
                  ("" if conv else "; NOT every run converged") + "; whiskers min–max over runs"
            fig = Figure(title, sub, "subnet size N (nodes)", ylabel, [(n, col[n], "line") for n in names])
            top = max(v for n in names for vs in pts[n].values() for v in vs)
            fig.axes(n_axis(ns), Axis(0, top * 1.05))
            fig.draw_frame()
            for i, n in enumerate(names):
                dx = (i - (len(names) - 1) / 2) * 4
                line = []
                for x in sorted(pts[n]):
                    med, lo, hi = spread(pts[n][x])
                    fig.whisker(fig.px(x) + dx, fig.py(lo), fig.py(hi), col[n])
                    line.append((fig.px(x) + dx, fig.py(med)))
                fig.polyline(line, col[n])
                for x, y in line:
                    fig.marker(x, y, col[n])
            suffix = f"-{si + 1}" if len(shapes) > 1 else ""
            files.append(fig.save(os.path.join(outdir, f"scale-{tag}{suffix}.svg")))
    return files


SKIPPED = []
QUIET = False


def skip(what, why):
    SKIPPED.append(what)
    if not QUIET:
        print(f"plot: skipped {what}: {why}", file=sys.stderr)


def render(paths, outdir, only=(), abort=0.5):
    data = bd.load(paths)
    os.makedirs(outdir, exist_ok=True)
    files = goodput_plots(data, outdir) + cdf_plots(data, outdir, only) + \
        wire_plots(data, outdir, abort) + scale_plots(data, outdir)
    for f in files:
        check_svg(f)
    return files


# --- validation and self-test ---------------------------------------------

NS = "{http://www.w3.org/2000/svg}"


def check_svg(path):
    """Parses path as XML and checks it is a 640×400 SVG with a title and
    every coordinate finite and inside the canvas; raises ValueError."""
    root = ET.parse(path).getroot()
    if root.tag != NS + "svg" or root.get("width") != str(W) or root.get("height") != str(H):
        raise ValueError(f"{path}: not a {W}×{H} SVG")
    if not (root.findtext(NS + "title") or "").strip():
        raise ValueError(f"{path}: no title")
    for el in root.iter():
        if el.tag == NS + "pattern":
            continue
        coords = [el.get(a) for a in ("x", "y", "x1", "y1", "x2", "y2", "cx", "cy") if el.get(a) is not None]
        if el.get("points"):
            coords += el.get("points").replace(",", " ").split()
        for c in coords:
            v = float(c)
            if not math.isfinite(v) or v < -1 or v > max(W, H) + 1:
                raise ValueError(f"{path}: coordinate {c} of <{el.tag[len(NS):]}> outside the canvas")
    return root


def sample_lines():
    """A small run.sh output: markers, two repetitions, every system, a
    paced and an aborted workload, scalebench and remotebench lines."""
    def cdf(scale):
        return [round(scale * (0.2 + 1.8 * (p / 100) ** 2), 2) for p in range(101)]

    def res(system, n, size, count, pub, good, wire=0.0, wasted=0.0, abort=0.0, label=None, with_cdf=True):
        r = {"system": system, "nodes": n, "size": size, "count": count, "publishers": pub, "abort_fraction": abort,
             "seconds": 1.0, "goodput_MBps": good, "msgs_per_s": good * 1e6 / size, "latency_p50_ms": 10.0,
             "latency_p99_ms": 30.0, "missing": 0, "duplicates": 0, "wire_MB": wire, "wasted_MB": wasted,
             "peak_heap_MB": 50.0}
        if label:
            r["label"] = label
        if with_cdf:
            r["latency_cdf_ms"] = cdf(1000 / good)
        return json.dumps(r)

    out = []
    for rep in (1, 2):
        for n, count in ((4, 500), (7, 250), (13, 120)):
            for pub in ("one", "all"):
                args = f"-nodes {n} -size 102400 -count {count} -publishers {pub}"
                out.append(json.dumps({"load": "0.5", "rep": rep, "args": args}))
                out.append(res("abcast", n, 102400, count, pub, 200 - 5 * n + rep))
                out.append(res("quic-go-fanout", n, 102400, count, "one", 300 + rep))
                out.append(res("gossipsub", n, 102400, count, pub, 60 - n + rep, with_cdf=False))
        out.append(json.dumps({"load": "0.5", "rep": rep, "args": "-nodes 4 -size 1024 -count 2000 -rate 250 -publishers all"}))
        out.append(res("abcast", 4, 1024, 2000, "all", 2.0 + rep))
        out.append(res("gossipsub", 4, 1024, 2000, "all", 0.8))
        for n, size, count in ((4, 1024, 5000), (13, 102400, 500)):
            args = f"-nodes {n} -size {size} -count {count} -publishers all -abort-fraction 0.5"
            out.append(json.dumps({"load": "0.5", "rep": rep, "args": args}))
            out.append(res("abcast", n, size, count, "all", 15.0, wire=10.9 * n, wasted=0.0 if rep == 1 else 0.003, abort=0.5))
            out.append(res("gossipsub", n, size, count, "all", 5.0, wire=52.4 * n, wasted=23.3 * n, abort=0.5))
    out.append("GOMAXPROCS=2 linux/amd64 (a text line, ignored)")
    out.append(json.dumps({"load": "0.5", "rep": 1, "program": "scalebench", "args": "-nodes 13,31,51 -phase 10s"}))
    for n, heap, gor in ((13, 60.0, 185.0), (31, 90.0, 420.0), (51, 120.0, 900.0)):
        out.append(json.dumps({"bench": "scale", "system": "abcast", "nodes": n, "seed": 1, "rates": [1, 10, 50],
                               "phase_s": 10, "latency_ms": 50, "loss": 0, "lifetime_s": 10, "down_s": 30,
                               "converged": True, "peak_heap_per_node_MB": heap, "peak_live_per_node_MB": heap / 2,
                               "idle_heap_per_node_MB": heap / 10, "peak_goroutines_per_node": gor,
                               "idle_goroutines_per_node": gor / 2, "cpu_us_per_delivery": 40.0,
                               "deliveries": 1000 * n, "latency_100B_p50_ms": 50, "latency_100B_p99_ms": 100}))
    out.append("PASS")
    for impl, rate in (("quic", 1.05e6), ("grpc", 1.17e6)):
        out.append(json.dumps({"bench": "remote", "system": impl, "n": 1000000, "round": 10000, "rt": 3000,
                               "one_way_msgs_per_s": rate, "cpu_us_per_msg": 1.8, "allocs_per_msg": 2,
                               "rt_p50_us": 185.0, "rt_p99_us": 320.0, "rt_per_s": 5000.0, "cpu_us_per_rt": 30.0}))
    # Issue 8's format: no markers, the baseline right after abcast.
    legacy = [res("abcast", 4, 1048576, 100, "all", 220.0, wire=150.0, wasted=0.002, abort=0.5, with_cdf=False),
              res("quic-go-fanout", 4, 1048576, 100, "one", 330.0, with_cdf=False),
              res("gossipsub", 4, 1048576, 100, "all", 67.0, wire=500.0, wasted=283.0, abort=0.5, with_cdf=False)]
    return out, legacy


def selftest():
    global QUIET
    QUIET = True
    lines, legacy = sample_lines()
    with tempfile.TemporaryDirectory() as tmp:
        a, b = os.path.join(tmp, "run.jsonl"), os.path.join(tmp, "legacy.jsonl")
        with open(a, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        with open(b, "w") as fh:
            fh.write("\n".join(legacy) + "\n")
        out = os.path.join(tmp, "svg")
        files = {os.path.basename(f): f for f in render([a, b], out)}
        want = {"goodput-100KiB.svg", "goodput-1KiB-rate250.svg", "goodput-1KiB-abort0.5.svg",
                "goodput-1MiB-abort0.5.svg", "goodput-100KiB-abort0.5.svg",
                "cdf-n4-100KiB-x500-one.svg", "cdf-n13-100KiB-x120-all.svg", "cdf-n4-1KiB-x2000-all-rate250.svg",
                "wire-abort0.5.svg", "scale-heap.svg", "scale-goroutines.svg", "scale-cpu.svg"}
        missing = want - set(files)
        assert not missing, f"missing plots {sorted(missing)}, got {sorted(files)}"
        assert "cdf-n4-1MiB-x100-all-abort0.5.svg" not in files, "a CDF was drawn for results without latency_cdf_ms"

        def texts(name):
            root = ET.parse(files[name]).getroot()
            return root, ["".join(t.itertext()) for t in root.iter(NS + "text")]

        root, t = texts("goodput-100KiB.svg")
        assert any("Goodput vs N, 100 KiB" in s for s in t), t
        assert any("-nodes 4/7/13" in s and "-count 500/250/120" in s for s in t), t
        assert "goodput (MB/s)" in t and "subnet size N (nodes)" in t, t
        # abcast and GossipSub, one and all publishing, and one raw line.
        assert len(root.findall(f".//{NS}polyline")) == 5, "goodput: want 5 series"
        for label in ("abcast, all publishing", "GossipSub, one publisher", "raw quic-go, one sender to N−1"):
            assert label in t, (label, t)
        strokes = {p.get("stroke") for p in root.findall(f".//{NS}polyline")}
        assert strokes == {FIXED["abcast"], FIXED["GossipSub"], FIXED["raw quic-go"]}, strokes

        root, t = texts("cdf-n4-100KiB-x500-one.svg")
        assert len(root.findall(f".//{NS}polyline")) == 2, "cdf: abcast and raw (GossipSub has no CDF here)"
        assert any("N=4, 100 KiB × 500, one publisher" in s for s in t), t
        assert any("ms, log scale" in s for s in t) or "delivery latency (ms)" in t, t

        root, t = texts("wire-abort0.5.svg")
        assert len(root.findall(f".//{NS}rect")) >= 1 + 3 * 4, "wire: 3 workloads × 4 bars"
        assert "GossipSub wasted on aborted artifacts" in t and "N=4, 1 MiB × 100" in t, t

        root, t = texts("scale-heap.svg")
        assert len(root.findall(f".//{NS}polyline")) == 3, "scale heap: peak, live, idle"
        assert any("scalebench -nodes 13,31,51 -phase 10s (rates 1,10,50/s" in s for s in t), t

        # Goodput from issue 8's format: the baseline joins abcast's abort-0.5 workload.
        root, t = texts("goodput-1MiB-abort0.5.svg")
        assert "raw quic-go, one sender to N−1" in t, t

        # Results lacking everything but goodput: plots are skipped, not errors.
        c = os.path.join(tmp, "bare.jsonl")
        with open(c, "w") as fh:
            fh.write(legacy[1] + "\n")
        del SKIPPED[:]
        bare = render([c], os.path.join(tmp, "bare"))
        assert [os.path.basename(f) for f in bare] == ["goodput-1MiB.svg"], bare
        assert len(SKIPPED) == 3 and SKIPPED[0].startswith("the CDFs of 1 ") and \
            SKIPPED[1].startswith("wire") and SKIPPED[2] == "scale", SKIPPED
    print(f"plot selftest: ok ({len(files)} SVGs checked)")


def main():
    root = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="*", help="JSON lines of run.sh, compare.sh, scalebench or remotebench -json")
    ap.add_argument("-o", "--out", default=os.path.join(root, "internal", "docs", "plots"), help="directory for the SVGs")
    ap.add_argument("--cdf", action="append", default=[], metavar="SUBSTR",
                    help="draw CDFs only for workloads whose flags contain SUBSTR (repeatable)")
    ap.add_argument("--abort", type=float, default=0.5, help="abort fraction of the wire plot")
    ap.add_argument("-selftest", action="store_true", help="render an embedded sample, validate it, and exit")
    a = ap.parse_args()
    if a.selftest:
        selftest()
        return
    if not a.files:
        ap.error("no input files")
    for f in render(a.files, a.out, a.cdf, a.abort):
        print(f)


if __name__ == "__main__":
    main()
