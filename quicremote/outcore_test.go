package quicremote

import (
	"errors"
	"fmt"
	"math/rand"
	"slices"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/protobuf/encoding/protowire"
)

// The sending core, driven by hand in virtual time and by random event
// sequences (FuzzOutCore), with its invariants checked after every step.

var t0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

func testOutConfig() outConfig {
	return outConfig{queueCapacity: 50, maxBatchMessages: 4, maxInflight: 3, sendTimeout: time.Second, connectGrace: 3 * time.Second}
}

// outHarness is a shell for outCore that performs effects by hand.
type outHarness struct {
	t   testing.TB
	c   *outCore
	now time.Time
	fx  outEffects
	// Messages are numbered as enqueued (msg is the number).
	next    int
	sentLog []int // every message written, in order
	acked   map[int]bool
	dead    map[int]DeadLetterReason
	futures int // failFutures effects seen
	ended   []watchRec
	// Outstanding I/O the core asked for.
	open, encode, write bool
	encStream           uint64
	encItems            []outItem
	openStream          uint64
	openConn            uint64
	writeStream         uint64
	wrote               []outItem // the batch encoded last
	streams             map[uint64]bool
}

func newOutHarness(t testing.TB, cfg outConfig, up bool, conn uint64) *outHarness {
	h := &outHarness{t: t, now: t0, acked: map[int]bool{}, dead: map[int]DeadLetterReason{}, streams: map[uint64]bool{}}
	h.c = newOutCore(cfg, up, conn, t0)
	return h
}

// step applies ev and records the effects; the outstanding I/O is kept for
// the test to complete.
func (h *outHarness) step(ev outEvent) *outEffects {
	h.t.Helper()
	h.fx.reset()
	h.c.Step(&ev, h.now, &h.fx)
	if err := h.c.CheckInvariants(); err != nil {
		h.t.Fatalf("after %+v at %v: %v", ev.kind, h.now.Sub(t0), err)
	}
	fx := &h.fx
	if fx.failFutures {
		h.futures++
	}
	for _, id := range fx.close {
		delete(h.streams, id)
	}
	for _, d := range fx.dead {
		for _, it := range d.items {
			n, ok := it.msg.(int)
			if !ok {
				continue
			}
			if _, twice := h.dead[n]; twice || h.acked[n] {
				h.t.Fatalf("message %d given up twice (or after its acknowledgement)", n)
			}
			h.dead[n] = d.reason
		}
	}
	h.ended = append(h.ended, fx.watchEnds...)
	if ev.kind == evEnqueue {
		return fx
	}
	if fx.open != 0 || fx.encode != nil || fx.write {
		if h.open || h.encode || h.write {
			h.t.Fatal("new I/O while I/O is outstanding")
		}
	}
	switch {
	case fx.open != 0:
		h.open, h.openStream, h.openConn = true, fx.open, fx.openConn
	case fx.encode != nil:
		h.encode, h.encStream, h.encItems = true, fx.encodeStream, slices.Clone(fx.encode)
	case fx.write:
		h.write, h.writeStream = true, fx.writeStream
		if fx.writeSeq+1 != h.c.seq || fx.writeEpoch != h.c.epoch {
			h.t.Fatalf("write of seq %d epoch %d; core at seq %d epoch %d", fx.writeSeq, fx.writeEpoch, h.c.seq, h.c.epoch)
		}
	}
	return fx
}

func (h *outHarness) enqueue(system bool, msg any) enqResult {
	h.t.Helper()
	it := outItem{target: &actor.PID{Id: "t"}, msg: msg, system: system}
	return h.step(outEvent{kind: evEnqueue, item: &it}).enq
}

func (h *outHarness) send() enqResult {
	h.next++
	return h.enqueue(false, h.next)
}

func (h *outHarness) tick(d time.Duration) *outEffects {
	h.now = h.now.Add(d)
	return h.step(outEvent{kind: evTick})
}

func (h *outHarness) opened(conn uint64, err error) *outEffects {
	h.t.Helper()
	h.complete(&h.open, "open")
	if err == nil {
		h.streams[h.openStream] = true
	}
	return h.step(outEvent{kind: evOpened, stream: h.openStream, conn: conn, err: err})
}

// complete marks the outstanding I/O flag done.
func (h *outHarness) complete(flag *bool, what string) {
	h.t.Helper()
	if !*flag {
		h.t.Fatalf("no %s outstanding", what)
	}
	*flag = false
}

