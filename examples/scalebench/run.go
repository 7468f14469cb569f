package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/rs/zerolog"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/actors/abcasttest"
	"github.com/abcast/abcast/broadcast"
)

// shape is the replay shape, from the flags.
type shape struct {
	rates   []int
	sizes   []int // payload sizes, and
	weights []int // their weights
	total   int   // sum of weights
	log     zerolog.Logger
}

func newShape() (*shape, error) {
	s := &shape{}
	var err error
	if s.rates, err = parseInts(*rates); err != nil {
		return nil, fmt.Errorf("-rates: %w", err)
	}
	for _, f := range strings.Split(*mix, ",") {
		size, weight, ok := strings.Cut(f, ":")
		sz, err1 := strconv.Atoi(size)
		w, err2 := strconv.Atoi(weight)
		if !ok || err1 != nil || err2 != nil || sz <= 0 || w < 0 {
			return nil, fmt.Errorf("-mix: %q is not size:weight", f)
		}
		s.sizes, s.weights, s.total = append(s.sizes, sz), append(s.weights, w), s.total+w
	}
	if s.total == 0 {
		return nil, errors.New("-mix: every weight is zero")
	}
	lvl, err := zerolog.ParseLevel(*logLevel)
	if err != nil {
		return nil, fmt.Errorf("-log: %w", err)
	}
	s.log = zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr}).Level(lvl).With().Timestamp().Logger()
	return s, nil
}

// size picks artifact k of node's payload size from the mix, the same for
// every run with the same seed.
func (s *shape) size(node, k int) int {
	x := splitmix(*seed ^ uint64(node)<<32 ^ uint64(k))
	r := int(x % uint64(s.total))
	for i, w := range s.weights {
		if r < w {
			return s.sizes[i]
		}
		r -= w
	}
	return s.sizes[len(s.sizes)-1]
}

func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}

// measure runs the shape on n nodes and prints its JSON line.
func measure(t *testing.T, sh *shape, n int) {
	runtime.GC()
	smp := startSampler(*sample)
	defer smp.stop()
	res := Result{Bench: "scale", System: "abcast", Label: *label, Nodes: n, Seed: *seed, Rates: sh.rates, PhaseS: phase.Seconds(),
		LatencyMs: float64(*latency) / 1e6, Loss: *loss, LifetimeS: lifetime.Seconds(), DownS: downFor.Seconds(), GoVersion: runtime.Version()}
	wall := time.Now()
	synctest.Test(t, func(t *testing.T) { replay(t, sh, n, smp, &res) })
	res.WallS = time.Since(wall).Seconds()
	res.finish(smp)
	res.print()
}

