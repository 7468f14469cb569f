package quicremote

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

// Mutation tests for the remote cores' CheckInvariants, in the manner of
// broadcast/invariants_test.go: each invariant is broken on purpose in a
// freshly built valid state, and CheckInvariants must report that very
// invariant. Without them a CheckInvariants that returns nil would leave
// the core tests and fuzz targets green.

// mutation is one invariant broken on purpose in a state built by base.
type mutation[S any] struct {
	name, want string
	base       func(t *testing.T) S
	breakIt    func(s S)
}

// checkMutations builds each case's state, checks it is valid, breaks it
// and requires CheckInvariants to name what was broken.
func checkMutations[S interface{ CheckInvariants() error }](t *testing.T, cases []mutation[S]) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := c.base(t)
			if err := s.CheckInvariants(); err != nil {
				t.Fatalf("the state before breaking it is already invalid: %v", err)
			}
			c.breakIt(s)
			err := s.CheckInvariants()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("broken %q: CheckInvariants returned %v, want an error mentioning %q", c.name, err, c.want)
			}
		})
	}
}

// outStreaming is a sending core on an open stream with two batches
// written and not acknowledged, a third being encoded, four messages
// queued behind it and a watch on the peer's actors.
func outStreaming(t *testing.T) *outCore {
	h := newOutHarness(t, testOutConfig(), true, 1)
	h.enqueue(true, &actor.Watch{Watcher: &actor.PID{Id: "w"}})
	for range 15 {
		h.send()
	}
	h.tick(0)
	h.opened(1, nil)
	for range 2 {
		h.encoded(-1)
		h.written(nil)
	}
	if h.c.encoding == 0 || h.c.encodeTaken == 0 || len(h.c.unacked) != 2 || h.c.q.n != 4 || len(h.c.watches) != 1 {
		t.Fatalf("not the state the cases expect: encoding %d (%d taken), %d unacknowledged, %d queued, %d watches",
			h.c.encoding, h.c.encodeTaken, len(h.c.unacked), h.c.q.n, len(h.c.watches))
	}
	return h.c
}

// outOpening is a sending core asking for its first stream.
func outOpening(t *testing.T) *outCore {
	h := newOutHarness(t, testOutConfig(), true, 1)
	h.send()
	h.tick(0)
	if h.c.opening == 0 || h.c.stream != 0 {
		t.Fatalf("not opening: opening %d, stream %d", h.c.opening, h.c.stream)
	}
	return h.c
}

// outStopped is a sending core that was closed after its one batch was
// acknowledged: it holds nothing.
func outStopped(t *testing.T) *outCore {
	h := newOutHarness(t, testOutConfig(), true, 1)
	h.send()
	h.tick(0)
	h.opened(1, nil)
	h.encoded(-1)
	h.written(nil)
	h.ack(1)
	h.step(outEvent{kind: evStop, reason: DeadLetterClosed})
	if !h.c.stopped || h.c.lastStream == 0 || h.c.seq != h.c.acked {
		t.Fatalf("not stopped cleanly: %+v", h.c)
	}
	return h.c
}

func TestOutCoreCheckInvariantsReportsEachBrokenInvariant(t *testing.T) {
	item := outItem{target: &actor.PID{Id: "t"}, msg: -1}
	checkMutations(t, []mutation[*outCore]{
		{"queue above capacity", "queue holds 4, capacity 3", outStreaming, func(c *outCore) { c.cfg.queueCapacity = 3 }},
		{"queue count negative", "queue holds -1", outStreaming, func(c *outCore) { c.q.n = -1 }},
		{"more than a batch waits for encoding", "more than a batch", outStreaming, func(c *outCore) {
			c.pending = make([]outItem, c.cfg.maxBatchMessages+1)
		}},
		{"window exceeded", "2 batches unacknowledged, window 1", outStreaming, func(c *outCore) { c.cfg.maxInflight = 1 }},
		{"unacknowledged batches without a stream", "without a stream", outStreaming, func(c *outCore) { c.stream = 0 }},
		{"acknowledged and unacknowledged do not add up", "0 acknowledged + 2 unacknowledged != 3 written", outStreaming, func(c *outCore) { c.seq++ }},
		{"opening beside a stream", "beside stream", outStreaming, func(c *outCore) { c.opening = c.lastStream }},
		{"encoding and writing", "encoding and writing at once", outStreaming, func(c *outCore) { c.writing = true }},
		{"messages out for encoding without an encode", "with no encode running", outStreaming, func(c *outCore) { c.encoding = 0 }},
		{"stream never handed out", "beyond the last handed out", outStreaming, func(c *outCore) { c.lastStream = 0 }},
		{"opening never handed out", "beyond the last handed out", outOpening, func(c *outCore) { c.lastStream = 0 }},
		{"stopped with a queue", "stopped with 1 queued", outStopped, func(c *outCore) { c.q.push(&item, c.cfg.queueCapacity) }},
		{"stopped with messages for encoding", "stopped with 1 queued", outStopped, func(c *outCore) { c.pending = []outItem{item} }},
		{"stopped with a watch", "1 watches", outStopped, func(c *outCore) {
			c.watches[watchKey{"t", "w"}] = watchRec{watchee: item.target, watcher: &actor.PID{Id: "w"}}
		}},
		{"stopped with a stream", "stopped with 0 queued, 0 unacknowledged batches, 0 watches, stream", outStopped, func(c *outCore) { c.stream = c.lastStream }},
		{"stopped and up", "up true", outStopped, func(c *outCore) { c.up = true }},
		// The stopped check names unacknowledged batches too, but a
		// stopped core has no stream, so the check without a stream
		// reports them first.
		{"stopped with unacknowledged batches", "1 batches unacknowledged without a stream", outStopped, func(c *outCore) {
			c.unacked = []sentBatch{{items: []outItem{item}, sentAt: t0}}
		}},
		{"up while waiting for a first connection", "up while waiting", outStreaming, func(c *outCore) { c.downSince = t0 }},
		{"empty unacknowledged batch", "batch 1 is empty", outStreaming, func(c *outCore) { c.unacked[1].items = nil }},
	})
}

