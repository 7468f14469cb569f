package main

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/abcast/abcast/quicremote/transport/transportbench"
)

// rawInFlight is how many streams the baseline keeps open per connection,
// the abcast sender's default MaxInFlightPerPeer.
const rawInFlight = 64

// runRawFanout is the ceiling: one sender writes each of -count payloads of
// -size bytes to N-1 peers over bare quic-go (transportbench's raw pair:
// same TLS, one stream per payload, the receiver discards the bytes and
// answers one byte). Each peer has its own connection and rawInFlight
// concurrent streams. The sender's UDP bytes are not counted (the raw
// pairs own their sockets), so wire_MB is 0.
func runRawFanout(o options) (Result, error) {
	var pairs []transportbench.Pair
	defer func() {
		for _, p := range pairs {
			p.Close()
		}
	}()
	for range o.nodes - 1 {
		p, err := transportbench.NewRawPair(100)
		if err != nil {
			return Result{}, err
		}
		pairs = append(pairs, p)
	}
	msg := payload(0, o.size)
	lat := make([][]time.Duration, len(pairs))
	var failed atomic.Int64
	heap := startHeapPeak()
	use := usageNow()
	start := time.Now()
	var wg sync.WaitGroup
	for i, p := range pairs {
		var next atomic.Int64
		var mu sync.Mutex
		for range rawInFlight {
			wg.Go(func() {
				for next.Add(1) <= int64(o.count) {
					t0 := time.Now()
					if err := p.Do(context.Background(), msg); err != nil {
						failed.Add(1)
						continue
					}
					d := time.Since(t0)
					mu.Lock()
					lat[i] = append(lat[i], d)
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	r := Result{System: "quic-go-fanout", Nodes: o.nodes, Size: o.size, Count: o.count, Publishers: "one", Seconds: secs}
	all := slices.Concat(lat...)
	slices.Sort(all)
	r.GoodputMBps = float64(len(all)) * float64(o.size) / secs / 1e6
	r.MsgsPerS = float64(len(all)) / secs
	if len(all) > 0 {
		r.LatencyP50ms = float64(all[len(all)/2]) / 1e6
		r.LatencyP99ms = float64(all[len(all)*99/100]) / 1e6
		ms := make([]float64, len(all))
		for i, d := range all {
			ms[i] = float64(d) / 1e6
		}
		r.LatencyCDFms = percentiles(ms)
	}
	use.since(&r, float64(len(all))*float64(o.size))
	r.Label = o.label
	r.Missing = int(failed.Load())
	r.PeakHeapMB = heap.MB()
	return r, nil
}
