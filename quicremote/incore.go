package quicremote

import (
	"errors"
	"fmt"
	"time"
)

// The receiving side of the remote's protocol, as pure state machines (no
// goroutines, no clock, no I/O): orderCore puts one peer's batches in
// order across its streams, inCore decides for one stream when to
// acknowledge and what to do about full target mailboxes. The shells are
// inboundOrder and inStream (inbound.go).

// ---- order ----

// orderCore delivers one peer's batches in (connection, epoch, seq) order.
// The sender numbers batches from 0 in every epoch and starts a new epoch
// on every stream it opens (after a failure, on a new connection); a batch
// from a newer connection or epoch restarts the count at 0. Anything
// older, or a seq already passed, is stale: dropped (its messages become
// dead letters at the sender, which never saw it acknowledged), so a batch
// that never arrives holds up the ones behind it only until the sender's
// next epoch begins. One batch holds the turn at a time.
type orderCore struct {
	started             bool
	conn, epoch, next   uint64
	busy                bool // a batch holds the turn
	busyConn, busyEpoch uint64
}

type orderVerdict uint8

const (
	orderGo    orderVerdict = iota // the batch has the turn: deliver it, then finish
	orderWait                      // ask again when the turn moves
	orderStale                     // drop it
)

// admit asks for the turn for batch seq of (conn, epoch). It reports
// whether the turn moved (waiting batches should ask again).
func (o *orderCore) admit(conn, epoch, seq uint64) (orderVerdict, bool) {
	moved := false
	if !o.started || conn > o.conn || (conn == o.conn && epoch > o.epoch) {
		o.started = true
		o.conn, o.epoch, o.next = conn, epoch, 0
		moved = true
	}
	switch {
	case conn < o.conn || epoch < o.epoch || seq < o.next:
		return orderStale, moved
	case seq == o.next && !o.busy:
		o.busy = true
		o.busyConn, o.busyEpoch = conn, epoch
		return orderGo, moved
	}
	return orderWait, moved
}

// finish hands the turn on after the batch admitted last. If a newer epoch
// started meanwhile, its count does not move.
func (o *orderCore) finish() {
	o.busy = false
	if o.busyConn == o.conn && o.busyEpoch == o.epoch {
		o.next++
	}
}

// CheckInvariants reports the first inconsistency.
func (o *orderCore) CheckInvariants() error {
	switch {
	case !o.started && (o.busy || o.next != 0):
		return errors.New("busy or counting before the first batch")
	case o.busy && (o.busyConn > o.conn || o.busyConn == o.conn && o.busyEpoch > o.epoch):
		return fmt.Errorf("the batch holding the turn (%d/%d) is newer than the order (%d/%d)", o.busyConn, o.busyEpoch, o.conn, o.epoch)
	}
	return nil
}

// ---- one stream ----

// Acknowledgements are delayed so that light traffic (a request here, an
// answer there) does not cost a packet per batch: the receiver answers
// after every ackEvery batches at once, otherwise ackDelay after the first
// batch it has not acknowledged.
const (
	ackEvery = 8
	ackDelay = 2 * time.Millisecond
)

// inCore is one incoming stream's protocol state, in two parts that no
// event mixes: inBatchDone and inTick touch only the acknowledgement
// fields, inBatchStart and inBacklog only the backlog fields. So a shell
// whose reader alone steps the backlog events needs its lock only around
// the acknowledgement ones (the per-message backlog check then takes
// none):
//
//   - acknowledgements: the count of batches handled, sent back after
//     every ackEvery batches at once, otherwise ackDelay after the first
//     batch not yet acknowledged;
//   - the backlog bound (Config.MaxTargetBacklog, BacklogWait): a user
//     message for a target whose mailbox holds MaxTargetBacklog messages
//     or more waits (the shell stops reading the stream, so QUIC flow
//     control pushes back on the sender) until there is room, for at most
//     BacklogWait in all per batch; a target still full then is marked
//     busy, and its messages are refused at once, without waiting, until
//     its backlog is seen below the bound.
type inCore struct {
	cfg inConfig // never changes

	// Acknowledgements.
	handled, acked uint64
	ackDue         time.Time // zero: nothing waits for a delayed acknowledgement

	// The backlog bound.
	stallUntil time.Time // the current batch may wait until then (zero: it has not waited)
	busy       map[string]struct{}
}