// encoded encodes the first k outstanding messages (all if k < 0).
func (h *outHarness) encoded(k int) *outEffects {
	h.t.Helper()
	h.complete(&h.encode, "encode")
	items := h.encItems
	if k < 0 || k > len(items) {
		k = len(items)
	}
	batch := slices.Clone(items[:k])
	rest := slices.Clone(items[k:])
	if len(rest) == 0 {
		rest = nil
	}
	h.wrote = batch
	return h.step(outEvent{kind: evEncoded, stream: h.encStream, batch: batch, rest: rest})
}

func (h *outHarness) written(err error) *outEffects {
	h.t.Helper()
	h.complete(&h.write, "write")
	if err == nil && h.streams[h.writeStream] {
		for _, it := range h.wrote {
			if n, ok := it.msg.(int); ok {
				h.sentLog = append(h.sentLog, n)
			}
		}
	}
	return h.step(outEvent{kind: evWritten, stream: h.writeStream, err: err})
}

// ack acknowledges n batches in all on the current stream.
func (h *outHarness) ack(n uint64) *outEffects {
	h.t.Helper()
	// The core recycles acknowledged batches: note their messages first.
	var msgs []int
	if k := n - h.c.acked; h.c.stream != 0 && n >= h.c.acked && k <= uint64(len(h.c.unacked)) {
		for _, b := range h.c.unacked[:k] {
			for _, it := range b.items {
				if m, ok := it.msg.(int); ok {
					msgs = append(msgs, m)
				}
			}
		}
	}
	fx := h.step(outEvent{kind: evAck, stream: h.c.stream, frame: protowire.AppendVarint(nil, n)})
	if fx.badAcks == 0 {
		for _, m := range msgs {
			h.acked[m] = true
		}
	}
	return fx
}

func deadCount(fx *outEffects, reason DeadLetterReason) int {
	n := 0
	for _, d := range fx.dead {
		if d.reason == reason {
			n += len(d.items)
		}
	}
	return n
}

// A member that never connects: messages wait ConnectGrace, to the
// nanosecond, then fail as unreachable; later ones wait the rest of the
// grace only.
func TestOutCoreConnectGrace(t *testing.T) {
	h := newOutHarness(t, testOutConfig(), false, 0)
	h.send()
	fx := h.tick(3*time.Second - time.Nanosecond)
	if len(fx.dead) != 0 || !fx.wakeAt.Equal(t0.Add(3*time.Second)) {
		t.Fatalf("before the grace: dead %v, wake at %v", fx.dead, fx.wakeAt.Sub(t0))
	}
	fx = h.tick(time.Nanosecond)
	if deadCount(fx, DeadLetterUnreachable) != 1 || !fx.gaveUp {
		t.Fatalf("at the grace: %+v", fx)
	}
	// Still not up, grace spent: the next message fails at once.
	h.send()
	if fx = h.tick(0); deadCount(fx, DeadLetterUnreachable) != 1 {
		t.Fatalf("after the grace: %+v", fx)
	}
}

// A written batch not acknowledged within SendTimeout of the end of its
// write fails its stream: its messages are dead letters, the timeout is
// counted, and a new stream (a new epoch) carries what comes next.
func TestOutCoreAckTimeout(t *testing.T) {
	h := newOutHarness(t, testOutConfig(), true, 7)
	h.send()
	h.tick(0)
	h.opened(7, nil)
	h.encoded(-1)
	h.tick(300 * time.Millisecond) // the write took this long
	h.written(nil)
	fx := h.tick(time.Second - time.Nanosecond)
	if len(fx.dead) != 0 || !fx.wakeAt.Equal(h.now.Add(time.Nanosecond)) {
		t.Fatalf("before the timeout: %+v", fx)
	}
	epoch := h.c.epoch
	h.send()
	fx = h.tick(time.Nanosecond)
	if fx.ackTimeouts != 1 || deadCount(fx, DeadLetterSendFailed) != 1 || len(fx.close) != 1 || fx.open == 0 {
		t.Fatalf("at the timeout: %+v", fx)
	}
	h.opened(7, nil)
	if h.c.epoch != epoch+1 || h.c.seq != 0 {
		t.Fatalf("new stream at epoch %d seq %d, old epoch %d", h.c.epoch, h.c.seq, epoch)
	}
	h.encoded(-1)
	h.written(nil)
	if fx = h.ack(1); fx.sent != 1 || fx.batches != 1 {
		t.Fatalf("ack on the new stream: %+v", fx)
	}
	if !slices.Equal(h.sentLog, []int{1, 2}) {
		t.Fatalf("written %v", h.sentLog)
	}
}

