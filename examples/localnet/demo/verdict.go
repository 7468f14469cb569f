package demo

import (
	"bytes"
	"fmt"
	"slices"
	"text/tabwriter"
	"time"
)

// Verdict is the outcome of a run.
type Verdict struct {
	// Published and Aborted count artifacts over every node and channel;
	// Final = Published - Aborted are the ones G1 promises to everyone.
	Published, Aborted, Final int
	// Receivers is the number of nodes each artifact must reach (all but
	// its publisher).
	Receivers int
	// Missing lists (artifact, node) pairs where a non-aborted artifact
	// was not delivered; Duplicates where one was delivered more than
	// once; Corrupt payloads that do not match their id (and stray
	// withdrawals); StillHeld aborted artifacts a node never saw withdrawn.
	Missing, Duplicates, Corrupt, StillHeld []string
	// Deliveries in total, and latency percentiles over all of them.
	Deliveries       uint64
	P50, P99, MaxLat time.Duration
	// Restarts and DeadLetters summed over the nodes' actor systems.
	Restarts, DeadLetters uint64
	// Recoveries describes each healed link: when it reconnected and when
	// both sides held what the other had published.
	Recoveries []string
	// G1 (delivered exactly once), G2 (payloads intact, no duplicates)
	// and G3 (aborted artifacts withdrawn everywhere) hold.
	G1, G2, G3 bool
	// OK: all of them.
	OK bool
}

func (r *run) verdict() *Verdict {
	v := &Verdict{Receivers: len(r.members) - 1}
	r.ledgerMu.Lock()
	keys := make([]key, 0, len(r.ledger))
	for k := range r.ledger {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b key) int {
		if a.ch != b.ch {
			return cmpStr(a.ch, b.ch)
		}
		return cmpStr(string(a.id), string(b.id))
	})
	for _, k := range keys {
		rec := r.ledger[k]
		v.Published++
		if rec.aborted {
			v.Aborted++
		}
		for _, m := range r.members {
			if m.idx == rec.publisher {
				continue
			}
			n, held := m.sink.count(k), m.sink.holds(k)
			switch {
			case n > 1:
				v.Duplicates = append(v.Duplicates, fmt.Sprintf("%s delivered %d times at %s", k, n, m.name()))
			case !rec.aborted && (n == 0 || !held):
				v.Missing = append(v.Missing, fmt.Sprintf("%s not held by %s (%d deliveries)", k, m.name(), n))
			case rec.aborted && held:
				v.StillHeld = append(v.StillHeld, fmt.Sprintf("%s aborted but still held by %s", k, m.name()))
			}
		}
	}
	r.ledgerMu.Unlock()
	v.Final = v.Published - v.Aborted
	r.recMu.Lock()
	v.Recoveries = slices.Clone(r.recoveries)
	r.recMu.Unlock()
	var all []time.Duration
	for _, m := range r.members {
		sv := m.sink.view(false)
		v.Deliveries += sv.delivered
		all = append(all, sv.all...)
		for _, p := range sv.problems {
			v.Corrupt = append(v.Corrupt, m.name()+": "+p)
		}
		st := m.node.Stats()
		v.Restarts += st.Restarts
		v.DeadLetters += st.DeadLetters
	}
	v.P50, v.P99 = percentile(all, 0.5), percentile(all, 0.99)
	if len(all) > 0 {
		v.MaxLat = slices.Max(all)
	}
	v.G1 = len(v.Missing) == 0 && len(v.Duplicates) == 0
	v.G2 = len(v.Corrupt) == 0 && len(v.Duplicates) == 0
	v.G3 = len(v.StillHeld) == 0
	v.OK = v.G1 && v.G2 && v.G3 && v.Final > 0
	return v
}

func cmpStr(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (r *run) printSummary(v *Verdict) {
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "\nsummary after %s:\n", r.elapsed())
	tw := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "\tnode\tpublished\taborted\tdelivered\twithdrawn\tsent\tp50\tp99\tdropped pkts\trestarts\t\n")
	for _, m := range r.members {
		var sent uint64
		for _, ch := range m.chans {
			st := ch.Stats()
			sent += st.UpdateBytesSent + st.FetchBytesServed
		}
		sv := m.sink.view(false)
		var dropped uint64
		for _, o := range r.members {
			dropped += r.net.LinkStats(m.addr, o.addr).DroppedCut
		}
		fmt.Fprintf(tw, "\t%s\t%d\t%d\t%d\t%d\t%s\t%s\t%s\t%d\t%d\t\n", m.name(), m.published.Load(), m.aborted.Load(),
			sv.delivered, sv.withdrawn, FormatBytes(sent), fmtLatency(sv.all, 0.5), fmtLatency(sv.all, 0.99), dropped, m.node.Stats().Restarts)
	}
	tw.Flush()
	fmt.Fprintf(&buf, "\n%d artifacts published, %d aborted, %d final; %d deliveries, latency p50 %v, p99 %v, max %v\n",
		v.Published, v.Aborted, v.Final, v.Deliveries, v.P50.Round(time.Millisecond), v.P99.Round(time.Millisecond), v.MaxLat.Round(time.Millisecond))
	check := func(ok bool, name, good string, bad []string) {
		word := "PASS"
		if !ok {
			word = "FAIL"
		}
		fmt.Fprintf(&buf, "  %s  %s: %s\n", word, name, good)
		for i, b := range bad {
			if i == 10 {
				fmt.Fprintf(&buf, "        ... and %d more\n", len(bad)-10)
				break
			}
			fmt.Fprintf(&buf, "        %s\n", b)
		}
	}
	check(v.G1, "G1 delivery", fmt.Sprintf("each of the %d non-aborted artifacts delivered exactly once to each of the other %d nodes", v.Final, v.Receivers), append(slices.Clone(v.Missing), v.Duplicates...))
	check(v.G2, "G2 integrity", "every delivered payload is the one published under its id; no duplicates", append(slices.Clone(v.Corrupt), v.Duplicates...))
	check(v.G3, "G3 abort", fmt.Sprintf("none of the %d aborted artifacts is still held anywhere", v.Aborted), v.StillHeld)
	if v.Final == 0 {
		fmt.Fprintf(&buf, "  FAIL  nothing was left to deliver: the workload published no final artifact\n")
	}
	if v.OK {
		fmt.Fprintf(&buf, "verdict: PASS\n")
	} else {
		fmt.Fprintf(&buf, "verdict: FAIL\n")
	}
	r.printf("%s", buf.String())
}
