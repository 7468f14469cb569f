// Command remotebench measures actor messaging between two processes on
// loopback, for quicremote's remote and for protoactor-go's own gRPC remote,
// in the same run:
//
//   - one-way: 100-byte protobuf messages sent with Send in rounds of
//     -round messages; each round is closed by a request whose answer (the
//     receiver's count) arrives after every message of the round, so the
//     clock stops only when all were delivered;
//   - round trip: sequential RequestFuture calls, p50 and p99.
//
// For the one-way phase it also prints the CPU time both processes spent
// (user + system) and the heap allocations they made, per message: unlike
// the rate, these hardly depend on what else the machine is running.
//
// The server is this program re-executed as a child process.
//
//	go run ./examples/remotebench [-n 1000000] [-round 10000] [-rt 5000] [-impl quic,grpc] [-reps 1] [-json]
//
// With -json every run is also one JSON line on stdout (bench "remote",
// see jsonLine) and the table goes to stderr, so the output can be
// appended to the JSON lines examples/bench/run.sh collects.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The messages: payload is a 100-byte BytesValue; the receiver answers a
// "sync" StringValue with its running count and any other StringValue
// with itself.
func payload() *wrapperspb.BytesValue {
	m := wrapperspb.Bytes(make([]byte, 98))
	if n := proto.Size(m); n != 100 {
		panic(fmt.Sprintf("payload is %d bytes", n))
	}
	return m
}

// sinkProps counts payloads and answers requests.
func sinkProps() *actor.Props {
	var count int64
	return actor.PropsFromFunc(func(c actor.Context) {
		switch m := c.Message().(type) {
		case *wrapperspb.BytesValue:
			count++
		case *wrapperspb.StringValue:
			if m.Value == "sync" {
				c.Respond(wrapperspb.Int64(count))
				return
			}
			c.Respond(m)
		}
	})
}

// side is one end of a benchmark pair.
type side interface {
	System() *actor.ActorSystem
	// Describe returns a line of counters worth printing (dead letters...).
	Describe() string
	Close()
}

// server is the child process: it starts the named implementation, prints
// one line with what the parent needs to reach it, answers every "usage"
// line on stdin with its own (see usage), and runs until stdin closes.
func server(impl string) error {
	var s side
	var hello string
	var err error
	switch impl {
	case "quic":
		s, hello, err = quicServer()
	case "grpc":
		s, hello, err = grpcServer()
	default:
		err = fmt.Errorf("unknown implementation %q", impl)
	}
	if err != nil {
		return err
	}
	if _, err := s.System().Root.SpawnNamed(sinkProps(), "sink"); err != nil {
		return err
	}
	fmt.Println(hello)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() && in.Text() == "usage" {
		u := usage()
		fmt.Println(u.cpu.Nanoseconds(), u.mallocs)
	}
	s.Close()
	if *memProfile != "" {
		return writeMemProfile(*memProfile + ".server." + impl)
	}
	return nil
}

// resources is what a process has used so far: CPU time (user + system)
// and heap allocations.
type resources struct {
	cpu     time.Duration
	mallocs uint64
}

func (a resources) plus(b resources) resources {
	return resources{a.cpu + b.cpu, a.mallocs + b.mallocs}
}

func (a resources) minus(b resources) resources {
	return resources{a.cpu - b.cpu, a.mallocs - b.mallocs}
}

// usage reads this process's resources.
func usage() resources {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return resources{
		cpu:     time.Duration(ru.Utime.Nano() + ru.Stime.Nano()),
		mallocs: ms.Mallocs,
	}
}

// childUsage asks the server child for its resources.
func childUsage(w io.Writer, r *bufio.Reader) (resources, error) {
	if _, err := io.WriteString(w, "usage\n"); err != nil {
		return resources{}, err
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return resources{}, err
	}
	var ns int64
	var u resources
	if _, err := fmt.Sscan(line, &ns, &u.mallocs); err != nil {
		return resources{}, fmt.Errorf("child usage %q: %w", line, err)
	}
	u.cpu = time.Duration(ns)
	return u, nil
}

// pairUsage is the resources of this process (the sending side) and of
// the child (the receiving side).
type pairUsage struct{ client, server resources }

func bothUsage(w io.Writer, r *bufio.Reader) (pairUsage, error) {
	c, err := childUsage(w, r)
	return pairUsage{usage(), c}, err
}

func (a pairUsage) minus(b pairUsage) pairUsage {
	return pairUsage{a.client.minus(b.client), a.server.minus(b.server)}
}

func (a pairUsage) total() resources { return a.client.plus(a.server) }

func writeMemProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return pprof.Lookup("allocs").WriteTo(f, 0)
}

type result struct {
	impl        string
	oneWay      float64 // messages per second
	sent        int
	p50, p99    time.Duration
	rtPerSecond float64
	perMsg      resources     // both processes, one-way phase, per message (cpu in ns)
	rtCPU       time.Duration // both processes, per round trip
	notes       string
}

func run(impl string, n, round, rts int) (result, error) {
	res := result{impl: impl}
	args := []string{"-serve", impl}
	if *cpuProfile != "" {
		args = append(args, "-cpuprofile", *cpuProfile)
	}
	if *memProfile != "" {
		args = append(args, "-memprofile", *memProfile)
	}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return res, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return res, err
	}
	var client side
	var target *actor.PID
	switch impl {
	case "quic":
		var c *quicClient
		c, err = newQuicClient(cmd)
		if err == nil {
			client = c
		}
	case "grpc":
		client, err = newGRPCClient()
	default:
		err = fmt.Errorf("unknown implementation %q", impl)
	}
	if err != nil {
		return res, err
	}
	defer client.Close()
	if err := cmd.Start(); err != nil {
		return res, err
	}
	defer func() {
		stdin.Close()
		_ = cmd.Wait()
	}()
	out := bufio.NewReader(stdout)
	line, err := out.ReadString('\n')
	if err != nil {
		return res, fmt.Errorf("%s server: %w", impl, err)
	}
	switch c := client.(type) {
	case *quicClient:
		target, err = c.connect(strings.TrimSpace(line))
	case *grpcClient:
		target = actor.NewPID(strings.TrimSpace(line), "sink")
	}
	if err != nil {
		return res, err
	}
	root := client.System().Root

	// Warm up (connection, JIT-free but caches and windows).
	msg := payload()
	for i := 0; i < 1000; i++ {
		root.Send(target, msg)
	}
	if _, err := root.RequestFuture(target, wrapperspb.String("sync"), 30*time.Second).Result(); err != nil {
		return res, fmt.Errorf("%s warm-up: %w", impl, err)
	}
	base := int64(1000)

	// One-way rounds.
	before, err := bothUsage(stdin, out)
	if err != nil {
		return res, err
	}
	start := time.Now()
	sent := 0
	for sent < n {
		k := min(round, n-sent)
		for i := 0; i < k; i++ {
			root.Send(target, msg)
		}
		sent += k
		r, err := root.RequestFuture(target, wrapperspb.String("sync"), 60*time.Second).Result()
		if err != nil {
			return res, fmt.Errorf("%s round: %w", impl, err)
		}
		got := r.(*wrapperspb.Int64Value).Value - base
		if got != int64(sent) {
			res.notes += fmt.Sprintf("count %d after %d sent; ", got, sent)
			base += got - int64(sent) // keep going; the lost ones show in notes
		}
	}
	el := time.Since(start)
	res.sent = sent
	res.oneWay = float64(sent) / el.Seconds()
	after, err := bothUsage(stdin, out)
	if err != nil {
		return res, err
	}
	used := after.minus(before)
	res.perMsg = resources{used.total().cpu / time.Duration(sent), used.total().mallocs / uint64(sent)}
	res.notes += fmt.Sprintf("cpu/msg sender %v receiver %v; ", used.client.cpu/time.Duration(sent), used.server.cpu/time.Duration(sent))

	// Sequential round trips.
	lat := make([]time.Duration, 0, rts)
	ping := wrapperspb.String("ping")
	for i := 0; i < 200; i++ { // warm-up
		if _, err := root.RequestFuture(target, ping, 10*time.Second).Result(); err != nil {
			return res, err
		}
	}
	before, err = bothUsage(stdin, out)
	if err != nil {
		return res, err
	}
	t0 := time.Now()
	for i := 0; i < rts; i++ {
		s := time.Now()
		if _, err := root.RequestFuture(target, ping, 10*time.Second).Result(); err != nil {
			return res, fmt.Errorf("%s round trip: %w", impl, err)
		}
		lat = append(lat, time.Since(s))
	}
	res.rtPerSecond = float64(rts) / time.Since(t0).Seconds()
	after, err = bothUsage(stdin, out)
	if err != nil {
		return res, err
	}
	res.rtCPU = after.minus(before).total().cpu / time.Duration(rts)
	slices.Sort(lat)
	res.p50 = lat[len(lat)/2]
	res.p99 = lat[len(lat)*99/100]
	res.notes += client.Describe()
	return res, nil
}

