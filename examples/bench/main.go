// Command bench measures Abortable Broadcast end to end: an N-node subnet
// in one process, each node an actors.Node speaking real QUIC on its own
// loopback UDP socket, publishing artifacts on one channel while a share
// of them is aborted. It prints one JSON line (see Result), then, with
// -baseline, a second line for raw quic-go fan-out of the same payloads
// from one sender to N-1 peers, the ceiling abcast is measured against.
//
//	go run ./examples/bench -nodes 4 -size 102400 -count 500 -publishers all -abort-fraction 0.5
//
// -count is the total number of artifacts, split round-robin over the
// publishers; -rate limits each publisher (artifacts/s, 0 = as fast as the
// channel accepts). Field meanings are in internal/docs/BENCHMARKS.md.
package main

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/pprof"
	"time"
)

type options struct {
	nodes         int
	size          int
	count         int
	publishers    string
	abortFraction float64
	abortAfter    time.Duration
	rate          float64
	timeout       time.Duration
	pushThreshold int
	seed          uint64
	baseline      bool
	system        string
	label         string
}

func main() {
	var o options
	flag.IntVar(&o.nodes, "nodes", 4, "subnet size")
	flag.IntVar(&o.size, "size", 100<<10, "payload bytes per artifact")
	flag.IntVar(&o.count, "count", 500, "artifacts in total, split over the publishers")
	flag.StringVar(&o.publishers, "publishers", "all", "who publishes: one (node 0) or all")
	flag.Float64Var(&o.abortFraction, "abort-fraction", 0, "share of artifacts aborted after publishing")
	flag.DurationVar(&o.abortAfter, "abort-after", 0, "delay between publishing an artifact and aborting it (0: right after Publish returns)")
	flag.Float64Var(&o.rate, "rate", 0, "artifacts per second per publisher (0: unlimited)")
	flag.DurationVar(&o.timeout, "timeout", 120*time.Second, "give up waiting for deliveries after this long")
	flag.IntVar(&o.pushThreshold, "push-threshold", 1024+64, "sender PushThreshold in encoded bytes (the default pushes payloads up to 1 KiB)")
	flag.Uint64Var(&o.seed, "seed", 1, "seed choosing the aborted artifacts")
	flag.BoolVar(&o.baseline, "baseline", false, "also measure raw quic-go fan-out (one sender, N-1 connections) and print it as a second line")
	flag.StringVar(&o.system, "system", "abcast", "abcast, or quic-go-fanout for the raw baseline alone")
	flag.StringVar(&o.label, "label", "", "name printed with the results (e.g. the branch), for before/after runs")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the measured phase to this file")
	memProfile := flag.String("memprofile", "", "write an allocation profile to this file at the end")
	flag.Parse()
	if err := o.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	var res []Result
	if o.system == "abcast" {
		r, err := runAbcast(o)
		if err != nil {
			fatal(err)
		}
		res = append(res, r)
	}
	if o.baseline || o.system == "quic-go-fanout" {
		runtime.GC()
		r, err := runRawFanout(o)
		if err != nil {
			fatal(err)
		}
		res = append(res, r)
	}
	if *memProfile != "" {
		f, err := os.Create(*memProfile)
		if err != nil {
			fatal(err)
		}
		if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
			fatal(err)
		}
		f.Close()
	}
	for _, r := range res {
		r.print()
	}
}

func (o options) validate() error {
	switch {
	case o.nodes < 2:
		return fmt.Errorf("-nodes must be at least 2")
	case o.size < 8:
		return fmt.Errorf("-size must be at least 8 (the artifact index is written into the payload)")
	case o.count < 1:
		return fmt.Errorf("-count must be positive")
	case o.publishers != "one" && o.publishers != "all":
		return fmt.Errorf("-publishers must be one or all")
	case o.abortFraction < 0 || o.abortFraction > 1:
		return fmt.Errorf("-abort-fraction must be in [0,1]")
	case o.rate < 0:
		return fmt.Errorf("-rate must not be negative")
	case o.system != "abcast" && o.system != "quic-go-fanout":
		return fmt.Errorf("-system must be abcast or quic-go-fanout")
	}
	return nil
}

// workload is what every system runs: artifact i is published by node
// publisher(i), and aborted[i] says whether it is aborted.
type workload struct {
	o       options
	aborted []bool
	abortN  int
}

func newWorkload(o options) workload {
	w := workload{o: o, aborted: make([]bool, o.count)}
	rng := rand.New(rand.NewPCG(o.seed, 0x6a62))
	for i := range w.aborted {
		if rng.Float64() < o.abortFraction {
			w.aborted[i] = true
			w.abortN++
		}
	}
	return w
}

func (w workload) publisher(idx int) int {
	if w.o.publishers == "one" {
		return 0
	}
	return idx % w.o.nodes
}

// receivers are the nodes that must get artifact idx: all but its publisher.
func (w workload) receivers(idx int) []int {
	out := make([]int, 0, w.o.nodes-1)
	for n := range w.o.nodes {
		if n != w.publisher(idx) {
			out = append(out, n)
		}
	}
	return out
}

// expected is how many deliveries of non-aborted artifacts a complete run makes.
func (w workload) expected() int64 {
	return int64(w.o.count-w.abortN) * int64(w.o.nodes-1)
}

// payload builds artifact idx's payload: a filler pattern with the index
// in its first 8 bytes, allocated when it is published.
func payload(idx, size int) []byte {
	p := make([]byte, size)
	for i := 8; i < size; i += 64 {
		p[i] = byte(i >> 6)
	}
	putIndex(p, idx)
	return p
}

func putIndex(b []byte, idx int) {
	for i := range 8 {
		b[i] = byte(uint64(idx) >> (56 - 8*i))
	}
}

func getIndex(b []byte) (int, bool) {
	if len(b) < 8 {
		return 0, false
	}
	var v uint64
	for i := range 8 {
		v = v<<8 | uint64(b[i])
	}
	return int(v), true
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}
