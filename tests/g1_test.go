// Package tests holds the cross-package suites: whole nodes (actors,
// transport, cores) on a simulated network inside testing/synctest, on real
// QUIC over loopback, and against hostile peers.
package tests

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"testing"
	"testing/synctest"
	"time"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/actors/abcasttest"
	"github.com/abcast/abcast/broadcast"
)

// workload drives a subnet's "consensus" channel: publishes of mixed
// sizes, aborts, partitions, a restart. The kit's Channel remembers what
// is live, so converge can check G1-G3 with payloads.
type workload struct {
	t        *testing.T
	s        *abcasttest.Subnet
	ch       *abcasttest.Channel
	rng      *rand.Rand
	seq      int
	aborts   int
	cuts     int
	restarts int
}

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 7)) }

func newWorkload(t *testing.T, s *abcasttest.Subnet, seed uint64) *workload {
	return &workload{t: t, s: s, ch: s.OpenChannel("consensus", abcasttest.ChannelOptions{}), rng: newRand(seed)}
}

// sizes are the payload sizes the workload draws from: pushed, advertised
// and multi-chunk. Under the race detector the 2 MiB size is left out:
// every byte costs ~20× there (a seed that drew several 2 MiB artifacts
// took 6 minutes at 7 nodes, against 17 s without it), and CI runs the
// full sizes without the race detector as well.
var sizes = func() []int {
	if raceBuild {
		return []int{200, 700, 3_000, 40_000, 300_000}
	}
	return []int{200, 700, 3_000, 40_000, 300_000, 2 << 20}
}()

// publish publishes an artifact of a random size on node i; its payload
// depends on its sequence number, so a payload swapped for another's is
// caught.
func (w *workload) publish(i int) broadcast.Artifact {
	w.seq++
	size := sizes[w.rng.IntN(len(sizes))]
	a := broadcast.Artifact{ID: broadcast.ArtifactID(fmt.Sprintf("n%d-%d", i, w.seq)), Payload: make([]byte, size), LatencySensitive: w.rng.IntN(5) == 0}
	for k := 0; k < len(a.Payload); k += 97 {
		a.Payload[k] = byte(w.seq)
	}
	if err := w.ch.Publish(i, a); err != nil {
		w.t.Fatalf("publish on %d: %v", i, err)
	}
	return a
}

// abortRandom aborts a live artifact of a running node.
func (w *workload) abortRandom() {
	var ids []broadcast.ArtifactID
	live := w.ch.Live()
	for id, owner := range live {
		if w.s.Node(owner) != nil {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return
	}
	slices.Sort(ids)
	id := ids[w.rng.IntN(len(ids))]
	if err := w.ch.Abort(live[id], id); err != nil {
		w.t.Fatalf("abort %s on %d: %v", id, live[id], err)
	}
	w.aborts++
}

// restart stops node i and starts it with fresh state; the kit publishes
// its application's live artifacts again, as a replica restoring its pool
// would.
func (w *workload) restart(i int) {
	w.s.Restart(i)
	w.restarts++
}

// converge waits until every node holds exactly the live artifacts of the
// others with their published payloads (the kit's CheckDelivered: G1, G2,
// G3), then checks that each was delivered once in the node's current life
// and that no aborted artifact was delivered twice.
func (w *workload) converge(within time.Duration) {
	w.t.Helper()
	w.ch.AssertDelivered(w.t, within)
	live := w.ch.Live()
	for i := range w.s.N() {
		if w.s.Node(i) == nil {
			continue
		}
		r := w.ch.Recorder(i)
		for id, owner := range live {
			if owner != i && w.s.Node(owner) != nil && r.LifeDeliveries(id) != 1 {
				w.t.Fatalf("G2: node %d delivered %s %d times in its current life", i, id, r.LifeDeliveries(id))
			}
		}
		// An aborted artifact is delivered at most once, never again
		// after its withdrawal.
		for _, id := range w.ch.Aborted() {
			if r.LifeDeliveries(id) > 1 {
				w.t.Fatalf("G3: node %d delivered aborted %s %d times", i, id, r.LifeDeliveries(id))
			}
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
// half of the artifacts are aborted at random times, a link is cut for
// longer than the idle timeout and heals, then one node restarts (always
// in distinct rounds, and always two distinct nodes for the cut).
// Afterwards every non-aborted artifact is delivered exactly once
// everywhere with its payload (G1, G2) and aborted ones are gone (G3).
func g1(t *testing.T, s *abcasttest.Subnet, seed uint64, perNode int) *workload {
	t.Helper()
	if perNode < 3 {
		t.Fatalf("g1 needs at least 3 rounds (cut, restart, and one after), got %d", perNode)
	}
	s.StartAll()
	w := newWorkload(t, s, seed)
	n := s.N()
	cutRound, restartRound := perNode/3, perNode/3+1
	for round := range perNode {
		for i := range n {
			w.publish(i)
			if w.rng.IntN(2) == 0 {
				w.abortRandom()
			}
		}
		if round == cutRound {
			a, b := w.rng.IntN(n), w.rng.IntN(n-1)
			if b >= a {
				b++
			}
			s.Cut(a, b)
			time.Sleep(8 * time.Second) // longer than the idle timeout: the connection dies
			s.Heal(a, b)
			w.cuts++
		}
		if round == restartRound {
			w.restart(w.rng.IntN(n))
		}
		time.Sleep(time.Duration(w.rng.IntN(500)) * time.Millisecond)
	}
	w.converge(5 * time.Minute)
	if w.cuts != 1 || w.restarts != 1 {
		t.Fatalf("the scenario cut %d links and restarted %d nodes, want 1 and 1", w.cuts, w.restarts)
	}
	t.Logf("seed %d: %d nodes, %d live artifacts, %d aborted, one link cut, one node restarted; all delivered exactly once with their payloads",
		seed, n, len(w.ch.Live()), w.aborts)
	return w
}

func TestG1Simulated(t *testing.T) {
	for _, n := range []int{4, 7} {
		t.Run(fmt.Sprintf("nodes=%d", n), func(t *testing.T) {
			seed := testSeed(t)
			t.Logf("seed %d (set ABCAST_SEED to replay the workload)", seed)
			synctest.Test(t, func(t *testing.T) {
				s := abcasttest.NewSubnet(t, n, abcasttest.Options{Latency: 50 * time.Millisecond, Loss: 0.05, Seed: seed})
				per := 8
				if n > 4 {
					per = 5
				}
				g1(t, s, seed, per)
				if st := s.Network().Stats(); st.DroppedLoss == 0 || st.DroppedCut == 0 {
					t.Fatalf("faults did not happen: %+v", st)
				}
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
			s := abcasttest.NewSubnet(t, n, abcasttest.Options{Backend: abcasttest.LoopbackQUIC, Config: cfg,
				Latency: 5 * time.Millisecond, Loss: 0.05, Seed: seed})
			g1(t, s, seed, max(3, 10-n))
			if st := s.Network().Stats(); st.DroppedLoss == 0 || st.DroppedCut == 0 {
				t.Fatalf("faults did not happen: %+v", st)
			}
		})
	}
}
