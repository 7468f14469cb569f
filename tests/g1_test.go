// Package tests holds the cross-package suites: whole nodes (actors,
// transport, cores) on a simulated network inside testing/synctest, on real
// QUIC over loopback, and against hostile peers.
package tests

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"testing/synctest"
	"time"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/internal/testnet"
)

// workload drives a cluster: publishes, aborts, partitions, a restart.
type workload struct {
	t       *testing.T
	c       *testnet.Cluster
	rng     *rand.Rand
	chans   []*actors.Channel
	recs    []*testnet.Recorder
	live    map[broadcast.ArtifactID]int // id -> publisher
	pool    []map[broadcast.ArtifactID]broadcast.Artifact
	seq     int
	aborts  int
	aborted []broadcast.ArtifactID
}

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 7)) }

func newWorkload(t *testing.T, c *testnet.Cluster, seed uint64) *workload {
	w := &workload{t: t, c: c, rng: newRand(seed), live: map[broadcast.ArtifactID]int{}}
	w.chans = make([]*actors.Channel, len(c.IDs))
	w.recs = make([]*testnet.Recorder, len(c.IDs))
	w.pool = make([]map[broadcast.ArtifactID]broadcast.Artifact, len(c.IDs))
	for i := range c.IDs {
		w.pool[i] = map[broadcast.ArtifactID]broadcast.Artifact{}
		w.open(i)
	}
	return w
}

func (w *workload) open(i int) {
	r := testnet.NewRecorder()
	ch, err := w.c.Nodes[i].OpenChannel(actors.ChannelConfig{Name: "consensus", Consume: r.Consume})
	if err != nil {
		w.t.Fatal(err)
	}
	w.chans[i], w.recs[i] = ch, r
}

var sizes = []int{200, 700, 3_000, 40_000, 300_000, 2 << 20}

func (w *workload) publish(i int) {
	w.seq++
	size := sizes[w.rng.IntN(len(sizes))]
	a := broadcast.Artifact{ID: broadcast.ArtifactID(fmt.Sprintf("n%d-%d", i, w.seq)), Payload: make([]byte, size), LatencySensitive: w.rng.IntN(5) == 0}
	for k := 0; k < len(a.Payload); k += 97 {
		a.Payload[k] = byte(w.seq)
	}
	if err := w.chans[i].Publish(a); err != nil {
		w.t.Fatalf("publish on %d: %v", i, err)
	}
	w.live[a.ID] = i
	w.pool[i][a.ID] = a
}