// inConfig is the part of Config the core uses.
type inConfig struct {
	maxBacklog  int
	backlogWait time.Duration
}

func inConfigOf(c *Config) inConfig {
	return inConfig{maxBacklog: c.MaxTargetBacklog, backlogWait: c.BacklogWait}
}

// maxBusyTargets bounds the busy set; when it is full it is emptied, and
// the targets in it get a wait again.
const maxBusyTargets = 1024

type inEventKind uint8

const (
	// inBatchStart: a batch's delivery begins.
	inBatchStart inEventKind = iota
	// inBacklog: a user message for target, whose mailbox holds queued
	// user messages; retry says the shell already waited for this one.
	// Below the bound the time is not used (the shell may pass zero).
	inBacklog
	// inBatchDone: a batch was handled.
	inBatchDone
	// inTick: time passed (a delayed acknowledgement may be due).
	inTick
)

// inEvent is one input to inCore.Step.
type inEvent struct {
	kind   inEventKind
	target string
	queued int
	retry  bool
}

type backlogVerdict uint8

const (
	backlogDeliver backlogVerdict = iota
	backlogWait                   // look again, at the latest at until
	backlogRefuse                 // DeadLetterTargetBusy
)

// inEffects is what the shell must do after Step.
type inEffects struct {
	ack    bool // send the acknowledgement ackN now
	ackN   uint64
	ackAt  time.Time // else step again with inTick at this time (zero: no need)
	arm    bool      // inBatchDone: ackAt is new (until it passes, later batches need no tick)
	stall  bool      // a message started waiting (counted)
	answer backlogVerdict
	until  time.Time
}

// Step applies ev at now; fx is overwritten.
func (c *inCore) Step(ev *inEvent, now time.Time, fx *inEffects) {
	*fx = inEffects{}
	switch ev.kind {
	case inBatchStart:
		c.stallUntil = time.Time{}
	case inBacklog:
		c.backlog(ev, now, fx)
	case inBatchDone:
		c.handled++
		if c.handled-c.acked >= ackEvery {
			c.sendAck(fx)
			return
		}
		if c.ackDue.IsZero() {
			c.ackDue = now.Add(ackDelay)
			fx.arm = true
		}
		fx.ackAt = c.ackDue
	case inTick:
		if !c.ackDue.IsZero() {
			if now.Before(c.ackDue) {
				fx.ackAt = c.ackDue
			} else {
				c.sendAck(fx)
			}
		}
	}
}

func (c *inCore) sendAck(fx *inEffects) {
	c.acked = c.handled
	c.ackDue = time.Time{}
	fx.ack, fx.ackN = true, c.handled
}

func (c *inCore) backlog(ev *inEvent, now time.Time, fx *inEffects) {
	if ev.queued < c.cfg.maxBacklog {
		delete(c.busy, ev.target)
		fx.answer = backlogDeliver
		return
	}
	if _, busy := c.busy[ev.target]; busy {
		fx.answer = backlogRefuse
		return
	}
	if !ev.retry {
		fx.stall = true
	}
	if c.stallUntil.IsZero() {
		c.stallUntil = now.Add(c.cfg.backlogWait)
	}
	if now.Before(c.stallUntil) {
		fx.answer, fx.until = backlogWait, c.stallUntil
		return
	}
	if c.busy == nil || len(c.busy) >= maxBusyTargets {
		c.busy = make(map[string]struct{})
	}
	c.busy[ev.target] = struct{}{}
	fx.answer = backlogRefuse
}

// CheckInvariants reports the first inconsistency.
func (c *inCore) CheckInvariants() error {
	switch {
	case c.acked > c.handled:
		return fmt.Errorf("acknowledged %d of %d handled", c.acked, c.handled)
	case c.handled-c.acked >= ackEvery:
		return fmt.Errorf("%d batches unacknowledged, more than %d", c.handled-c.acked, ackEvery-1)
	case c.ackDue.IsZero() != (c.acked == c.handled):
		return fmt.Errorf("acknowledgement due %v with %d of %d acknowledged", c.ackDue, c.acked, c.handled)
	case len(c.busy) > maxBusyTargets:
		return fmt.Errorf("%d busy targets, bound %d", len(c.busy), maxBusyTargets)
	}
	return nil
}
