// Command scalebench measures abcast's footprint as the subnet grows: N
// whole nodes (actor system, remote, transport, protocol cores) in one
// process, on the test kit's simulated network (actors/abcasttest), running
// the replay shape of issue 15 in virtual time, and prints one JSON line
// per N with the process's peak heap and goroutines, both also divided by
// N, and the CPU time spent per delivered artifact.
//
//	go run ./examples/scalebench -nodes 13,31,51
//	python3 examples/bench/plot.py ...   (see examples/bench/run.sh)
//
// The replay shape: 50 ms one-way latency on every link; every node
// publishes at 1, then 10, then 50 artifacts per second (-rates), each
// step lasting -phase virtual seconds; payloads are mostly 100 B with some
// of 10 KB, 100 KB and 1 MB (-mix) and one 10 MB artifact (-large); each
// artifact is aborted by its publisher -lifetime after it was published
// (as a replica purges what consensus no longer needs); every 10th node
// (9, 19, ...) crashes -kill-at into the run and comes back -down later.
// After the last step the run waits (up to -drain) until every node holds
// every live artifact.
//
// # Virtual time in a program
//
// The kit's simulated network runs in virtual time only inside a
// testing/synctest bubble, and synctest.Test needs a *testing.T. So this
// program hands its measurement to testing.Main as a single test: the
// binary is an ordinary program (go run, flags of its own), and the
// testing package supplies the T and the bubble. testing.Main prints PASS
// or FAIL after the JSON lines; readers take only lines starting with "{".
// The -test.* flags are accepted too (-test.v shows the kit's log).
//
// # What the figures mean
//
// Every node shares one Go process, and the runtime cannot attribute heap
// objects or goroutines to a node, so per-node figures are the process's
// divided by N (the driver's own state — recorders holding every delivered
// payload, publish times — is included; held_MB says how much payload the
// recorders hold). The per-peer cost is the slope of those figures against
// N across runs: per node, heap ≈ a + b·(N−1), so b is what one more peer
// costs each node (table.py's scale table fits it). Idle figures are taken
// after every node connected to every other and opened the channel,
// before anything is published: the structural cost. Peak figures are the
// largest seen while the load runs: peak_heap_MB is the largest
// /memory/classes/heap/objects:bytes (live and unswept objects, so up to
// about 2× the live heap with GOGC=100, as examples/bench reports it),
// peak_live_MB the largest /gc/heap/live:bytes (the heap marked live by a
// GC), sampled every -sample of real time. CPU is the process's user and
// system time from the first publish to convergence, divided by the
// deliveries the consumers recorded (every node, every life).
package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

var (
	nodesFlag  = flag.String("nodes", "13,31,51", "comma-separated subnet sizes, one run (and one JSON line) each")
	seed       = flag.Uint64("seed", 1, "seed of the payload sizes and of packet loss")
	rates      = flag.String("rates", "1,10,50", "artifacts per node per second in each step")
	phase      = flag.Duration("phase", 10*time.Second, "virtual duration of each rate step")
	mix        = flag.String("mix", "100:950,10000:40,100000:9,1000000:1", "payload sizes and their weights (size:weight,...)")
	large      = flag.Int("large", 10_000_000, "size of the one large artifact node 0 publishes at the start of the second step (0: none)")
	lifetime   = flag.Duration("lifetime", 10*time.Second, "virtual time after which a publisher aborts its artifact (0: never)")
	latency    = flag.Duration("latency", 50*time.Millisecond, "one-way latency of every link")
	loss       = flag.Float64("loss", 0, "packet loss probability on every link")
	killEvery  = flag.Int("kill-every", 10, "crash every k-th node (nodes k-1, 2k-1, ...; 0: none)")
	killAt     = flag.Duration("kill-at", 5*time.Second, "virtual time into the load at which they crash")
	downFor    = flag.Duration("down", 30*time.Second, "how long they stay down")
	drain      = flag.Duration("drain", 2*time.Minute, "virtual time to wait for convergence after the load")
	sample     = flag.Duration("sample", 20*time.Millisecond, "real-time interval of the heap and goroutine samples")
	profileDir = flag.String("profile-dir", "", "write heap and goroutine profiles when idle and at the end of the last step to this directory (heap-idle-N.pb.gz, heap-N.pb.gz, goroutine-...)")
	label      = flag.String("label", "", "names the build in the JSON lines, for before/after runs")
	logLevel   = flag.String("log", "error", "level of the nodes' log on stderr (debug, info, warn, error, disabled)")
)

func main() {
	testing.Init()
	flag.Parse()
	sizes, err := parseInts(*nodesFlag)
	if err != nil {
		fmt.Fprintln(os.Stderr, "scalebench: -nodes:", err)
		os.Exit(2)
	}
	cfg, err := newShape()
	if err != nil {
		fmt.Fprintln(os.Stderr, "scalebench:", err)
		os.Exit(2)
	}
	var tests []testing.InternalTest
	for _, n := range sizes {
		tests = append(tests, testing.InternalTest{Name: fmt.Sprintf("Scale/N=%d", n), F: func(t *testing.T) { measure(t, cfg, n) }})
	}
	testing.Main(func(string, string) (bool, error) { return true, nil }, tests, nil, nil)
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return nil, err
		}
		if v <= 0 {
			return nil, fmt.Errorf("%d is not positive", v)
		}
		out = append(out, v)
	}
	return out, nil
}