func (w *workload) abortRandom() {
	var ids []broadcast.ArtifactID
	for id, owner := range w.live {
		if w.c.Nodes[owner] != nil {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return
	}
	slicesSort(ids)
	id := ids[w.rng.IntN(len(ids))]
	owner := w.live[id]
	if err := w.chans[owner].Abort(id); err != nil {
		w.t.Fatalf("abort %s on %d: %v", id, owner, err)
	}
	delete(w.live, id)
	delete(w.pool[owner], id)
	w.aborts++
	w.aborted = append(w.aborted, id)
}

// restart stops node i and starts it with fresh state; its application
// publishes its live artifacts again, as a replica restoring its pool would.
func (w *workload) restart(i int) {
	w.c.Stop(i)
	w.c.Start(i)
	w.open(i)
	for _, a := range w.pool[i] {
		if err := w.chans[i].Publish(a); err != nil {
			w.t.Fatalf("republish on %d: %v", i, err)
		}
	}
}

// converge waits until every node holds exactly the live artifacts of the
// others, then checks nothing was delivered twice.
func (w *workload) converge(within time.Duration) {
	w.t.Helper()
	testnet.Eventually(w.t, within, func() error {
		for i, r := range w.recs {
			held := map[broadcast.ArtifactID]bool{}
			for _, id := range r.Held() {
				held[id] = true
			}
			for id, owner := range w.live {
				if owner != i && !held[id] {
					return fmt.Errorf("G1: node %d lacks %s (published by %d); at %d: %s; at publisher: %s", i, id, owner,
						i, w.chans[i].Inspect(id), w.chans[owner].Inspect(id))
				}
				delete(held, id)
			}
			for id := range held {
				return fmt.Errorf("G3: node %d still holds aborted %s", i, id)
			}
		}
		return nil
	})
	for i, r := range w.recs {
		if p := r.Problems(); len(p) > 0 {
			w.t.Fatalf("G2: node %d: %v", i, p)
		}
		for id, owner := range w.live {
			if owner != i && r.Deliveries(id) != 1 {
				w.t.Fatalf("G2: node %d delivered %s %d times", i, id, r.Deliveries(id))
			}
		}
		// An aborted artifact is delivered at most once, never again
		// after its withdrawal.
		for _, id := range w.aborted {
			if r.Deliveries(id) > 1 {
				w.t.Fatalf("G3: node %d delivered aborted %s %d times", i, id, r.Deliveries(id))
			}
		}
	}
}

func slicesSort(ids []broadcast.ArtifactID) {
	for i := 1; i < len(ids); i++ {
		for j := i; j > 0 && ids[j] < ids[j-1]; j-- {
			ids[j], ids[j-1] = ids[j-1], ids[j]
		}
	}
}

func testSeed(t *testing.T) uint64 {
	if v := os.Getenv("ABCAST_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	return uint64(time.Now().UnixNano() % 1_000_000)
}

// g1 runs the fault scenario of issue 5: every node publishes mixed sizes,
// half of the artifacts are aborted at random times, links are cut and
// heal, one node restarts. Afterwards every non-aborted artifact is
// delivered exactly once everywhere (G1, G2) and aborted ones are gone (G3).
func g1(t *testing.T, c *testnet.Cluster, seed uint64, perNode int, step func(time.Duration)) *workload {
	c.StartAll()
	w := newWorkload(t, c, seed)
	n := len(c.IDs)
	restarted := false
	for round := range perNode {
		for i := range n {
			w.publish(i)
			if w.rng.IntN(2) == 0 {
				w.abortRandom()
			}
		}
		switch {
		case round == perNode/3:
			a, b := w.rng.IntN(n), w.rng.IntN(n)
			if a != b {
				c.Cut(a, b)
				step(8 * time.Second) // longer than the idle timeout: the connection dies
				c.Heal(a, b)
			}
		case round == perNode/2 && !restarted:
			restarted = true
			w.restart(w.rng.IntN(n))
		}
		step(time.Duration(w.rng.IntN(500)) * time.Millisecond)
	}
	w.converge(5 * time.Minute)
	t.Logf("seed %d: %d nodes, %d live artifacts, %d aborted, all delivered exactly once", seed, n, len(w.live), w.aborts)
	return w
}

func TestG1Simulated(t *testing.T) {
	for _, n := range []int{4, 7} {
		t.Run(fmt.Sprintf("nodes=%d", n), func(t *testing.T) {
			seed := testSeed(t)
			t.Logf("seed %d (set ABCAST_SEED to replay the workload)", seed)
			synctest.Test(t, func(t *testing.T) {
				cfg := actors.DefaultConfig()
				c := testnet.NewSim(t, n, cfg, testnet.SimOptions{Latency: 50 * time.Millisecond, Loss: 0.05, Seed: seed})
				per := 8
				if n > 4 {
					per = 5
				}
				g1(t, c, seed, per, time.Sleep)
				c.CloseInBubble()
			})
		})
	}
}

func TestG1RealQUIC(t *testing.T) {
	for _, n := range []int{4, 7} {
		t.Run(fmt.Sprintf("nodes=%d", n), func(t *testing.T) {
			seed := testSeed(t)
			t.Logf("seed %d (set ABCAST_SEED to replay the workload)", seed)
			cfg := actors.DefaultConfig()
			cfg.Receiver.FetchTimeoutMin = 2 * time.Second
			c := testnet.NewQUIC(t, n, cfg)
			testnet.NewQUICFaulty(t, c, 0.05, 5*time.Millisecond, seed)
			g1(t, c, seed, 10-n, time.Sleep)
		})
	}
}