// replay is the body of one run, inside a synctest bubble.
func replay(t *testing.T, sh *shape, n int, smp *sampler, res *Result) {
	s := abcasttest.NewSubnet(t, n, abcasttest.Options{Latency: *latency, Loss: *loss, Seed: *seed, Log: &sh.log})
	s.StartAll()
	var mu sync.Mutex
	published := map[broadcast.ArtifactID]time.Time{}
	// held counts the payload bytes each node's consumer holds (the id
	// says the size), so the heap can be read against it.
	held := make([]atomic.Int64, n)
	ch := s.OpenChannel("replay", abcasttest.ChannelOptions{Consume: func(i int) func(actors.Event) {
		return func(ev actors.Event) {
			switch e := ev.(type) {
			case *actors.Delivered:
				held[i].Add(int64(len(e.Artifact.Payload)))
			case *actors.Withdrawn:
				if len(e.ID) == 16 {
					held[i].Add(-int64(binary.BigEndian.Uint32([]byte(e.ID[12:]))))
				}
			}
		}
	}})
	heldNow := func() int64 {
		var sum int64
		for i := range held {
			sum += held[i].Load()
		}
		return sum
	}
	smp.heldNow.Store(&heldNow)
	if err := abcasttest.Eventually(2*time.Minute, func() error {
		for i := range n {
			if got := len(s.Node(i).Transport().Peers()); got != n-1 {
				return fmt.Errorf("node %d has %d of %d peers", i, got, n-1)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	res.ConnectS = smp.virtualSince(time.Now())
	// The structural cost: every pair connected, the channel open and
	// announced (a second is ten round trips), nothing published.
	time.Sleep(time.Second)
	res.IdleHeapMB, res.IdleGoroutines = idleFigures()
	if *profileDir != "" {
		writeProfiles(t, fmt.Sprintf("idle-%d", n))
	}
	smp.resetPeaks()

	down := make([]atomic.Bool, n)
	killed := []int{}
	if *killEvery > 0 {
		for i := *killEvery - 1; i < n; i += *killEvery {
			killed = append(killed, i)
		}
	}
	cpu0 := cpuTime()
	start := time.Now()
	restarted := make([]time.Time, n) // when a killed node came back
	var load, aborters sync.WaitGroup
	for node := range n {
		aborts := make(chan broadcast.ArtifactID, 1<<16)
		load.Go(func() { publish(sh, ch, node, start, &down[node], aborts, &mu, published, res) })
		if *lifetime > 0 {
			aborters.Go(func() { abortLater(ch, node, &down[node], aborts, &mu, published) })
		}
	}
	if len(killed) > 0 {
		load.Go(func() {
			time.Sleep(time.Until(start.Add(*killAt)))
			for _, i := range killed {
				down[i].Store(true)
				s.Kill(i)
				held[i].Store(0) // its application's copy died with it
			}
			time.Sleep(*downFor)
			for _, i := range killed {
				s.Start(i)
				restarted[i] = time.Now()
				down[i].Store(false)
			}
		})
	}
	end := start.Add(time.Duration(len(sh.rates)) * *phase)
	if *profileDir != "" {
		time.Sleep(time.Until(end.Add(-100 * time.Millisecond)))
		writeProfiles(t, fmt.Sprint(n))
	}
	load.Wait()
	loadEnd := time.Now()
	if err := ch.WaitDelivered(*drain); err != nil {
		res.Error = firstLine(err.Error())
	}
	res.Converged = res.Error == ""
	res.VirtualS = time.Since(start).Seconds()
	res.DrainS = time.Since(loadEnd).Seconds()
	res.CPUS = cpuTime() - cpu0
	aborters.Wait()
	for i := range n {
		rec := ch.Recorder(i)
		res.Deliveries += rec.TotalDeliveries()
		res.Redelivered += rec.Redelivered()
	}
	mu.Lock()
	var lat []float64
	for id, at := range published {
		owner := int(binary.BigEndian.Uint32([]byte(id[:4])))
		size := int(binary.BigEndian.Uint32([]byte(id[12:])))
		if size != 100 {
			continue
		}
		for i := range n {
			if i == owner || at.Before(restarted[i]) {
				continue // a restarted node receives the older ones again, late by design
			}
			if got, ok := ch.Recorder(i).DeliveredAt(id); ok && !got.Before(at) {
				lat = append(lat, float64(got.Sub(at))/1e6)
			}
		}
	}
	mu.Unlock()
	slices.Sort(lat)
	res.Latency100BP50ms, res.Latency100BP99ms = quantile(lat, 0.5), quantile(lat, 0.99)
	var fetchFail uint64
	for i := range n {
		if c := ch.On(i); c != nil && s.Node(i) != nil {
			fetchFail += c.Stats().FetchFailures
		}
	}
	res.FetchFailures = fetchFail
	res.Restarts = s.Restarts()
	s.Close()
}

// publish is node's application: it publishes at each step's rate, and
// skips what falls while the node is down (a crashed replica publishes
// nothing).
func publish(sh *shape, ch *abcasttest.Channel, node int, start time.Time, down *atomic.Bool,
	aborts chan<- broadcast.ArtifactID, mu *sync.Mutex, published map[broadcast.ArtifactID]time.Time, res *Result) {
	defer close(aborts)
	k := 0
	at := start
	for step, rate := range sh.rates {
		stepEnd := start.Add(time.Duration(step+1) * *phase)
		if node == 0 && step == 1 && *large > 0 {
			publishOne(ch, node, k, *large, down, aborts, mu, published, res)
			k++
		}
		for interval := time.Second / time.Duration(rate); at.Before(stepEnd); at = at.Add(interval) {
			time.Sleep(time.Until(at))
			publishOne(ch, node, k, sh.size(node, k), down, aborts, mu, published, res)
			k++
		}
		at = stepEnd
	}
}

// publishOne publishes artifact k of node (its id says whose it is and its
// size), retrying while the channel pushes back.
func publishOne(ch *abcasttest.Channel, node, k, size int, down *atomic.Bool,
	aborts chan<- broadcast.ArtifactID, mu *sync.Mutex, published map[broadcast.ArtifactID]time.Time, res *Result) {
	var id [16]byte
	binary.BigEndian.PutUint32(id[:4], uint32(node))
	binary.BigEndian.PutUint64(id[4:12], uint64(k))
	binary.BigEndian.PutUint32(id[12:], uint32(size))
	payload := make([]byte, size)
	binary.BigEndian.PutUint64(payload, splitmix(uint64(k)^uint64(node)<<40))
	a := broadcast.Artifact{ID: broadcast.ArtifactID(id[:]), Payload: payload}
	for !down.Load() {
		now := time.Now()
		err := ch.Publish(node, a)
		if err == nil {
			mu.Lock()
			published[a.ID] = now
			res.Published++
			res.PublishedMB += float64(size) / 1e6
			mu.Unlock()
			if *lifetime > 0 {
				aborts <- a.ID
			}
			return
		}
		if !errors.Is(err, actors.ErrBusy) && !errors.Is(err, broadcast.ErrSlotsExhausted) {
			return // the node is going down
		}
		time.Sleep(time.Millisecond) // the channel's back-pressure
	}
}

// abortLater aborts each of node's artifacts -lifetime after it was
// published, in publish order, until publish closes ids. While the node is
// down it waits: the kit republishes a restarted node's live artifacts, and
// those that fell due meanwhile are aborted as soon as it is back.
func abortLater(ch *abcasttest.Channel, node int, down *atomic.Bool, ids <-chan broadcast.ArtifactID,
	mu *sync.Mutex, published map[broadcast.ArtifactID]time.Time) {
	for id := range ids {
		mu.Lock()
		due := published[id].Add(*lifetime)
		mu.Unlock()
		time.Sleep(time.Until(due))
		for {
			for down.Load() {
				time.Sleep(100 * time.Millisecond)
			}
			err := ch.Abort(node, id)
			if err == nil || !errors.Is(err, actors.ErrBusy) {
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
}

// writeProfiles writes the heap and goroutine profiles as
// <dir>/heap-<suffix>.pb.gz and goroutine-<suffix>.pb.gz.
func writeProfiles(t *testing.T, suffix string) {
	if err := os.MkdirAll(*profileDir, 0o755); err != nil {
		t.Fatal(err)
	}
	runtime.GC() // the heap profile shows the heap as of the last GC
	for _, p := range []string{"heap", "goroutine"} {
		f, err := os.Create(filepath.Join(*profileDir, fmt.Sprintf("%s-%s.pb.gz", p, suffix)))
		if err != nil {
			t.Fatal(err)
		}
		if err := pprof.Lookup(p).WriteTo(f, 0); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
}

// idleFigures returns the live heap after a GC, in MB, and the goroutines.
func idleFigures() (float64, int) {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return float64(m.HeapAlloc) / (1 << 20), runtime.NumGoroutine()
}

// cpuTime is the process's user and system CPU time in seconds.
func cpuTime() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))]
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " …"
	}
	return s
}
