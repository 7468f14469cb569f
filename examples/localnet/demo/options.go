// Package demo runs a local abcast subnet in one process: several nodes
// over real QUIC and mutual TLS on loopback, a consensus-like workload of
// blocks and signatures that newer heights make obsolete, link cuts on a
// schedule or on command, a live per-node table, and a final verdict on
// the broadcast guarantees. examples/localnet is its command line; the
// test suite calls Run directly.
package demo

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/abcast/abcast/quicremote/transport"
)

// Options configure one run. Zero fields take the defaults of
// DefaultOptions.
type Options struct {
	// Nodes is the subnet size (at least 2).
	Nodes int
	// Duration is how long the workload publishes; afterwards every cut
	// link is healed and the run waits up to Settle for the subnet to
	// converge before judging it.
	Duration time.Duration
	Settle   time.Duration
	// MinSize and MaxSize bound payload sizes in bytes. Blocks are drawn
	// log-uniformly from the range (most small, a few large, as in a real
	// chain); signatures are MinSize. Payloads below about 1 KiB are pushed
	// with their slot update, larger ones advertised and fetched.
	MinSize, MaxSize int
	// Rate is heights per second per node: at each height a node publishes
	// a block and a signature.
	Rate float64
	// Keep is how many recent heights each node keeps live; older blocks
	// and signatures are obsolete and aborted.
	Keep int
	// ReproposeEvery: every n-th height a node publishes a second block
	// that supersedes its first one at once (the first is aborted, often
	// mid-transfer). 0 never.
	ReproposeEvery int
	// Faults is the link-cut schedule; see ParseFaults.
	Faults []FaultStep
	// Interval between table rows; default 1 s.
	Interval time.Duration
	// Out receives the table and the verdict; nil discards them.
	Out io.Writer
	// Commands, if set, is read line by line for interactive faults:
	// "cut A B", "heal A B", "heal" (every link), "quit" (end the workload
	// early). The first letter suffices.
	Commands io.Reader
	// Log receives the nodes' logs.
	Log zerolog.Logger
	// Transport configures every node's QUIC transport; the zero value
	// means DefaultOptions' (quicremote defaults with a reconnect backoff
	// capped at 2 s so a healed link comes back quickly).
	Transport transport.Config
	// KeepCuts leaves cut links cut after the workload, so the verdict
	// must fail; tests use it to check that the verdict can.
	KeepCuts bool
	// Seed makes sizes and re-proposals reproducible.
	Seed uint64
}

// DefaultOptions is what `go run ./examples/localnet` runs.
func DefaultOptions() Options {
	tcfg := transport.DefaultConfig()
	tcfg.ReconnectBackoffMax = 2 * time.Second
	faults, _ := ParseFaults(DefaultFaults)
	return Options{
		Nodes:          4,
		Duration:       20 * time.Second,
		Settle:         60 * time.Second,
		MinSize:        200,
		MaxSize:        2 << 20,
		Rate:           2,
		Keep:           3,
		ReproposeEvery: 4,
		Faults:         faults,
		Interval:       time.Second,
		Transport:      tcfg,
		Log:            zerolog.Nop(),
		Seed:           1,
	}
}

// DefaultFaults cuts the link between nodes 0 and 1 for longer than the
// transport's idle timeout (5 s), so the connection dies and must be
// re-established, then heals it.
const DefaultFaults = "4s cut 0-1, 11s heal 0-1"

