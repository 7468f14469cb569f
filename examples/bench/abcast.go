package main

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/membership"
)

// subnet is N started nodes with the benchmark channel open on each.
type subnet struct {
	nodes []*actors.Node
	bench []*actors.Channel
	sent  []*atomic.Uint64 // UDP bytes sent per node
	// fetched[n] counts payload bytes node n received by fetch for
	// artifacts that are aborted (seen by the verifier).
	fetched []atomic.Int64
}

func (s *subnet) close() {
	for _, n := range s.nodes {
		if n != nil {
			_ = n.Close()
		}
	}
}

func (s *subnet) wire() uint64 {
	var t uint64
	for _, c := range s.sent {
		t += c.Load()
	}
	return t
}

func startSubnet(o options, w workload, t *tally) (*subnet, error) {
	s := &subnet{fetched: make([]atomic.Int64, o.nodes)}
	var ids []*membership.Identity
	var conns []countingConn
	var members []membership.Member
	for range o.nodes {
		id, err := membership.GenerateIdentity(rand.Reader)
		if err != nil {
			return nil, err
		}
		sent := new(atomic.Uint64)
		pc, err := listenCounting(sent)
		if err != nil {
			return nil, err
		}
		ids, conns, s.sent = append(ids, id), append(conns, pc), append(s.sent, sent)
		members = append(members, id.Member(pc.LocalAddr().String()))
	}
	snap, err := membership.NewSnapshot(1, members...)
	if err != nil {
		return nil, err
	}
	source, err := membership.NewStaticSource(snap)
	if err != nil {
		return nil, err
	}
	cfg := actors.DefaultConfig()
	// The library's defaults, but for the push threshold the workload
	// names: what is measured is what a user gets.
	cfg.Sender.PushThreshold = o.pushThreshold
	log := zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr}).Level(logLevel()).With().Timestamp().Logger()

	warm := make(chan struct{}, o.nodes*o.nodes)
	var warmCh []*actors.Channel
	for i := range o.nodes {
		n, err := actors.Start(cfg, ids[i], source, conns[i], log)
		if err != nil {
			s.close()
			return nil, fmt.Errorf("start node %d: %w", i, err)
		}
		s.nodes = append(s.nodes, n)
		wc, err := n.OpenChannel(actors.ChannelConfig{Name: "warmup", Consume: func(ev actors.Event) {
			if _, ok := ev.(*actors.Delivered); ok {
				warm <- struct{}{}
			}
		}})
		if err != nil {
			s.close()
			return nil, err
		}
		warmCh = append(warmCh, wc)
		node := i
		bc, err := n.OpenChannel(actors.ChannelConfig{
			Name: "bench",
			Consume: func(ev actors.Event) {
				if d, ok := ev.(*actors.Delivered); ok {
					if idx, ok := getIndex([]byte(d.Artifact.ID)); ok && idx < len(t.arrived[node]) {
						t.deliver(node, idx)
					}
				}
			},
			// The verifier sees every artifact a receiver got, before
			// delivery: count the fetched payloads of aborted ones.
			Verify: func(a broadcast.Artifact) error {
				if idx, ok := getIndex([]byte(a.ID)); ok && idx < len(w.aborted) && w.aborted[idx] && !pushed(o, a) {
					s.fetched[node].Add(int64(len(a.Payload)))
				}
				return nil
			},
		})
		if err != nil {
			s.close()
			return nil, err
		}
		s.bench = append(s.bench, bc)
	}
	// Every node publishes one tiny artifact on the warm-up channel; once
	// each has reached every peer all connections are up.
	for i, wc := range warmCh {
		if err := wc.Publish(broadcast.Artifact{ID: broadcast.ArtifactID(fmt.Sprint("warm-", i)), Payload: []byte{1}}); err != nil {
			s.close()
			return nil, err
		}
	}
	deadline := time.After(30 * time.Second)
	for range o.nodes * (o.nodes - 1) {
		select {
		case <-warm:
		case <-deadline:
			s.close()
			return nil, errors.New("subnet did not connect within 30 s")
		}
	}
	return s, nil
}

// pushed reports whether the sender pushes a (rather than advertising it).
func pushed(o options, a broadcast.Artifact) bool {
	return a.LatencySensitive || broadcast.EncodedSize(a) < o.pushThreshold
}

func artifactID(idx int) broadcast.ArtifactID {
	var b [8]byte
	putIndex(b[:], idx)
	return broadcast.ArtifactID(b[:])
}

// retry calls op until it stops failing with the channel's back-pressure
// errors; each refusal waits a millisecond.
func retry(op func() error) error {
	for {
		err := op()
		if errors.Is(err, actors.ErrBusy) || errors.Is(err, broadcast.ErrSlotsExhausted) {
			time.Sleep(time.Millisecond)
			continue
		}
		return err
	}
}

