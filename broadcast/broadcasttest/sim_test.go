package broadcasttest

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"
)

// seedCount is how many seeds the sweep runs: SIM_SEEDS overrides; the race
// detector slows the simulation ten-fold, so race builds run fewer.
func seedCount(t *testing.T) int {
	if v := os.Getenv("SIM_SEEDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("SIM_SEEDS=%q: %v", v, err)
		}
		return n
	}
	if raceEnabled {
		return 100
	}
	if testing.Short() {
		return 50
	}
	return 1000
}

func run(t *testing.T, cfg Config) Result {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	res, err := s.Run()
	if err != nil {
		t.Fatalf("%v\nreplay: go test ./broadcast/broadcasttest -run 'TestSimReplay' -seed %d -nodes %d -byz %d", err, cfg.Seed, cfg.Nodes, cfg.Byzantine)
	}
	return res
}

// TestSimSeedSweep: for many seeds and subnet sizes 2..13, with loss,
// duplication, reordering, cuts, flaps, restarts and (from 4 nodes) a
// Byzantine minority, every non-aborted artifact of an honest node reaches
// every honest node once the faults heal (G1), exactly once and with the
// published bytes (G2), aborted ones end withdrawn (G3), and tables stay
// within their bounds (G4); invariants hold after every step.
func TestSimSeedSweep(t *testing.T) {
	n := seedCount(t)
	var total Result
	start := time.Now()
	for seed := range uint64(n) {
		cfg := DefaultConfig(seed)
		cfg.Nodes = 2 + int(seed%12)
		if cfg.Nodes >= 4 && seed%3 == 0 {
			cfg.Byzantine = (cfg.Nodes - 1) / 3
		}
		if cfg.Nodes > 7 {
			cfg.Ops = 80
		}
		res := run(t, cfg)
		total.Published += res.Published
		total.Aborted += res.Aborted
		total.Deliveries += res.Deliveries
		total.Withdrawals += res.Withdrawals
		total.Restarts += res.Restarts
		total.Cuts += res.Cuts
		total.Flaps += res.Flaps
		total.Lost += res.Lost
		total.ByzantineUpdates += res.ByzantineUpdates
		total.RefusedStale += res.RefusedStale
		total.RefusedOver += res.RefusedOver
		total.RefusedInvalid += res.RefusedInvalid
		total.Mismatch += res.Mismatch
		total.Events += res.Events
		if res.SettledAfter > total.SettledAfter {
			total.SettledAfter = res.SettledAfter
		}
	}
	t.Logf("%d seeds (nodes 2..13) in %v: published %d, aborted %d, deliveries %d, withdrawals %d, restarts %d, cuts %d, flaps %d, lost %d, byzantine updates %d, refused stale %d / over limit %d / invalid %d, mismatches %d, events %d, slowest settle %v",
		n, time.Since(start).Round(time.Millisecond), total.Published, total.Aborted, total.Deliveries, total.Withdrawals, total.Restarts,
		total.Cuts, total.Flaps, total.Lost, total.ByzantineUpdates, total.RefusedStale, total.RefusedOver, total.RefusedInvalid, total.Mismatch, total.Events, total.SettledAfter)
	if total.Mismatch == 0 || total.RefusedOver == 0 || total.Withdrawals == 0 || total.Restarts == 0 {
		t.Fatalf("the sweep did not exercise Byzantine input, withdrawals or restarts: %+v", total)
	}
}

func TestSimIsDeterministic(t *testing.T) {
	for _, seed := range []uint64{3, 17} {
		cfg := DefaultConfig(seed)
		cfg.Nodes, cfg.Byzantine = 7, 2
		a, b := run(t, cfg), run(t, cfg)
		if fmt.Sprint(a) != fmt.Sprint(b) {
			t.Fatalf("seed %d ran differently:\n%+v\n%+v", seed, a, b)
		}
	}
}

func TestSimWithoutFaultsConvergesQuickly(t *testing.T) {
	cfg := DefaultConfig(5)
	cfg.Faults, cfg.Loss, cfg.Duplicate = false, 0, 0
	res := run(t, cfg)
	if res.SettledAfter > 10*time.Second {
		t.Fatalf("fault-free run took %v of virtual time to settle", res.SettledAfter)
	}
}

func TestSimHeavyLoss(t *testing.T) {
	cfg := DefaultConfig(11)
	cfg.Loss = 0.2
	cfg.Nodes = 5
	run(t, cfg)
}

var (
	replaySeed  = flag.Uint64("seed", 0, "TestSimReplay: seed to replay")
	replayNodes = flag.Int("nodes", 4, "TestSimReplay: subnet size")
	replayByz   = flag.Int("byz", 0, "TestSimReplay: Byzantine nodes")
)

// TestSimReplay replays one seed printed by a failing run.
func TestSimReplay(t *testing.T) {
	cfg := DefaultConfig(*replaySeed)
	cfg.Nodes, cfg.Byzantine = *replayNodes, *replayByz
	res := run(t, cfg)
	t.Logf("%+v", res)
}