func (o *Options) fill() error {
	d := DefaultOptions()
	if o.Nodes == 0 {
		o.Nodes = d.Nodes
	}
	if o.Duration == 0 {
		o.Duration = d.Duration
	}
	if o.Settle == 0 {
		o.Settle = d.Settle
	}
	if o.MinSize == 0 {
		o.MinSize = d.MinSize
	}
	if o.MaxSize == 0 {
		o.MaxSize = d.MaxSize
	}
	if o.Rate == 0 {
		o.Rate = d.Rate
	}
	if o.Keep == 0 {
		o.Keep = d.Keep
	}
	if o.Interval == 0 {
		o.Interval = d.Interval
	}
	if o.Transport == (transport.Config{}) {
		o.Transport = d.Transport
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	switch {
	case o.Nodes < 2:
		return fmt.Errorf("need at least 2 nodes, got %d", o.Nodes)
	case o.Nodes > 64:
		return fmt.Errorf("at most 64 nodes in one process, got %d", o.Nodes)
	case o.MinSize < headerLen || o.MaxSize < o.MinSize:
		return fmt.Errorf("sizes must satisfy %d B <= min <= max, got %d..%d", headerLen, o.MinSize, o.MaxSize)
	case o.MaxSize > 64<<20:
		return fmt.Errorf("max size %d above the demo's 64 MiB", o.MaxSize)
	case o.Rate <= 0 || o.Rate > 1000:
		return fmt.Errorf("rate must be in (0, 1000] heights/s, got %g", o.Rate)
	case o.Keep < 1:
		return fmt.Errorf("keep must be at least 1, got %d", o.Keep)
	case o.Duration < 0 || o.Settle < 0:
		return fmt.Errorf("durations must be positive")
	}
	for _, f := range o.Faults {
		if f.A >= o.Nodes || f.B >= o.Nodes {
			return fmt.Errorf("fault %v names a node beyond %d", f, o.Nodes-1)
		}
	}
	return o.Transport.Validate()
}

// FaultStep cuts or heals the link between nodes A and B at time At after
// the start.
type FaultStep struct {
	At   time.Duration
	Cut  bool
	A, B int
}

func (f FaultStep) String() string {
	verb := "heal"
	if f.Cut {
		verb = "cut"
	}
	return fmt.Sprintf("%v %s %d-%d", f.At, verb, f.A, f.B)
}

// ParseFaults reads a schedule such as "4s cut 0-1, 11s heal 0-1": comma
// separated steps of a time offset, "cut" or "heal", and a link "A-B"
// between node indexes. "" and "none" are the empty schedule.
func ParseFaults(s string) ([]FaultStep, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "none" {
		return nil, nil
	}
	var out []FaultStep
	for _, part := range strings.Split(s, ",") {
		fs := strings.Fields(part)
		if len(fs) != 3 {
			return nil, fmt.Errorf("fault step %q: want \"<time> cut|heal A-B\"", strings.TrimSpace(part))
		}
		at, err := time.ParseDuration(fs[0])
		if err != nil || at < 0 {
			return nil, fmt.Errorf("fault step %q: bad time %q", strings.TrimSpace(part), fs[0])
		}
		var step FaultStep
		switch fs[1] {
		case "cut":
			step.Cut = true
		case "heal":
		default:
			return nil, fmt.Errorf("fault step %q: %q is neither cut nor heal", strings.TrimSpace(part), fs[1])
		}
		a, b, ok := strings.Cut(fs[2], "-")
		if !ok {
			return nil, fmt.Errorf("fault step %q: link %q is not A-B", strings.TrimSpace(part), fs[2])
		}
		if step.A, err = strconv.Atoi(a); err == nil {
			step.B, err = strconv.Atoi(b)
		}
		if err != nil || step.A < 0 || step.B < 0 || step.A == step.B {
			return nil, fmt.Errorf("fault step %q: link %q needs two different node indexes", strings.TrimSpace(part), fs[2])
		}
		step.At = at
		out = append(out, step)
	}
	return out, nil
}

// ParseSizes reads a size range "MIN-MAX" such as "200B-2MiB" (units B,
// KB, KiB, MB, MiB; none means bytes).
func ParseSizes(s string) (minSize, maxSize int, err error) {
	lo, hi, ok := strings.Cut(s, "-")
	if !ok {
		return 0, 0, fmt.Errorf("sizes %q: want MIN-MAX, e.g. 200B-2MiB", s)
	}
	if minSize, err = ParseSize(lo); err != nil {
		return 0, 0, err
	}
	if maxSize, err = ParseSize(hi); err != nil {
		return 0, 0, err
	}
	if maxSize < minSize {
		return 0, 0, fmt.Errorf("sizes %q: max below min", s)
	}
	return minSize, maxSize, nil
}

// ParseSize reads one size such as "200B", "64KiB" or "2MiB".
func ParseSize(s string) (int, error) {
	s = strings.TrimSpace(s)
	units := []struct {
		suffix string
		mult   int
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"KB", 1000}, {"MB", 1000_000}, {"B", 1}, {"", 1}}
	for _, u := range units {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
			if err != nil || v < 0 {
				return 0, fmt.Errorf("size %q: want a number with an optional unit B, KB, KiB, MB, MiB", s)
			}
			return int(v * float64(u.mult)), nil
		}
	}
	return 0, fmt.Errorf("size %q: unknown unit", s)
}

// FormatBytes prints n with a binary unit.
func FormatBytes(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