func runAbcast(o options) (Result, error) {
	w := newWorkload(o)
	t := newTally(o.nodes, o.count, w.aborted, w.expected())
	s, err := startSubnet(o, w, t)
	if err != nil {
		return Result{}, err
	}
	defer s.close()

	runtime.GC()
	wire0 := s.wire()
	heap := startHeapPeak()
	use := usageNow()
	start := time.Now()
	var pubErr atomic.Pointer[error]
	var wg, aborts sync.WaitGroup
	for p := range o.nodes {
		if o.publishers == "one" && p > 0 {
			break
		}
		ch := s.bench[p]
		wg.Go(func() {
			k := 0
			for idx := range o.count {
				if w.publisher(idx) != p {
					continue
				}
				if o.rate > 0 {
					time.Sleep(time.Until(start.Add(time.Duration(float64(k) / o.rate * float64(time.Second)))))
				}
				k++
				a := broadcast.Artifact{ID: artifactID(idx), Payload: payload(idx, o.size)}
				t.published[idx].Store(time.Now().UnixNano())
				if err := retry(func() error { return ch.Publish(a) }); err != nil {
					pubErr.Store(&err)
					return
				}
				if !w.aborted[idx] {
					continue
				}
				abort := func() {
					if err := retry(func() error { return ch.Abort(a.ID) }); err != nil {
						pubErr.Store(&err)
					}
				}
				if o.abortAfter == 0 {
					abort()
				} else {
					aborts.Add(1)
					time.AfterFunc(o.abortAfter, func() { defer aborts.Done(); abort() })
				}
			}
		})
	}
	wg.Wait()
	if e := pubErr.Load(); e != nil {
		return Result{}, *e
	}
	select {
	case <-t.done:
	case <-time.After(o.timeout):
		fmt.Fprintf(os.Stderr, "bench: timed out with %d of %d deliveries\n", t.useful.Load(), t.want)
	}
	aborts.Wait()
	// Let transfers of aborted artifacts that were still running finish or
	// be cancelled, so that the byte counts include them.
	time.Sleep(300 * time.Millisecond)

	r := Result{System: "abcast", Nodes: o.nodes, Size: o.size, Count: o.count, Publishers: o.publishers, AbortFraction: o.abortFraction}
	t.summary(&r, start, o.size, w.receivers)
	use.since(&r, float64(t.useful.Load())*float64(o.size))
	r.Label = o.label
	r.PeakHeapMB = heap.MB()
	r.WireMB = float64(s.wire()-wire0) / 1e6
	r.WastedMB = float64(wasted(o, w, s)) / 1e6
	if os.Getenv("BENCH_STATS") != "" {
		for i, ch := range s.bench {
			st := ch.Stats()
			fmt.Fprintf(os.Stderr, "node %d: sender %+v receiver %+v transmitted %d updateBytes %d fetchBytes %d fetchAttempts %d dead %d\n",
				i, st.Sender, st.Receiver, st.UpdatesTransmitted, st.UpdateBytesSent, st.FetchBytesServed, st.FetchAttempts, s.nodes[i].Stats().DeadLetters)
		}
	}
	return r, nil
}

// wasted estimates the bytes sent for artifacts that were aborted (see
// BENCHMARKS.md, "How wasted_MB is counted"):
//   - fetched payloads of aborted artifacts that reached a receiver whole
//     (counted by the verifier),
//   - every cancelled fetch as if its whole payload had been sent (an upper
//     bound: most are cancelled before or while being served),
//   - the slot updates (adverts or pushes, and clears) sent for aborted
//     artifacts: all updates sent minus one per non-aborted artifact and
//     receiver and minus syncs, at the channel's mean update size.
func wasted(o options, w workload, s *subnet) int64 {
	var total int64
	for i := range s.bench {
		total += s.fetched[i].Load()
		st := s.bench[i].Stats()
		total += int64(st.Receiver.FetchesCancelled) * int64(o.size)
	}
	var updates, bytes, syncs int64
	for _, ch := range s.bench {
		st := ch.Stats()
		// Only what the links put on the wire: updates that a publish
		// and abort in the same burst cancelled never left.
		updates += int64(st.UpdatesTransmitted)
		syncs += int64(st.Sender.SyncsSent)
		bytes += int64(st.UpdateBytesSent)
	}
	forAborted := updates - syncs - int64(o.count-w.abortN)*int64(o.nodes-1)
	if updates > 0 && forAborted > 0 {
		total += forAborted * bytes / updates
	}
	return total
}

// logLevel is warn, or what BENCH_LOG names (debug, info, ...).
func logLevel() zerolog.Level {
	if l, err := zerolog.ParseLevel(os.Getenv("BENCH_LOG")); err == nil && os.Getenv("BENCH_LOG") != "" {
		return l
	}
	return zerolog.WarnLevel
}
