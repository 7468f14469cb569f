// Command localnet runs a local abcast subnet in one process and checks
// what it promises: every node publishes blocks and signatures like a
// consensus protocol would, aborts the ones newer heights make obsolete,
// a link is cut and healed while it runs, and at the end every artifact
// that was not aborted must have reached every other node exactly once.
//
//	go run ./examples/localnet            # 4 nodes, 20 s, one link cut and healed
//	go run ./examples/localnet -h         # every flag
//
// While it runs, type "cut 0 1", "heal 0 1", "heal" or "quit" and Enter.
// It exits 0 when the verdict passes, 1 when a guarantee failed, 2 on a
// set-up error.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/abcast/abcast/examples/localnet/demo"
)

func main() {
	d := demo.DefaultOptions()
	flags := flag.NewFlagSet("localnet", flag.ExitOnError)
	flags.Usage = func() {
		fmt.Fprintf(flags.Output(), `localnet: a local abcast subnet in one process, over real QUIC and mutual TLS
on loopback, with a consensus-like workload, link faults and a final verdict.

Each node publishes, per height, a block on channel "blocks" (size drawn
log-uniformly from -sizes) and a signature on channel "signatures" (the
smallest size, pushed with its slot update); blocks above about 1 KiB are
advertised and fetched. Every node keeps the last -keep heights live and
aborts older ones; some heights are re-proposed, aborting the first block at
once. Once a second a table shows each node's counters and delivery latency.
After -duration every cut link is healed and the run waits (at most -settle)
until every node holds every other node's non-aborted artifacts, then
checks G1 (delivered exactly once everywhere), G2 (payloads intact) and G3
(aborted artifacts withdrawn everywhere). Exit status: 0 pass, 1 fail,
2 set-up error.

While it runs, type a command and Enter:
  cut A B     cut the link between nodes A and B (both directions)
  heal A B    heal it
  heal        heal every link
  quit        end the workload now and go to the verdict

Flags:
`)
		flags.PrintDefaults()
	}
	nodes := flags.Int("nodes", d.Nodes, "number of nodes (2..64)")
	duration := flags.Duration("duration", d.Duration, "how long the workload publishes")
	settle := flags.Duration("settle", d.Settle, "how long to wait for convergence after the workload")
	sizes := flags.String("sizes", "200B-2MiB", "payload size range MIN-MAX (units B, KB, KiB, MB, MiB)")
	rate := flags.Float64("rate", d.Rate, "heights per second per node (each height: one block and one signature)")
	keep := flags.Int("keep", d.Keep, "heights each node keeps live before aborting them as obsolete")
	repropose := flags.Int("repropose", d.ReproposeEvery, "re-propose every n-th height, aborting its first block at once (0: never)")
	faults := flags.String("faults", demo.DefaultFaults, "link fault schedule: comma-separated \"<time> cut|heal A-B\" steps, or \"none\"")
	seed := flags.Uint64("seed", d.Seed, "seed for sizes and re-proposals")
	logLevel := flags.String("log", "error", "node log level on stderr (debug, info, warn, error, disabled)")
	flags.Parse(os.Args[1:])

	o := d
	o.Nodes, o.Duration, o.Settle, o.Rate, o.Keep, o.ReproposeEvery, o.Seed = *nodes, *duration, *settle, *rate, *keep, *repropose, *seed
	var err error
	if o.MinSize, o.MaxSize, err = demo.ParseSizes(*sizes); err != nil {
		fail(err)
	}
	if o.Faults, err = demo.ParseFaults(*faults); err != nil {
		fail(err)
	}
	level, err := zerolog.ParseLevel(*logLevel)
	if err != nil {
		fail(fmt.Errorf("-log: %w", err))
	}
	o.Log = zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: time.TimeOnly}).Level(level).With().Timestamp().Logger()
	o.Out = os.Stdout
	// The demo wraps its sockets to cut links, so quic-go cannot tune
	// their buffers; that is expected here, not worth a warning.
	if os.Getenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING") == "" {
		os.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	}
	o.Commands = os.Stdin

	// The first SIGINT ends the workload and goes to the verdict; a second
	// one exits at once.
	ctx, stop := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		stop()
		<-sigs
		fmt.Fprintln(os.Stderr, "localnet: interrupted twice, exiting without a verdict")
		os.Exit(130)
	}()

	v, err := demo.Run(ctx, o)
	if err != nil {
		fail(err)
	}
	if !v.OK {
		os.Exit(1)
	}
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "localnet: %v\n", err)
	os.Exit(2)
}
