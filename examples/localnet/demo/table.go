package demo

import (
	"bytes"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"
)

func (r *run) printf(format string, args ...any) {
	r.outMu.Lock()
	defer r.outMu.Unlock()
	fmt.Fprintf(r.o.Out, format, args...)
}

// event prints a timestamped line between table rows.
func (r *run) event(format string, args ...any) {
	r.printf("%7s  ** %s\n", r.elapsed(), fmt.Sprintf(format, args...))
}

func (r *run) elapsed() string {
	return fmt.Sprintf("%.1fs", time.Since(r.start).Seconds())
}

func (r *run) printHeader() {
	r.printf(`
columns, per node: peers connected; artifacts it published, has live, and
aborted; artifacts of others delivered to it and withdrawn from it; bytes it
sent (slot updates and fetches served); downloads running; live artifacts of
others it does not hold yet; delivery latency p50/p99 over the last interval.

`)
}

// printTable prints one row per node.
func (r *run) printTable() {
	missing := r.pending().perNode
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "%s\tnode\tpeers\tpublished\tlive\taborted\tdelivered\twithdrawn\tsent\tfetching\tmissing\tp50\tp99\t\n", r.elapsed())
	for _, m := range r.members {
		live, fetching := 0, 0
		var sent uint64
		for _, ch := range m.chans {
			st := ch.Stats()
			live += st.Live
			fetching += st.ActiveFetches
			sent += st.UpdateBytesSent + st.FetchBytesServed
		}
		v := m.sink.view(true)
		fmt.Fprintf(tw, "\t%s\t%d/%d\t%d\t%d\t%d\t%d\t%d\t%s\t%d\t%d\t%s\t%s\t\n",
			m.name(), len(m.node.Transport().Peers()), len(r.members)-1,
			m.published.Load(), live, m.aborted.Load(), v.delivered, v.withdrawn,
			FormatBytes(sent), fetching, missing[m.idx], fmtLatency(v.window, 0.5), fmtLatency(v.window, 0.99))
	}
	tw.Flush()
	if cuts := r.cutLinks(); cuts != "" {
		fmt.Fprintf(&buf, "%7s  cut links: %s\n", "", cuts)
	}
	r.printf("%s", buf.String())
}

func (r *run) cutLinks() string {
	r.cutMu.Lock()
	defer r.cutMu.Unlock()
	var parts []string
	for l := range r.cuts {
		parts = append(parts, fmt.Sprintf("%d-%d", l[0], l[1]))
	}
	return strings.Join(parts, " ")
}