// A connection that goes down gives up, in the order they were sent, on
// the unacknowledged batches, the batch being encoded and the queue; ends
// every watch and fails the futures; later messages fail at once until it
// is up again.
func TestOutCorePeerDown(t *testing.T) {
	h := newOutHarness(t, testOutConfig(), true, 1)
	watcher := &actor.PID{Id: "w"}
	h.enqueue(true, &actor.Watch{Watcher: watcher})
	h.tick(0)
	h.opened(1, nil)
	h.encoded(-1) // the Watch
	h.written(nil)
	for range 6 {
		h.send()
	}
	h.tick(0)
	h.encoded(2) // 1, 2; 3, 4 back in front of 5, 6
	h.written(nil)
	h.encoded(-1) // 3, 4, being written when the connection goes
	fx := h.step(outEvent{kind: evPeerDown})
	if !fx.failFutures || len(fx.watchEnds) != 1 || fx.watchEnds[0].watcher != watcher || deadCount(fx, DeadLetterPeerDown) != 7 {
		t.Fatalf("peer down: %+v", fx)
	}
	var order []any
	for _, it := range fx.dead[0].items {
		order = append(order, it.msg)
	}
	if fmt.Sprint(order[1:]) != "[1 2 3 4 5 6]" {
		t.Fatalf("given up in order %v", order)
	}
	h.written(nil)
	h.send()
	if fx = h.tick(0); deadCount(fx, DeadLetterUnreachable) != 1 {
		t.Fatalf("message while known down: %+v", fx)
	}
	h.step(outEvent{kind: evPeerUp, conn: 2})
	h.send()
	if fx = h.tick(0); fx.open == 0 || fx.openConn != 2 {
		t.Fatalf("after up: %+v", fx)
	}
}

// A stream that opens on a connection the transport has since replaced is
// closed, and opening again waits openRetry for the peer events.
func TestOutCoreOpenOnReplacedConnection(t *testing.T) {
	h := newOutHarness(t, testOutConfig(), true, 1)
	h.send()
	h.tick(0)
	fx := h.opened(2, nil) // the transport already moved to connection 2
	if len(fx.close) != 1 || fx.open != 0 || !fx.wakeAt.Equal(h.now.Add(openRetry)) {
		t.Fatalf("stream on a replaced connection: %+v", fx)
	}
	h.step(outEvent{kind: evPeerDown})
	h.step(outEvent{kind: evPeerUp, conn: 2})
	h.send()
	if fx = h.tick(openRetry - time.Nanosecond); fx.open != 0 {
		t.Fatalf("opened before openRetry: %+v", fx)
	}
	if fx = h.tick(time.Nanosecond); fx.open == 0 || fx.openConn != 2 {
		t.Fatalf("not reopened after openRetry: %+v", fx)
	}
}

// What was being encoded when its stream failed was never written: it
// goes out first on the next stream, nothing is lost or given up.
func TestOutCoreEncodingOutlivesStream(t *testing.T) {
	h := newOutHarness(t, testOutConfig(), true, 1)
	for range 3 {
		h.send()
	}
	h.tick(0)
	h.opened(1, nil)
	h.step(outEvent{kind: evStreamFailed, stream: h.encStream, err: errors.New("reset")})
	h.encoded(-1)
	h.tick(0)
	h.opened(1, nil)
	h.encoded(-1)
	h.written(nil)
	h.ack(1)
	if len(h.dead) != 0 || !slices.Equal(h.sentLog, []int{1, 2, 3}) || len(h.acked) != 3 {
		t.Fatalf("dead %v, written %v, acked %v", h.dead, h.sentLog, h.acked)
	}
}

// Malformed or impossible acknowledgements fail the stream and are
// counted; a full window stops encoding until an acknowledgement.
func TestOutCoreAckWindowAndBadAcks(t *testing.T) {
	h := newOutHarness(t, testOutConfig(), true, 1)
	for range 20 {
		h.send()
	}
	h.tick(0)
	h.opened(1, nil)
	for range 3 {
		h.encoded(1)
		h.written(nil)
	}
	if fx := h.tick(0); fx.encode != nil {
		t.Fatal("encoded beyond the window")
	}
	if fx := h.ack(2); fx.encode == nil || fx.sent != 2 {
		t.Fatalf("ack did not reopen the window: %+v", fx)
	}
	h.encoded(1)
	h.written(nil)
	for _, frame := range [][]byte{protowire.AppendVarint(nil, 1), protowire.AppendVarint(nil, 9), {0x80}, make([]byte, 11)} {
		before := len(h.dead)
		fx := h.step(outEvent{kind: evAck, stream: h.c.stream, frame: frame})
		if fx.badAcks != 1 || len(h.dead) <= before || len(fx.close) != 1 {
			t.Fatalf("ack %x: %+v", frame, fx)
		}
		// The batch being encoded meanwhile was not written: it goes on
		// the next stream.
		if fx = h.encoded(-1); fx.open == 0 {
			t.Fatalf("no new stream after ack %x: %+v", frame, fx)
		}
		h.opened(1, nil)
		h.encoded(1)
		h.written(nil)
	}
}

