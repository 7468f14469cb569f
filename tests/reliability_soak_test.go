package tests

import (
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/abcast/abcast/actors/abcasttest"
	"github.com/abcast/abcast/broadcast"
)

// Soak (opt-in: ABCAST_SOAK=1; ABCAST_SOAK_DURATION=10m by default): four
// nodes over real QUIC on loopback run a localnet-like workload for the
// whole duration — every node publishes a stream of mixed-size artifacts,
// keeps a bounded live set by aborting its oldest, and random links are
// cut for a few seconds (sometimes past the idle timeout). Every 10 s the
// test samples the delivered total, the heap in use after GC and the
// goroutine count. Passing means delivery kept progressing, the heap and
// goroutines stayed flat (last third of the run against the first third
// after a one-minute warm-up), and after the final heal every live
// artifact is everywhere exactly once.
func TestReliabilitySoak(t *testing.T) {
	if os.Getenv("ABCAST_SOAK") == "" {
		t.Skip("set ABCAST_SOAK=1 to run the soak (10 minutes)")
	}
	dur := 10 * time.Minute
	if v := os.Getenv("ABCAST_SOAK_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatal(err)
		}
		dur = d
	}
	seed := testSeed(t)
	t.Logf("seed %d, duration %v", seed, dur)
	rng := rand.New(rand.NewPCG(seed, 17))
	const n, liveCap = 4, 150
	// Real QUIC on loopback, behind the kit's network for the cuts below
	// (no loss, no latency).
	c := abcasttest.NewSubnet(t, n, abcasttest.Options{Backend: abcasttest.LoopbackQUIC, Seed: seed})
	c.StartAll()
	w := newWorkload(t, c, seed)
	owned := make([][]broadcast.ArtifactID, n) // per node, oldest first

	publish := func(i int) {
		w.seq++
		size := []int{200, 800, 3_000, 20_000, 100_000, 500_000}[rng.IntN(6)]
		a := broadcast.Artifact{ID: broadcast.ArtifactID(fmt.Sprintf("s%d-%d", i, w.seq)), Payload: make([]byte, size), LatencySensitive: rng.IntN(8) == 0}
		a.Payload[0] = byte(w.seq)
		if err := w.ch.Publish(i, a); err != nil {
			t.Fatalf("publish on %d: %v", i, err)
		}
		owned[i] = append(owned[i], a.ID)
		if len(owned[i]) > liveCap || rng.IntN(5) == 0 {
			k := 0
			if rng.IntN(3) == 0 {
				k = rng.IntN(len(owned[i]))
			}
			id := owned[i][k]
			owned[i] = slices.Delete(owned[i], k, k+1)
			if err := w.ch.Abort(i, id); err != nil {
				t.Fatalf("abort %s: %v", id, err)
			}
			w.aborts++
		}
	}
	delivered := func() uint64 {
		var d uint64
		for i := range n {
			d += w.ch.On(i).Stats().Delivered
		}
		return d
	}
	type sample struct {
		at         time.Duration
		delivered  uint64
		heap       uint64
		goroutines int
	}
	var samples []sample
	start := time.Now()
	pub := time.NewTicker(25 * time.Millisecond) // ~40 publishes/s in all
	defer pub.Stop()
	sampler := time.NewTicker(10 * time.Second)
	defer sampler.Stop()
	var cut [2]int
	cutUntil := time.Time{}
	nextCut := start.Add(15 * time.Second)
	for time.Since(start) < dur {
		select {
		case <-pub.C:
			publish(rng.IntN(n))
			now := time.Now()
			switch {
			case !cutUntil.IsZero() && now.After(cutUntil):
				c.Heal(cut[0], cut[1])
				cutUntil = time.Time{}
				nextCut = now.Add(time.Duration(10+rng.IntN(20)) * time.Second)
			case cutUntil.IsZero() && now.After(nextCut):
				a, b := rng.IntN(n), rng.IntN(n-1)
				if b >= a {
					b++
				}
				cut = [2]int{a, b}
				c.Cut(a, b)
				cutUntil = now.Add(time.Duration(2+rng.IntN(7)) * time.Second)
			}
		case <-sampler.C:
			runtime.GC()
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			s := sample{time.Since(start).Round(time.Second), delivered(), m.HeapInuse, runtime.NumGoroutine()}
			samples = append(samples, s)
			t.Logf("t=%v delivered %d, heap in use %.1f MiB, goroutines %d, live %d", s.at, s.delivered, mib(s.heap), s.goroutines, len(w.ch.Live()))
		}
	}
	if !cutUntil.IsZero() {
		c.Heal(cut[0], cut[1])
	}
	w.converge(2 * time.Minute)

	// Flat: compare the last third with the first third after warm-up.
	var steady []sample
	for _, s := range samples {
		if s.at > time.Minute {
			steady = append(steady, s)
		}
	}
	if len(steady) < 6 {
		t.Logf("run too short to judge flatness (%d steady samples)", len(steady))
		return
	}
	third := len(steady) / 3
	avg := func(ss []sample) (heap float64, gor float64) {
		for _, s := range ss {
			heap += float64(s.heap)
			gor += float64(s.goroutines)
		}
		return heap / float64(len(ss)), gor / float64(len(ss))
	}
	h0, g0 := avg(steady[:third])
	h1, g1 := avg(steady[len(steady)-third:])
	t.Logf("steady state: heap %.1f -> %.1f MiB, goroutines %.0f -> %.0f, %d delivered, %d aborted", h0/(1<<20), h1/(1<<20), g0, g1, delivered(), w.aborts)
	if h1 > h0*1.25+8<<20 {
		t.Errorf("heap grew from %.1f to %.1f MiB", h0/(1<<20), h1/(1<<20))
	}
	if g1 > g0*1.2+20 {
		t.Errorf("goroutines grew from %.0f to %.0f", g0, g1)
	}
	for k := 1; k < len(samples); k++ {
		if samples[k].delivered == samples[k-1].delivered {
			t.Errorf("no delivery between %v and %v", samples[k-1].at, samples[k].at)
		}
	}
}