// inWaiting is a stream's receiving core with three batches handled and
// not acknowledged (a delayed acknowledgement is due) and a busy target.
func inWaiting(t *testing.T) *inCore {
	c := &inCore{cfg: inConfig{maxBacklog: 2, backlogWait: time.Second}}
	now := t0
	inStep(t, c, inEvent{kind: inBatchStart}, now)
	inStep(t, c, inEvent{kind: inBacklog, target: "full", queued: 2}, now)
	now = now.Add(time.Second)
	if fx := inStep(t, c, inEvent{kind: inBacklog, target: "full", queued: 2, retry: true}, now); fx.answer != backlogRefuse {
		t.Fatalf("full target not refused after BacklogWait: %+v", fx)
	}
	for range 3 {
		inStep(t, c, inEvent{kind: inBatchDone}, now)
	}
	if c.handled != 3 || c.acked != 0 || c.ackDue.IsZero() || len(c.busy) != 1 {
		t.Fatalf("not the state the cases expect: %+v", c)
	}
	return c
}

func TestInCoreCheckInvariantsReportsEachBrokenInvariant(t *testing.T) {
	checkMutations(t, []mutation[*inCore]{
		{"acknowledged more than handled", "acknowledged 4 of 3", inWaiting, func(c *inCore) { c.acked = c.handled + 1 }},
		{"too many unacknowledged", "more than 7", inWaiting, func(c *inCore) { c.handled = c.acked + ackEvery }},
		{"unacknowledged with nothing due", "acknowledgement due 0001-01-01", inWaiting, func(c *inCore) { c.ackDue = time.Time{} }},
		{"due with everything acknowledged", "with 3 of 3 acknowledged", inWaiting, func(c *inCore) { c.acked = c.handled }},
		{"busy set above its bound", "busy targets, bound", inWaiting, func(c *inCore) {
			for i := range maxBusyTargets {
				c.busy[strconv.Itoa(i)] = struct{}{}
			}
		}},
	})
}

// orderFresh is a peer's order before its first batch.
func orderFresh(*testing.T) *orderCore { return &orderCore{} }

// orderRunning is a peer's order on connection 2, epoch 3, with two
// batches delivered and the third holding the turn.
func orderRunning(t *testing.T) *orderCore {
	o := &orderCore{}
	for seq := range uint64(3) {
		if v, _ := o.admit(2, 3, seq); v != orderGo {
			t.Fatalf("batch %d: verdict %d", seq, v)
		}
		if seq < 2 {
			o.finish()
		}
	}
	return o
}

func TestOrderCoreCheckInvariantsReportsEachBrokenInvariant(t *testing.T) {
	checkMutations(t, []mutation[*orderCore]{
		{"busy before the first batch", "before the first batch", orderFresh, func(o *orderCore) { o.busy = true }},
		{"counting before the first batch", "before the first batch", orderFresh, func(o *orderCore) { o.next = 1 }},
		{"turn held by a newer connection", "(3/3) is newer than the order (2/3)", orderRunning, func(o *orderCore) { o.busyConn = 3 }},
		{"turn held by a newer epoch", "(2/4) is newer than the order (2/3)", orderRunning, func(o *orderCore) { o.busyEpoch = 4 }},
	})
}
