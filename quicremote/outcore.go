package quicremote

import (
	"errors"
	"fmt"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

// outCore is the sending side of the remote's protocol towards one peer,
// as a pure state machine: no goroutines, no clock (time comes with every
// event), no I/O. Events go in through Step; what to do comes out as
// outEffects for the shell (remotePeer.run) to perform, and the outcomes
// of what it performed come back as events. It decides:
//
//   - admission to the bounded queue (QueueCapacity);
//   - when to open a stream (the peer is up and there is no stream on its
//     current connection) and its epoch, which orders it after earlier
//     ones at the receiver;
//   - batching: what to encode next, and its seq, within the window of
//     MaxInflightBatches unacknowledged batches;
//   - acknowledgements: which batches an ack frame releases, and when a
//     stream has waited SendTimeout for one;
//   - dead letters: what a failed stream, a connection that went down, a
//     peer that never came up within ConnectGrace, or closing gives up on,
//     and with which reason;
//   - the watches local actors hold on the peer's actors, which end with
//     AddressTerminated when the connection is lost.
//
// Messages are never resent: a batch written to a stream that fails before
// it is acknowledged is given up (it may or may not have been delivered),
// so nothing is delivered twice. A batch taken for encoding but not yet
// written goes back to the front of the queue if its stream fails.
type outCore struct {
	cfg outConfig

	q       outQueue
	pending []outItem // taken from the queue, waiting for the next encode (front of the queue)

	up         bool
	conn       uint64    // the transport's current connection to the peer
	downSince  time.Time // while not up: since when we wait for a first connection; zero once known down
	stopped    bool      // closed or no longer a member: refuses everything
	stopReason DeadLetterReason

	// The stream batches go out on (0: none), its connection, epoch and
	// counts, and the batches written to it and not acknowledged yet.
	stream      uint64
	streamConn  uint64
	epoch, seq  uint64
	acked       uint64
	unacked     []sentBatch
	lastStream  uint64 // stream ids are handed out in order
	opening     uint64 // stream being opened (0: none)
	openAfter   time.Time
	encoding    uint64 // stream whose batch is being encoded (0: none)
	writing     bool   // the batch encoded last is being written
	watches     map[watchKey]watchRec
	encodeTaken int // messages handed out for encoding (for CheckInvariants)
	// small is an acknowledged batch slice of the smallest class, kept
	// for the next small batch: under light traffic every batch is one,
	// and the pool would cost an allocation per batch to take it back.
	small []outItem
}

// outConfig is the part of Config the core uses.
type outConfig struct {
	queueCapacity, maxBatchMessages, maxInflight int
	sendTimeout, connectGrace                    time.Duration
}

func outConfigOf(c *Config) outConfig {
	return outConfig{
		queueCapacity: c.QueueCapacity, maxBatchMessages: c.MaxBatchMessages, maxInflight: c.MaxInflightBatches,
		sendTimeout: c.SendTimeout, connectGrace: c.ConnectGrace,
	}
}

// sentBatch is a batch written (or being written) and not acknowledged.
type sentBatch struct {
	items  []outItem
	sentAt time.Time // the acknowledgement is due SendTimeout after
}

// watchKey names one watch: a local watcher on an actor of the peer.
type watchKey struct{ watchee, watcher string }

type watchRec struct{ watchee, watcher *actor.PID }

// openRetry is how long the core waits before opening again when a stream
// opened on a connection the transport has since replaced: the peer events
// that tell it so are on their way.
const openRetry = 50 * time.Millisecond

// newOutCore is the state of a peer first seen at now, up (on conn) or not.
func newOutCore(cfg outConfig, up bool, conn uint64, now time.Time) *outCore {
	c := &outCore{cfg: cfg, up: up, conn: conn, watches: make(map[watchKey]watchRec)}
	if !up {
		c.downSince = now
	}
	return c
}

type outEventKind uint8

const (
	// evTick: time has passed; decide what to do next. Every Step ends
	// with this decision, so the shell needs it only when nothing else
	// happened (a wake-up time came, a signal).
	evTick outEventKind = iota
	// evEnqueue: a sender hands over item (returns enq).
	evEnqueue
	// evPeerUp: the transport is connected to the peer on conn.
	evPeerUp
	// evPeerDown: the connection is gone.
	evPeerDown
	// evStop: the remote closed (reason DeadLetterClosed) or the peer left
	// the member set (DeadLetterNotMember).
	evStop
	// evOpened: the stream asked for by outEffects.open is open on conn,
	// or failed with err.
	evOpened
	// evEncoded: the messages handed out for stream by outEffects.encode
	// were encoded: batch went into the frame, rest did not fit (the rest
	// of the messages could not be serialized and were dead-lettered by
	// the shell).
	evEncoded
	// evWritten: the frame encoded last was written to stream, or failed
	// with err.
	evWritten
	// evAck: frame arrived on stream as an acknowledgement.
	evAck
	// evStreamFailed: stream failed while reading (err says why).
	evStreamFailed
)

// outEvent is one input to outCore.Step; which fields count depends on
// kind. It is a plain struct, not an interface, so that the per-message
// evEnqueue allocates nothing.
type outEvent struct {
	kind   outEventKind
	item   *outItem // evEnqueue (copied into the queue)
	conn   uint64   // evPeerUp, evOpened
	stream uint64   // evOpened, evEncoded, evWritten, evAck, evStreamFailed
	batch  []outItem
	rest   []outItem
	frame  []byte
	reason DeadLetterReason // evStop
	err    error
}

// outEffects is what the shell must do after Step, in this order:
//  1. if failFutures, claim the local futures whose requests went to the
//     peer (so that the dead letters below do not answer them);
//  2. close the streams in close;
//  3. give up on every batch in dead, in order;
//  4. end each watch in watchEnds with AddressTerminated;
//  5. answer the futures claimed in 1 with a dead letter;
//  6. open stream open on connection openConn, encode encode for
//     encodeStream, write the encoded frame (write) — at most one of
//     these, each reported back as an event;
//  7. if stopped, end the loop.
//
// Step only appends; the shell resets it between rounds.
type outEffects struct {
	enq          enqResult // evEnqueue's outcome
	wake         bool      // evEnqueue: the loop may be idle and must look
	failFutures  bool
	failReason   DeadLetterReason
	close        []uint64
	dead         []deadBatch
	watchEnds    []watchRec
	open         uint64
	openConn     uint64
	encode       []outItem
	encodeStream uint64
	write        bool
	writeStream  uint64
	writeEpoch   uint64
	writeSeq     uint64
	// Counters: messages and batches acknowledged, streams given up for
	// want of an acknowledgement, malformed acknowledgements.
	sent, batches, ackTimeouts, badAcks uint64
	// gaveUp: messages were dead-lettered because the peer stayed
	// unreachable; the shell checks whether it is still a member.
	gaveUp  bool
	stopped bool
	// wakeAt is when the core next wants a tick if nothing happens
	// before (zero: not before an event).
	wakeAt time.Time
}

// deadBatch is messages given up on for one reason.
type deadBatch struct {
	items  []outItem
	reason DeadLetterReason
	err    error
}

func (fx *outEffects) reset() {
	*fx = outEffects{close: fx.close[:0], dead: fx.dead[:0], watchEnds: fx.watchEnds[:0]}
}

// busy reports whether fx asks the shell for I/O whose outcome is an
// event.
func (fx *outEffects) busy() bool { return fx.open != 0 || fx.encode != nil || fx.write }

type enqResult uint8

const (
	enqOK enqResult = iota
	enqFull
	enqStopped
)

// Step applies ev at now and appends what to do to fx.
func (c *outCore) Step(ev *outEvent, now time.Time, fx *outEffects) {
	if c.stopped {
		// Only the outcomes of I/O still running matter: a stream that
		// opened is closed, messages back from encoding are given up.
		switch ev.kind {
		case evEnqueue:
			fx.enq = enqStopped
		case evOpened:
			c.opened(ev, now, fx)
		case evEncoded:
			c.encoded(ev, now, fx)
		}
		return
	}
	switch ev.kind {
	case evEnqueue:
		fx.enq, fx.wake = c.enqueue(ev.item)
		return // the loop decides on its own round
	case evPeerUp:
		c.up, c.conn, c.downSince = true, ev.conn, time.Time{}
	case evPeerDown:
		c.peerDown(fx)
	case evStop:
		c.stop(ev.reason, fx)
	case evOpened:
		c.opened(ev, now, fx)
	case evEncoded:
		c.encoded(ev, now, fx)
	case evWritten:
		c.written(ev, now, fx)
	case evAck:
		c.ack(ev, fx)
	case evStreamFailed:
		c.failStream(ev.stream, ev.err, fx)
	}
	c.advance(now, fx)
}

// enqueue queues it, keeping the watch records in step with the Watch
// and Unwatch messages that pass (a Watch that finds the queue full is
// recorded all the same, so that its dead letter ends it). wake says the
// queue was empty: the loop may be idle. It is evEnqueue's Step, which
// senders call directly: one per message, it must not build an event or
// effects.
func (c *outCore) enqueue(it *outItem) (res enqResult, wake bool) {
	if c.stopped {
		return enqStopped, false
	}
	if it.system {
		switch m := it.msg.(type) {
		case *actor.Watch:
			if m.Watcher != nil {
				c.watches[watchKey{it.target.Id, m.Watcher.Id}] = watchRec{watchee: it.target, watcher: m.Watcher}
			}
		case *actor.Unwatch:
			if m.Watcher != nil {
				delete(c.watches, watchKey{it.target.Id, m.Watcher.Id})
			}
		}
	}
	if !c.q.push(it, c.cfg.queueCapacity) {
		return enqFull, false
	}
	return enqOK, c.q.n == 1
}

// takeWatch ends the record of watcher's watch on the peer's actor
// watchee, reporting whether there was one.
func (c *outCore) takeWatch(watchee string, watcher *actor.PID) bool {
	if watcher == nil {
		return false
	}
	k := watchKey{watchee, watcher.Id}
	if _, ok := c.watches[k]; !ok {
		return false
	}
	delete(c.watches, k)
	return true
}

// queued is the number of messages the core holds that were not written.
func (c *outCore) queued() int { return c.q.n + len(c.pending) }

// peerDown: the connection is gone. Everything not acknowledged is given
// up, every watch on the peer's actors ends, the futures waiting on it
// fail; later messages fail at once (no grace: that only covers a peer
// not connected yet) until it is up again.
func (c *outCore) peerDown(fx *outEffects) {
	c.up = false
	c.downSince = time.Time{}
	c.giveUpAll(DeadLetterPeerDown, fx)
}

// stop ends the core for good: like peerDown, and it refuses from now on.
func (c *outCore) stop(reason DeadLetterReason, fx *outEffects) {
	if c.stopped {
		return
	}
	c.stopped, c.stopReason = true, reason
	c.up = false
	c.giveUpAll(reason, fx)
	fx.stopped = true
}

// giveUpAll dead-letters the unacknowledged batches, what waits for
// encoding and the queue, in that order (the order they were sent), ends
// every watch and fails the futures.
func (c *outCore) giveUpAll(reason DeadLetterReason, fx *outEffects) {
	fx.failFutures, fx.failReason = true, reason
	var items []outItem
	if c.stream != 0 {
		fx.close = append(fx.close, c.stream)
		items = c.takeUnacked(items)
		c.stream = 0
	}
	items = append(items, c.pending...)
	c.pending = nil
	items = c.q.take(items, len(items)+c.q.n)
	if len(items) > 0 {
		fx.dead = append(fx.dead, deadBatch{items: items, reason: reason})
	}
	for k, rec := range c.watches {
		fx.watchEnds = append(fx.watchEnds, rec)
		delete(c.watches, k)
	}
}

// takeUnacked appends the messages of every unacknowledged batch to dst,
// oldest first, and forgets the batches.
func (c *outCore) takeUnacked(dst []outItem) []outItem {
	for _, b := range c.unacked {
		dst = append(dst, b.items...)
	}
	c.unacked = nil
	return dst
}

// failStream gives up on stream if it is the current one: its
// unacknowledged batches become dead letters (they may or may not have
// been delivered; they are never resent) and a new stream will be opened.
func (c *outCore) failStream(stream uint64, err error, fx *outEffects) {
	if stream == 0 || stream != c.stream {
		return
	}
	fx.close = append(fx.close, stream)
	c.stream = 0
	if items := c.takeUnacked(nil); len(items) > 0 {
		fx.dead = append(fx.dead, deadBatch{items: items, reason: DeadLetterSendFailed, err: err})
	}
}

func (c *outCore) opened(ev *outEvent, now time.Time, fx *outEffects) {
	if ev.stream != c.opening {
		if ev.err == nil {
			fx.close = append(fx.close, ev.stream)
		}
		return
	}
	c.opening = 0
	if ev.err != nil {
		// A peer that keeps refusing streams must not hold messages
		// forever: the batch at the head of the queue fails.
		batch := c.pending
		c.pending = nil
		if len(batch) == 0 {
			batch = c.q.take(nil, c.cfg.maxBatchMessages)
		}
		if len(batch) > 0 {
			fx.dead = append(fx.dead, deadBatch{items: batch, reason: DeadLetterSendFailed, err: ev.err})
		}
		return
	}
	if c.stopped || !c.up || ev.conn != c.conn {
		// The connection changed while it opened; open again once the
		// transport's events have caught up.
		fx.close = append(fx.close, ev.stream)
		c.openAfter = now.Add(openRetry)
		return
	}
	c.stream, c.streamConn = ev.stream, ev.conn
	c.epoch++
	c.seq, c.acked = 0, 0
}

func (c *outCore) encoded(ev *outEvent, now time.Time, fx *outEffects) {
	c.encoding = 0
	c.encodeTaken = 0
	if ev.stream != c.stream {
		// The stream failed or the peer went down meanwhile. What came
		// back was never written: while the peer is up it goes back to
		// the front of the queue for the next stream; otherwise it is
		// given up (the queue already was).
		back := append(ev.batch, ev.rest...)
		switch {
		case c.up && !c.stopped:
			c.pending = append(back, c.pending...)
		case len(back) == 0:
		case c.stopped:
			fx.dead = append(fx.dead, deadBatch{items: back, reason: c.stopReason})
		default:
			fx.dead = append(fx.dead, deadBatch{items: back, reason: DeadLetterSendFailed, err: errors.New("stream closed while encoding")})
		}
		return
	}
	c.pending = append(ev.rest, c.pending...)
	if len(ev.batch) == 0 {
		return
	}
	// Recorded before it is written: its acknowledgement may come before
	// the write returns.
	c.unacked = append(c.unacked, sentBatch{items: ev.batch, sentAt: now})
	fx.write, fx.writeStream, fx.writeEpoch, fx.writeSeq = true, c.stream, c.epoch, c.seq
	c.seq++
	c.writing = true
}

func (c *outCore) written(ev *outEvent, now time.Time, fx *outEffects) {
	c.writing = false
	if ev.stream != c.stream {
		return
	}
	if ev.err != nil {
		c.failStream(ev.stream, ev.err, fx)
		return
	}
	// The acknowledgement is due SendTimeout after the write ended (it
	// may have waited for flow control), if it has not come already.
	if n := len(c.unacked); n > 0 {
		c.unacked[n-1].sentAt = now
	}
}

func (c *outCore) ack(ev *outEvent, fx *outEffects) {
	if ev.stream != c.stream || c.stream == 0 {
		return
	}
	done, err := parseAck(ev.frame, c.acked, len(c.unacked))
	if err != nil {
		fx.badAcks++
		c.failStream(ev.stream, err, fx)
		return
	}
	for i := range done {
		b := c.unacked[i].items
		fx.sent += uint64(len(b))
		if c.small == nil && cap(b) == batchClassMin {
			clear(b)
			c.small = b[:0]
		} else {
			putItems(b)
		}
	}
	fx.batches += uint64(done)
	// Shifted down rather than resliced, so that appending reuses the
	// array instead of growing a new one as the front moves.
	n := copy(c.unacked, c.unacked[done:])
	clear(c.unacked[n:])
	c.unacked = c.unacked[:n]
	c.acked += uint64(done)
}

// advance decides what the shell does next.
func (c *outCore) advance(now time.Time, fx *outEffects) {
	if c.stopped || fx.busy() {
		return
	}
	// A peer that takes batches but never acknowledges them would hold
	// their messages forever: give up on the stream once the oldest has
	// waited SendTimeout.
	if c.stream != 0 && len(c.unacked) > 0 && !c.writing {
		due := c.unacked[0].sentAt.Add(c.cfg.sendTimeout)
		if !now.Before(due) {
			fx.ackTimeouts++
			c.failStream(c.stream, fmt.Errorf("no acknowledgement within %v", c.cfg.sendTimeout), fx)
		} else {
			fx.wakeAt = due
		}
	}
	if c.queued() == 0 || c.encoding != 0 || c.writing || c.opening != 0 {
		return
	}
	if !c.up {
		if !c.downSince.IsZero() {
			if due := c.downSince.Add(c.cfg.connectGrace); now.Before(due) {
				fx.wakeAt = earliest(fx.wakeAt, due)
				return
			}
		}
		// Watches made while it was down stay recorded: their own
		// Watch's dead letter ends them.
		items := c.q.take(c.pending, len(c.pending)+c.q.n)
		c.pending = nil
		fx.dead = append(fx.dead, deadBatch{items: items, reason: DeadLetterUnreachable})
		fx.gaveUp = true
		return
	}
	if c.stream == 0 || c.streamConn != c.conn {
		if c.stream != 0 {
			fx.close = append(fx.close, c.stream)
			c.stream = 0
			if items := c.takeUnacked(nil); len(items) > 0 {
				fx.dead = append(fx.dead, deadBatch{items: items, reason: DeadLetterSendFailed, err: errors.New("connection replaced")})
			}
		}
		if now.Before(c.openAfter) {
			fx.wakeAt = earliest(fx.wakeAt, c.openAfter)
			return
		}
		c.lastStream++
		c.opening = c.lastStream
		fx.open, fx.openConn = c.opening, c.conn
		return
	}
	if len(c.unacked) >= c.cfg.maxInflight {
		return
	}
	if len(c.pending) == 0 {
		n := min(c.q.n, c.cfg.maxBatchMessages)
		var b []outItem
		if n <= batchClassMin && c.small != nil {
			b, c.small = c.small, nil
		} else {
			b = getItems(n)
		}
		c.pending = c.q.take(b, n)
	}
	fx.encode, fx.encodeStream = c.pending, c.stream
	c.encodeTaken = len(c.pending)
	c.pending = nil
	c.encoding = c.stream
}

func earliest(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

// CheckInvariants reports the first inconsistency in the core's state.
func (c *outCore) CheckInvariants() error {
	switch {
	case c.q.n < 0 || c.q.n > c.cfg.queueCapacity:
		return fmt.Errorf("queue holds %d, capacity %d", c.q.n, c.cfg.queueCapacity)
	case len(c.pending) > c.cfg.maxBatchMessages:
		return fmt.Errorf("%d messages wait for encoding, more than a batch (%d)", len(c.pending), c.cfg.maxBatchMessages)
	case len(c.unacked) > c.cfg.maxInflight:
		return fmt.Errorf("%d batches unacknowledged, window %d", len(c.unacked), c.cfg.maxInflight)
	case c.stream == 0 && len(c.unacked) > 0:
		return fmt.Errorf("%d batches unacknowledged without a stream", len(c.unacked))
	case c.stream != 0 && c.acked+uint64(len(c.unacked)) != c.seq:
		return fmt.Errorf("stream %d: %d acknowledged + %d unacknowledged != %d written", c.stream, c.acked, len(c.unacked), c.seq)
	case c.stream != 0 && c.opening != 0:
		return fmt.Errorf("opening stream %d beside stream %d", c.opening, c.stream)
	case c.encoding != 0 && c.writing:
		return errors.New("encoding and writing at once")
	case c.encoding == 0 && c.encodeTaken != 0:
		return fmt.Errorf("%d messages out for encoding with no encode running", c.encodeTaken)
	case c.stream > c.lastStream || c.opening > c.lastStream:
		return fmt.Errorf("stream %d or opening %d beyond the last handed out (%d)", c.stream, c.opening, c.lastStream)
	case c.stopped && (c.queued() != 0 || len(c.unacked) != 0 || len(c.watches) != 0 || c.stream != 0 || c.up):
		return fmt.Errorf("stopped with %d queued, %d unacknowledged batches, %d watches, stream %d, up %v", c.queued(), len(c.unacked), len(c.watches), c.stream, c.up)
	case c.up && !c.downSince.IsZero():
		return errors.New("up while waiting for a first connection")
	}
	for i, b := range c.unacked {
		if len(b.items) == 0 {
			return fmt.Errorf("unacknowledged batch %d is empty", i)
		}
	}
	return nil
}