func main() {
	serve := flag.String("serve", "", "internal: run as the server child for this implementation")
	n := flag.Int("n", 1000000, "one-way messages per implementation")
	round := flag.Int("round", 10000, "messages per round before the closing request (at most the remote's queue capacity)")
	rts := flag.Int("rt", 5000, "sequential round trips per implementation")
	impls := flag.String("impl", "quic,grpc", "implementations to measure, comma separated")
	reps := flag.Int("reps", 1, "repeat each measurement and print every run")
	jsonOut := flag.Bool("json", false, "print one JSON line per run on stdout and the table on stderr")
	cpuProfile = flag.String("cpuprofile", "", "write CPU profiles to this path (the server child adds .server.<impl>)")
	memProfile = flag.String("memprofile", "", "write allocation profiles to this path at exit (the server child adds .server.<impl>)")
	flag.Parse()
	if *cpuProfile != "" {
		path := *cpuProfile
		if *serve != "" {
			path += ".server." + *serve
		}
		f, err := os.Create(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	if *serve != "" {
		if err := server(*serve); err != nil {
			fmt.Fprintln(os.Stderr, err)
			pprof.StopCPUProfile()
			os.Exit(1)
		}
		return
	}
	table := io.Writer(os.Stdout)
	if *jsonOut {
		table = os.Stderr
	}
	fmt.Fprintf(table, "GOMAXPROCS=%d %s/%s %s; %d one-way 100-byte messages in rounds of %d, %d sequential round trips\n",
		runtime.GOMAXPROCS(0), runtime.GOOS, runtime.GOARCH, runtime.Version(), *n, *round, *rts)
	fmt.Fprintf(table, "%-6s %14s %10s %10s %12s %12s %12s %10s  %s\n", "remote", "one-way msg/s", "cpu/msg", "allocs/msg", "rt p50", "rt p99", "rt/s", "cpu/rt", "notes")
	var rates, p50s = map[string][]float64{}, map[string][]float64{}
	for rep := 0; rep < *reps; rep++ {
		for _, impl := range strings.Split(*impls, ",") {
			r, err := run(impl, *n, *round, *rts)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			rates[impl] = append(rates[impl], r.oneWay)
			p50s[impl] = append(p50s[impl], float64(r.p50))
			if *jsonOut {
				line, err := r.jsonLine(*n, *round, *rts)
				if err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(1)
				}
				fmt.Println(line)
			}
			fmt.Fprintf(table, "%-6s %14.0f %10v %10d %12v %12v %12.0f %10v  %s\n", r.impl, r.oneWay, r.perMsg.cpu, r.perMsg.mallocs,
				r.p50.Round(time.Microsecond), r.p99.Round(time.Microsecond), r.rtPerSecond, r.rtCPU.Round(100*time.Nanosecond), r.notes)
		}
	}
	if q, g := rates["quic"], rates["grpc"]; len(q) > 0 && len(g) > 0 {
		fmt.Fprintf(table, "quic/grpc (medians): one-way %.2f, rt p50 %.2f\n", median(q)/median(g), median(p50s["quic"])/median(p50s["grpc"]))
	}
	if *memProfile != "" {
		if err := writeMemProfile(*memProfile); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
}

// jsonLine is r as one JSON line for examples/bench/plot.py and table.py:
// bench "remote", system the implementation (quic or grpc), durations in
// microseconds, CPU per message or round trip of both processes together.
func (r result) jsonLine(n, round, rts int) (string, error) {
	us := func(d time.Duration) float64 { return float64(d) / 1e3 }
	b, err := json.Marshal(struct {
		Bench          string  `json:"bench"`
		System         string  `json:"system"`
		N              int     `json:"n"`
		Round          int     `json:"round"`
		RoundTrips     int     `json:"rt"`
		GOMAXPROCS     int     `json:"gomaxprocs"`
		OneWayPerS     float64 `json:"one_way_msgs_per_s"`
		CPUPerMsgUs    float64 `json:"cpu_us_per_msg"`
		AllocsPerMsg   uint64  `json:"allocs_per_msg"`
		RoundTripP50Us float64 `json:"rt_p50_us"`
		RoundTripP99Us float64 `json:"rt_p99_us"`
		RoundTripsPerS float64 `json:"rt_per_s"`
		CPUPerRTUs     float64 `json:"cpu_us_per_rt"`
		Notes          string  `json:"notes,omitempty"`
	}{"remote", r.impl, n, round, rts, runtime.GOMAXPROCS(0), r.oneWay, us(r.perMsg.cpu), r.perMsg.mallocs,
		us(r.p50), us(r.p99), r.rtPerSecond, us(r.rtCPU), r.notes})
	return string(b), err
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

var cpuProfile, memProfile *string
