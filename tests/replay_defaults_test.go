package tests

import (
	"encoding/binary"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/actors/abcasttest"
	"github.com/abcast/abcast/broadcast"
)

// TestReplayDefaultsSmallLatency measures issue 15's target 5 in the replay
// shape with the library's default configuration: N nodes on a simulated
// network with 50 ms one-way latency (RTT 100 ms), every node publishing
// at a fixed rate for a few virtual seconds, 97% of the artifacts 100 B
// (pushed), 3% 10 KB (advertised and fetched, so fetches hold credits
// while pushes arrive). It reports the delivery latency of the 100 B
// artifacts (publish to delivery, every receiver) against the target of
// 10 × RTT at p99. Virtual time (synctest): the figures are simulation
// results, independent of the machine's load. Minutes of real time, so it
// runs only when ABCAST_REPLAY is set (to a seed):
//
//	ABCAST_REPLAY=1 go test -run TestReplayDefaultsSmallLatency -v -timeout 60m ./tests/
//
// ABCAST_REPLAY_SHAPES overrides the shapes ("13x500,71x50"),
// ABCAST_REPLAY_SECONDS the virtual seconds of publishing (2).
func TestReplayDefaultsSmallLatency(t *testing.T) {
	seedEnv := os.Getenv("ABCAST_REPLAY")
	if seedEnv == "" {
		t.Skip("set ABCAST_REPLAY=<seed> to run (minutes of real time)")
	}
	seed, err := strconv.ParseUint(seedEnv, 10, 64)
	if err != nil {
		t.Fatalf("ABCAST_REPLAY=%q: %v", seedEnv, err)
	}
	shapes := "13x500,71x50"
	if v := os.Getenv("ABCAST_REPLAY_SHAPES"); v != "" {
		shapes = v
	}
	for _, shape := range strings.Split(shapes, ",") {
		var n, rate int
		if _, err := fmt.Sscanf(shape, "%dx%d", &n, &rate); err != nil {
			t.Fatalf("shape %q: %v", shape, err)
		}
		dur := 2 * time.Second
		if v := os.Getenv("ABCAST_REPLAY_SECONDS"); v != "" {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("ABCAST_REPLAY_SECONDS=%q: %v", v, err)
			}
			dur = time.Duration(f * float64(time.Second))
		}
		t.Run(shape, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) { replaySmall(t, seed, n, rate, dur) })
		})
	}
}

func replaySmall(t *testing.T, seed uint64, n, rate int, duration time.Duration) {
	const rtt = 100 * time.Millisecond
	var mu sync.Mutex
	published := map[broadcast.ArtifactID]time.Time{}
	var lat []time.Duration
	s := abcasttest.NewSubnet(t, n, abcasttest.Options{Latency: rtt / 2, Seed: seed})
	s.StartAll()
	ch := s.OpenChannel("replay", abcasttest.ChannelOptions{Consume: func(int) func(actors.Event) {
		return func(ev actors.Event) {
			d, ok := ev.(*actors.Delivered)
			if !ok || len(d.Artifact.Payload) != 100 {
				return
			}
			mu.Lock()
			lat = append(lat, time.Since(published[d.Artifact.ID]))
			mu.Unlock()
		}
	}})
	must(t, abcasttest.Eventually(time.Minute, func() error {
		for i := range n {
			if got := len(s.Node(i).Transport().Peers()); got != n-1 {
				return fmt.Errorf("node %d has %d peers", i, got)
			}
		}
		return nil
	}))
	per := int(duration.Seconds() * float64(rate))
	small := 0
	start := time.Now()
	var wg sync.WaitGroup
	for node := range n {
		wg.Go(func() {
			for k := range per {
				time.Sleep(time.Until(start.Add(time.Duration(k) * time.Second / time.Duration(rate))))
				size := 100
				if (k+node)%33 == 32 {
					size = 10_000
				}
				var id [16]byte
				binary.BigEndian.PutUint64(id[:], uint64(node))
				binary.BigEndian.PutUint64(id[8:], uint64(k))
				a := broadcast.Artifact{ID: broadcast.ArtifactID(id[:]), Payload: make([]byte, size)}
				mu.Lock()
				published[a.ID] = time.Now()
				mu.Unlock()
				for {
					err := ch.Publish(node, a)
					if err == nil {
						break
					}
					time.Sleep(time.Millisecond) // ErrBusy or slots exhausted: the channel's back-pressure
				}
			}
		})
		for k := range per {
			if (k+node)%33 != 32 {
				small++
			}
		}
	}
	wg.Wait()
	want := small * (n - 1)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		mu.Lock()
		got := len(lat)
		mu.Unlock()
		if got >= want || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(lat)
	if len(lat) == 0 {
		t.Fatal("no 100 B deliveries")
	}
	p := func(q float64) time.Duration { return lat[min(len(lat)-1, int(q*float64(len(lat))))] }
	var fetchFail, fetches uint64
	for i := range n {
		st := ch.On(i).Stats()
		fetchFail += st.FetchFailures
		fetches += st.FetchAttempts
	}
	t.Logf("seed %d, N=%d × %d/s for %v, 50 ms one-way: 100 B deliveries %d of %d, p50 %v, p99 %v (%.1f× RTT), max %v; fetch requests %d, failed %d",
		seed, n, rate, duration, len(lat), want, p(0.5), p(0.99), float64(p(0.99))/float64(rtt), lat[len(lat)-1], fetches, fetchFail)
}