// FuzzOutCore drives the core with random events: after every step its
// invariants hold; every message is acknowledged or given up at most once
// and never both; messages are written in the order they were queued;
// nothing time-based happens before the wake-up time the core asked for;
// after the peer stops, every message is accounted for.
func FuzzOutCore(f *testing.F) {
	f.Add(int64(1), []byte{0, 0, 3, 4, 4, 4, 5, 0, 2, 1, 3, 4})
	f.Add(int64(2), []byte{1, 0, 0, 0, 0, 0, 0, 4, 4, 4, 6, 4, 4, 5, 3, 3, 7})
	f.Add(int64(3), []byte{0, 3, 3, 3, 3, 3, 3, 3, 3})
	f.Fuzz(func(t *testing.T, seed int64, ops []byte) {
		rng := rand.New(rand.NewSource(seed))
		h := newOutHarness(t, testOutConfig(), rng.Intn(2) == 0, 1)
		conn := uint64(1)
		// quiet: since the last step nothing new arrived and no I/O is
		// outstanding, so only wakeAt may make a tick do anything.
		quiet, wakeAt := false, time.Time{}
		for _, op := range ops {
			before := wakeAt
			idle := !h.open && !h.encode && !h.write
			var fx *outEffects
			switch op % 9 {
			case 0, 1:
				res := h.send()
				if res == enqStopped != h.c.stopped {
					t.Fatalf("enqueue %v with stopped %v", res, h.c.stopped)
				}
				if res != enqOK { // the shell gives it up
					h.dead[h.next] = DeadLetterQueueFull
				}
				quiet = false
				continue
			case 2:
				if rng.Intn(2) == 0 {
					conn++
				}
				fx = h.step(outEvent{kind: evPeerUp, conn: conn})
			case 3:
				fx = h.step(outEvent{kind: evPeerDown})
			case 4:
				d := time.Duration(rng.Int63n(int64(2 * time.Second)))
				fx = h.tick(d)
				if quiet && idle && (before.IsZero() || h.now.Before(before)) &&
					(len(fx.dead) > 0 || fx.ackTimeouts > 0 || len(fx.close) > 0 || fx.busy()) {
					t.Fatalf("a tick %v before the wake-up time %v did something: %+v", h.now.Sub(t0), before.Sub(t0), fx)
				}
			case 5:
				switch {
				case h.open:
					c := conn
					if rng.Intn(4) == 0 {
						c = conn + 1
					}
					var err error
					if rng.Intn(4) == 0 {
						err = errors.New("refused")
					}
					fx = h.opened(c, err)
				case h.encode:
					fx = h.encoded(rng.Intn(len(h.encItems) + 1))
				case h.write:
					var err error
					if rng.Intn(5) == 0 {
						err = errors.New("write failed")
					}
					fx = h.written(err)
				default:
					fx = h.tick(0)
				}
			case 6:
				n := h.c.acked
				if k := len(h.c.unacked); k > 0 {
					n += uint64(rng.Intn(k + 1))
				}
				if rng.Intn(8) == 0 {
					n += 5 // more than was sent
				}
				fx = h.ack(n)
			case 7:
				fx = h.step(outEvent{kind: evStreamFailed, stream: h.c.stream, err: errors.New("reset")})
			case 8:
				if rng.Intn(4) == 0 {
					fx = h.step(outEvent{kind: evStop, reason: DeadLetterNotMember})
				} else {
					fx = h.tick(0)
				}
			}
			quiet, wakeAt = !fx.busy() && !h.open && !h.encode && !h.write, fx.wakeAt
			for i := 1; i < len(h.sentLog); i++ {
				if h.sentLog[i] <= h.sentLog[i-1] {
					t.Fatalf("written out of order: %v", h.sentLog)
				}
			}
		}
		// Stop: everything still held is given up, what was out for
		// encoding once it comes back; nothing is lost.
		h.step(outEvent{kind: evStop, reason: DeadLetterClosed})
		if h.encode {
			h.encoded(-1)
		}
		if h.write {
			h.written(nil)
		}
		for n := 1; n <= h.next; n++ {
			if _, dead := h.dead[n]; dead == h.acked[n] {
				t.Fatalf("message %d: acknowledged %v, given up %v", n, h.acked[n], dead)
			}
		}
	})
}
