package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"runtime/metrics"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Result is the one JSON line a run prints. This file is a copy of
// examples/bench/result.go (this module must not depend on the abcast
// module, nor abcast on libp2p); keep the two in step.
type Result struct {
	System        string  `json:"system"`
	Nodes         int     `json:"nodes"`
	Size          int     `json:"size"`
	Count         int     `json:"count"`
	Publishers    string  `json:"publishers"`
	AbortFraction float64 `json:"abort_fraction"`
	Seconds       float64 `json:"seconds"`
	GoodputMBps   float64 `json:"goodput_MBps"`
	MsgsPerS      float64 `json:"msgs_per_s"`
	LatencyP50ms  float64 `json:"latency_p50_ms"`
	LatencyP99ms  float64 `json:"latency_p99_ms"`
	Missing       int     `json:"missing"`
	Duplicates    int     `json:"duplicates"`
	WireMB        float64 `json:"wire_MB"`
	WastedMB      float64 `json:"wasted_MB"`
	PeakHeapMB    float64 `json:"peak_heap_MB"`
	// LatencyCDFms is the delivery latency at every percentile, 0 to 100
	// (101 values, ms, rounded to 10 µs), for CDF plots.
	LatencyCDFms []float64 `json:"latency_cdf_ms,omitempty"`
}

// percentiles returns sorted's values at percentiles 0, 1, ..., 100,
// rounded to 10 µs (sorted holds milliseconds).
func percentiles(sorted []float64) []float64 {
	if len(sorted) == 0 {
		return nil
	}
	out := make([]float64, 101)
	for p := range out {
		v := sorted[min(len(sorted)-1, p*len(sorted)/100)]
		out[p] = math.Round(v*100) / 100
	}
	return out
}

func (r Result) print() {
	b, err := json.Marshal(r)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(string(b))
}

// tally records, per receiver, when each artifact arrived. Slot i of a
// receiver's row belongs to artifact i; only that receiver's consumer
// writes its row, the driver reads it after the run.
type tally struct {
	published []atomic.Int64 // unix nanos of the publish call, 0 if not yet
	arrived   [][]atomic.Int64
	dups      atomic.Int64
	useful    atomic.Int64 // first deliveries of artifacts that stay live
	last      atomic.Int64 // unix nanos of the newest useful delivery
	done      chan struct{}
	doneOnce  sync.Once
	want      int64
	aborted   []bool
}

func newTally(nodes, artifacts int, aborted []bool, want int64) *tally {
	t := &tally{published: make([]atomic.Int64, artifacts), arrived: make([][]atomic.Int64, nodes),
		done: make(chan struct{}), want: want, aborted: aborted}
	for i := range t.arrived {
		t.arrived[i] = make([]atomic.Int64, artifacts)
	}
	if want == 0 {
		close(t.done)
	}
	return t
}

// deliver notes artifact idx arriving at receiver node.
func (t *tally) deliver(node, idx int) {
	now := time.Now().UnixNano()
	if !t.arrived[node][idx].CompareAndSwap(0, now) {
		t.dups.Add(1)
		return
	}
	if t.aborted[idx] {
		return
	}
	for {
		old := t.last.Load()
		if old >= now || t.last.CompareAndSwap(old, now) {
			break
		}
	}
	if t.useful.Add(1) == t.want {
		t.doneOnce.Do(func() { close(t.done) })
	}
}

// summary fills the delivery fields of r from the tally: receivers[i]
// lists the nodes that must receive artifact i (when it is not aborted).
func (t *tally) summary(r *Result, start time.Time, size int, receivers func(idx int) []int) {
	var lat []float64
	missing := 0
	for idx := range t.published {
		if t.aborted[idx] {
			continue
		}
		pub := t.published[idx].Load()
		for _, node := range receivers(idx) {
			at := t.arrived[node][idx].Load()
			if at == 0 || pub == 0 {
				missing++
				continue
			}
			lat = append(lat, float64(at-pub)/1e6)
		}
	}
	end := time.Unix(0, t.last.Load())
	if t.last.Load() == 0 {
		end = time.Now()
	}
	r.Seconds = end.Sub(start).Seconds()
	delivered := float64(len(lat))
	r.GoodputMBps = delivered * float64(size) / r.Seconds / 1e6
	r.MsgsPerS = delivered / r.Seconds
	if len(lat) > 0 {
		slices.Sort(lat)
		r.LatencyP50ms = lat[len(lat)/2]
		r.LatencyP99ms = lat[len(lat)*99/100]
		r.LatencyCDFms = percentiles(lat)
	}
	r.Missing = missing
	r.Duplicates = int(t.dups.Load())
}

// heapPeak samples the live heap every few milliseconds until stopped and
// returns the largest value seen.
type heapPeak struct {
	stop chan struct{}
	done chan struct{}
	peak uint64
}

func startHeapPeak() *heapPeak {
	h := &heapPeak{stop: make(chan struct{}), done: make(chan struct{})}
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	go func() {
		defer close(h.done)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			metrics.Read(sample)
			h.peak = max(h.peak, sample[0].Value.Uint64())
			select {
			case <-h.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return h
}

// MB stops sampling and returns the peak in MB (10^6 bytes).
func (h *heapPeak) MB() float64 {
	close(h.stop)
	<-h.done
	return float64(h.peak) / 1e6
}
