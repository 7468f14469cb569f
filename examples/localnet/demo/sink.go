package demo

import (
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/abcast/abcast/actors"
)

// sink is one node's consumer on every channel: it checks each delivered
// payload, counts deliveries per artifact (a second one while held, or
// ever, breaks "exactly once"), and measures delivery latency from the
// publish time carried in the attribute.
type sink struct {
	mu         sync.Mutex
	deliveries map[key]int
	held       map[key]bool
	problems   []string // corrupt payloads, duplicates, stray withdrawals
	window     []time.Duration
	all        []time.Duration
	delivered  uint64
	withdrawn  uint64
}

func newSink() *sink {
	return &sink{deliveries: map[key]int{}, held: map[key]bool{}}
}

func (s *sink) consumer(ch string) func(actors.Event) {
	return func(ev actors.Event) {
		switch e := ev.(type) {
		case *actors.Delivered:
			published, ok := checkArtifact(e.Artifact) // outside the lock: hashes up to MiBs
			latency := time.Since(published)
			k := key{ch, e.Artifact.ID}
			s.mu.Lock()
			defer s.mu.Unlock()
			s.delivered++
			s.deliveries[k]++
			if !ok {
				s.problems = append(s.problems, fmt.Sprintf("%s: payload does not match its id", k))
			} else {
				s.window = append(s.window, latency)
				s.all = append(s.all, latency)
			}
			if n := s.deliveries[k]; n > 1 {
				s.problems = append(s.problems, fmt.Sprintf("%s: delivered %d times", k, n))
			}
			s.held[k] = true
		case *actors.Withdrawn:
			k := key{ch, e.ID}
			s.mu.Lock()
			defer s.mu.Unlock()
			s.withdrawn++
			if !s.held[k] {
				s.problems = append(s.problems, fmt.Sprintf("%s: withdrawn but not delivered", k))
			}
			delete(s.held, k)
		}
	}
}

func (s *sink) holds(k key) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held[k]
}

func (s *sink) count(k key) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.deliveries[k]
}

// sinkView is a copy of a sink's counters.
type sinkView struct {
	delivered, withdrawn uint64
	window, all          []time.Duration
	problems             []string
}

// view copies the counters; drain empties the latency window.
func (s *sink) view(drain bool) sinkView {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := sinkView{delivered: s.delivered, withdrawn: s.withdrawn, window: slices.Clone(s.window), all: slices.Clone(s.all), problems: slices.Clone(s.problems)}
	if drain {
		s.window = s.window[:0]
	}
	return v
}

// percentile returns the nearest-rank q-quantile of ds (0 when empty).
func percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.999999) - 1
	return s[max(0, min(i, len(s)-1))]
}

func fmtLatency(ds []time.Duration, q float64) string {
	if len(ds) == 0 {
		return "-"
	}
	d := percentile(ds, q)
	switch {
	case d >= 10*time.Second:
		return d.Round(100 * time.Millisecond).String()
	case d >= time.Second:
		return d.Round(10 * time.Millisecond).String()
	}
	return d.Round(100 * time.Microsecond).String()
}
