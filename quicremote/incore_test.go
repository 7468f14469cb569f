package quicremote

import (
	"math/rand"
	"testing"
	"time"
)

// The receiving cores, in virtual time and under random events.

func inStep(t testing.TB, c *inCore, ev inEvent, now time.Time) inEffects {
	t.Helper()
	var fx inEffects
	c.Step(&ev, now, &fx)
	if err := c.CheckInvariants(); err != nil {
		t.Fatalf("after event %d at %v: %v", ev.kind, now.Sub(t0), err)
	}
	return fx
}

// Batches are acknowledged after every ackEvery at once, otherwise
// ackDelay after the first one not yet acknowledged (not after the last:
// a steady trickle is still acknowledged every ackDelay).
func TestInCoreAckSchedule(t *testing.T) {
	c := &inCore{cfg: inConfig{maxBacklog: 10, backlogWait: time.Second}}
	now := t0
	fx := inStep(t, c, inEvent{kind: inBatchDone}, now)
	if fx.ack || !fx.ackAt.Equal(now.Add(ackDelay)) || !fx.arm {
		t.Fatalf("first batch: %+v", fx)
	}
	// The shell wakes its acknowledgement writer only for a new deadline
	// (arm) or an acknowledgement due now.
	now = now.Add(ackDelay / 2)
	if fx = inStep(t, c, inEvent{kind: inBatchDone}, now); fx.ack || fx.arm || !fx.ackAt.Equal(t0.Add(ackDelay)) {
		t.Fatalf("second batch moved the deadline: %+v", fx)
	}
	if fx = inStep(t, c, inEvent{kind: inTick}, t0.Add(ackDelay-time.Nanosecond)); fx.ack {
		t.Fatalf("acknowledged early: %+v", fx)
	}
	if fx = inStep(t, c, inEvent{kind: inTick}, t0.Add(ackDelay)); !fx.ack || fx.ackN != 2 || !fx.ackAt.IsZero() {
		t.Fatalf("at the deadline: %+v", fx)
	}
	if fx = inStep(t, c, inEvent{kind: inTick}, t0.Add(time.Hour)); fx.ack || !fx.ackAt.IsZero() {
		t.Fatalf("nothing to acknowledge: %+v", fx)
	}
	for i := 1; i <= ackEvery; i++ {
		fx = inStep(t, c, inEvent{kind: inBatchDone}, t0.Add(time.Hour))
		if fx.ack != (i == ackEvery) {
			t.Fatalf("batch %d of a burst: %+v", i, fx)
		}
	}
	if fx.ackN != 2+ackEvery {
		t.Fatalf("burst acknowledged as %d", fx.ackN)
	}
}

// A full target makes the batch wait until BacklogWait after its first
// wait, then is refused and marked busy: its messages are refused at once
// (no more waiting) until it is seen below the bound. Other targets in the
// same batch wait no longer than what is left; the next batch gets a new
// budget.
func TestInCoreBacklog(t *testing.T) {
	c := &inCore{cfg: inConfig{maxBacklog: 10, backlogWait: time.Second}}
	now := t0
	ask := func(target string, queued int, retry bool) inEffects {
		return inStep(t, c, inEvent{kind: inBacklog, target: target, queued: queued, retry: retry}, now)
	}
	inStep(t, c, inEvent{kind: inBatchStart}, now)
	if fx := ask("a", 9, false); fx.answer != backlogDeliver {
		t.Fatalf("below the bound: %+v", fx)
	}
	fx := ask("a", 10, false)
	if fx.answer != backlogWait || !fx.stall || !fx.until.Equal(t0.Add(time.Second)) {
		t.Fatalf("at the bound: %+v", fx)
	}
	now = now.Add(time.Second - time.Nanosecond)
	if fx = ask("a", 12, true); fx.answer != backlogWait || fx.stall {
		t.Fatalf("retry before the end: %+v", fx)
	}
	now = now.Add(time.Nanosecond)
	if fx = ask("a", 12, true); fx.answer != backlogRefuse {
		t.Fatalf("at the end of the wait: %+v", fx)
	}
	if fx = ask("a", 12, false); fx.answer != backlogRefuse || fx.stall {
		t.Fatalf("busy target: %+v", fx)
	}
	// b in the same batch has no budget left.
	if fx = ask("b", 10, false); fx.answer != backlogRefuse {
		t.Fatalf("second full target in a spent batch: %+v", fx)
	}
	inStep(t, c, inEvent{kind: inBatchStart}, now)
	if fx = ask("a", 50, false); fx.answer != backlogRefuse {
		t.Fatalf("busy target in the next batch: %+v", fx)
	}
	if fx = ask("a", 3, false); fx.answer != backlogDeliver {
		t.Fatalf("drained: %+v", fx)
	}
	if fx = ask("a", 10, false); fx.answer != backlogWait || !fx.until.Equal(now.Add(time.Second)) {
		t.Fatalf("full again after draining: %+v", fx)
	}
}

