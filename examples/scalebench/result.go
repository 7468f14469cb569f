package main

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"time"
)

// Result is the JSON line of one run (one N).
type Result struct {
	Bench     string  `json:"bench"` // "scale"
	System    string  `json:"system"`
	Label     string  `json:"label,omitempty"`
	Nodes     int     `json:"nodes"`
	Seed      uint64  `json:"seed"`
	Rates     []int   `json:"rates"`
	PhaseS    float64 `json:"phase_s"`
	LatencyMs float64 `json:"latency_ms"`
	Loss      float64 `json:"loss"`
	LifetimeS float64 `json:"lifetime_s"`
	DownS     float64 `json:"down_s"`
	GoVersion string  `json:"go"`

	// What happened.
	Published        int     `json:"published"`
	PublishedMB      float64 `json:"published_MB"`
	Deliveries       int     `json:"deliveries"`
	Redelivered      int     `json:"redelivered"`
	FetchFailures    uint64  `json:"fetch_failures"`
	Restarts         uint64  `json:"actor_restarts"`
	Converged        bool    `json:"converged"`
	Error            string  `json:"error,omitempty"`
	Latency100BP50ms float64 `json:"latency_100B_p50_ms"`
	Latency100BP99ms float64 `json:"latency_100B_p99_ms"`

	// Time: virtual (the simulation's) and real.
	ConnectS float64 `json:"connect_s"` // virtual, until every pair is connected
	VirtualS float64 `json:"virtual_s"` // virtual, from the first publish to convergence
	DrainS   float64 `json:"drain_s"`   // virtual, from the end of the load to convergence
	WallS    float64 `json:"wall_s"`    // real, the whole run

	// Footprint: the process's, and divided by N.
	IdleHeapMB            float64 `json:"idle_heap_MB"` // live heap after a GC, connected and idle
	IdleGoroutines        int     `json:"idle_goroutines"`
	IdleHeapPerNodeMB     float64 `json:"idle_heap_per_node_MB"`
	IdleGoroutinesPerNode float64 `json:"idle_goroutines_per_node"`
	PeakHeapMB            float64 `json:"peak_heap_MB"` // /memory/classes/heap/objects:bytes
	PeakLiveMB            float64 `json:"peak_live_MB"` // /gc/heap/live:bytes
	PeakHeldMB            float64 `json:"peak_held_MB"` // payload bytes the consumers held, all nodes
	PeakGoroutines        int     `json:"peak_goroutines"`
	PeakHeapPerNodeMB     float64 `json:"peak_heap_per_node_MB"`
	PeakLivePerNodeMB     float64 `json:"peak_live_per_node_MB"`
	PeakGoroutinesPerNode float64 `json:"peak_goroutines_per_node"`
	CPUS                  float64 `json:"cpu_s"`
	CPUPerDeliveryUs      float64 `json:"cpu_us_per_delivery"`
}

func (r *Result) finish(s *sampler) {
	mb := func(b uint64) float64 { return float64(b) / (1 << 20) }
	r.PeakHeapMB, r.PeakLiveMB, r.PeakGoroutines = mb(s.heap.Load()), mb(s.live.Load()), int(s.goroutines.Load())
	r.PeakHeldMB = mb(uint64(s.held.Load()))
	n := float64(r.Nodes)
	r.IdleHeapPerNodeMB, r.IdleGoroutinesPerNode = r.IdleHeapMB/n, float64(r.IdleGoroutines)/n
	r.PeakHeapPerNodeMB, r.PeakLivePerNodeMB, r.PeakGoroutinesPerNode = r.PeakHeapMB/n, r.PeakLiveMB/n, float64(r.PeakGoroutines)/n
	if r.Deliveries > 0 {
		r.CPUPerDeliveryUs = r.CPUS / float64(r.Deliveries) * 1e6
	}
}

func (r *Result) print() {
	b, err := json.Marshal(r)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(string(b))
}

// sampler keeps the peaks of the process's heap, live heap and goroutines,
// and of the payload bytes held (heldNow), reading them every interval of
// real time. It runs outside the synctest bubble, so its ticker is real.
type sampler struct {
	heap, live, goroutines atomic.Uint64
	held                   atomic.Int64
	heldNow                atomic.Pointer[func() int64]
	reset                  atomic.Bool
	done                   chan struct{}
	wg                     sync.WaitGroup
}

func startSampler(every time.Duration) *sampler {
	s := &sampler{done: make(chan struct{})}
	samples := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/gc/heap/live:bytes"},
		{Name: "/sched/goroutines:goroutines"},
	}
	s.wg.Go(func() {
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			if s.reset.Swap(false) {
				s.heap.Store(0)
				s.live.Store(0)
				s.goroutines.Store(0)
				s.held.Store(0)
			}
			metrics.Read(samples)
			storeMax(&s.heap, samples[0].Value.Uint64())
			storeMax(&s.live, samples[1].Value.Uint64())
			storeMax(&s.goroutines, samples[2].Value.Uint64())
			if f := s.heldNow.Load(); f != nil {
				if h := (*f)(); h > s.held.Load() {
					s.held.Store(h)
				}
			}
			select {
			case <-s.done:
				return
			case <-tick.C:
			}
		}
	})
	return s
}

// resetPeaks starts the peaks afresh from the next sample on.
func (s *sampler) resetPeaks() { s.reset.Store(true) }

func (s *sampler) stop() {
	close(s.done)
	s.wg.Wait()
}

// virtualSince returns the virtual seconds since the bubble started (the
// bubble's clock starts at 2000-01-01 UTC).
func (s *sampler) virtualSince(now time.Time) float64 {
	return now.Sub(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)).Seconds()
}

func storeMax(v *atomic.Uint64, x uint64) {
	for {
		old := v.Load()
		if x <= old || v.CompareAndSwap(old, x) {
			return
		}
	}
}