// FuzzInCore: under random events the invariants hold, every handled batch
// is acknowledged at the latest ackDelay after it when ticks come when
// asked, a refusal happens only at the bound, and no batch waits longer in
// all than BacklogWait.
func FuzzInCore(f *testing.F) {
	f.Add(int64(1), []byte{0, 1, 1, 2, 3, 2, 2, 2, 2, 2, 2, 2, 2, 3})
	f.Fuzz(func(t *testing.T, seed int64, ops []byte) {
		rng := rand.New(rand.NewSource(seed))
		cfg := inConfig{maxBacklog: 1 + rng.Intn(5), backlogWait: time.Duration(rng.Intn(3)) * time.Second}
		c := &inCore{cfg: cfg}
		now := t0
		var due time.Time // when the core asked for a tick
		var oldest time.Time
		var batchStart, firstWait time.Time
		for _, op := range ops {
			if !due.IsZero() && now.After(due) {
				// The shell's timer fires on time, before what comes next.
				fx := inStep(t, c, inEvent{kind: inTick}, due)
				if !fx.ack {
					t.Fatalf("no acknowledgement at the time asked for (%v)", due.Sub(t0))
				}
				oldest, due = time.Time{}, time.Time{}
			}
			switch op % 4 {
			case 0:
				batchStart, firstWait = now, time.Time{}
				inStep(t, c, inEvent{kind: inBatchStart}, now)
			case 1:
				queued := rng.Intn(2 * cfg.maxBacklog)
				fx := inStep(t, c, inEvent{kind: inBacklog, target: string(rune('a' + rng.Intn(3))), queued: queued, retry: rng.Intn(2) == 0}, now)
				if fx.answer != backlogDeliver && queued < cfg.maxBacklog {
					t.Fatalf("refused or waited below the bound (%d < %d)", queued, cfg.maxBacklog)
				}
				if fx.answer == backlogWait {
					if firstWait.IsZero() {
						firstWait = now
					}
					if fx.until.Sub(firstWait) > cfg.backlogWait || !fx.until.After(now) {
						t.Fatalf("batch from %v (first wait %v) told to wait until %v", batchStart.Sub(t0), firstWait.Sub(t0), fx.until.Sub(t0))
					}
				}
			case 2:
				if oldest.IsZero() {
					oldest = now
				}
				fx := inStep(t, c, inEvent{kind: inBatchDone}, now)
				if fx.ack {
					oldest, due = time.Time{}, time.Time{}
				} else {
					due = fx.ackAt
				}
			case 3:
				fx := inStep(t, c, inEvent{kind: inTick}, now)
				if fx.ack {
					oldest, due = time.Time{}, time.Time{}
				} else {
					due = fx.ackAt
				}
			}
			if !oldest.IsZero() && now.Sub(oldest) > ackDelay {
				t.Fatalf("batch handled at %v unacknowledged at %v", oldest.Sub(t0), now.Sub(t0))
			}
			now = now.Add(time.Duration(rng.Int63n(int64(3 * ackDelay))))
		}
	})
}

// FuzzOrderCore: batches of several streams of one peer arrive in any
// order; the turn is held by one batch at a time, batches of one epoch are
// admitted in seq order from 0 with no gap, epochs only move forward, and
// a batch is stale only when a newer epoch began or its seq has passed.
func FuzzOrderCore(f *testing.F) {
	f.Add(int64(1), []byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9})
	f.Fuzz(func(t *testing.T, seed int64, ops []byte) {
		rng := rand.New(rand.NewSource(seed))
		var o orderCore
		type key struct{ conn, epoch uint64 }
		var last key
		var lastSeq uint64
		admitted := false
		holding := false
		for range ops {
			if holding && rng.Intn(2) == 0 {
				o.finish()
				holding = false
				if err := o.CheckInvariants(); err != nil {
					t.Fatal(err)
				}
				continue
			}
			k := key{uint64(1 + rng.Intn(3)), uint64(1 + rng.Intn(3))}
			seq := uint64(rng.Intn(4))
			before := o
			v, _ := o.admit(k.conn, k.epoch, seq)
			if err := o.CheckInvariants(); err != nil {
				t.Fatal(err)
			}
			newer := !before.started || k.conn > before.conn || k.conn == before.conn && k.epoch > before.epoch
			switch v {
			case orderGo:
				if holding {
					t.Fatal("two batches hold the turn")
				}
				holding = true
				if admitted && (k.conn < last.conn || k.conn == last.conn && k.epoch < last.epoch) {
					t.Fatalf("epoch %v admitted after %v", k, last)
				}
				if (admitted && k == last && seq != lastSeq+1) || ((!admitted || k != last) && seq != 0) {
					t.Fatalf("batch %d of %v admitted after %d of %v", seq, k, lastSeq, last)
				}
				admitted, last, lastSeq = true, k, seq
			case orderStale:
				older := !newer && (k.conn < before.conn || k.conn == before.conn && k.epoch < before.epoch)
				if !older && !(seq < o.next) {
					t.Fatalf("batch %d of %v stale with the order at %d of %d/%d", seq, k, o.next, o.conn, o.epoch)
				}
			}
		}
	})
}

// The shell steps the backlog events on the reading goroutine without its
// lock, and the acknowledgement events under it from two goroutines: the
// two parts of the core must not share a field. Run under -race (as CI
// does), an event that touched both parts fails here.
func TestInCorePartsApart(t *testing.T) {
	c := &inCore{cfg: inConfig{maxBacklog: 10, backlogWait: time.Second}}
	const n = 2000
	done := make(chan struct{})
	go func() {
		defer close(done)
		var fx inEffects
		for i := range n {
			c.Step(&inEvent{kind: inBatchStart}, t0, &fx)
			c.Step(&inEvent{kind: inBacklog, target: "a", queued: i % 20}, t0, &fx)
		}
	}()
	var fx inEffects
	for i := range n {
		c.Step(&inEvent{kind: inBatchDone}, t0.Add(time.Duration(i)*time.Millisecond), &fx)
		c.Step(&inEvent{kind: inTick}, t0.Add(time.Duration(i)*time.Millisecond), &fx)
	}
	<-done
	if c.handled != n {
		t.Fatalf("handled %d of %d batches", c.handled, n)
	}
	if err := c.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
}
