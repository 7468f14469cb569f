package actors

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/membership"
)

// The consumer contract (ChannelConfig.ConsumerPID and Consume): every
// event is numbered and stays in the channel's delivery queue until the
// consumer confirms it; a Delivered's credit stays out until then, so a
// consumer that is slow, crashing or gone pauses fetching instead of
// losing artifacts. The queue lives in the Channel, so a restart of our
// consumer actor loses nothing either.

// delivery is the consumer contract's state. Events are kept in sequence
// order; at most ConsumerWindow of them are handed to an actor consumer and
// unconfirmed at once.
type delivery struct {
	mu       sync.Mutex
	q        []*pending // sequence order: in flight first, then waiting
	nextSeq  uint64
	consumer *actor.PID // nil: none bound (events wait)
	// binding grows with every (re)bind: an event handed over under an
	// older binding is handed over again.
	binding uint64
	alive   bool // the bound consumer is known to run (we watch it)
	wakeup  bool // a consumerWake is on its way; no need for another
	// consumerID mirrors consumer's Id for lock-free readers (the node's
	// EventStream handler).
	consumerID atomic.Pointer[string]
}

// pending is one event not yet confirmed.
type pending struct {
	seq     uint64
	ev      Event // *Delivered or *Withdrawn, as first built (Attempt 0)
	id      broadcast.ArtifactID
	from    membership.NodeID
	credit  bool // a Delivered: confirming it returns a delivery credit
	sent    bool
	binding uint64
	sentAt  time.Time
	attempt int
	retryAt time.Time // a Consume function panicked: not before then
}

func (d *delivery) init(consumer *actor.PID) {
	d.consumer = consumer
	d.binding = 1
	d.alive = consumer != nil
	d.setID(consumer)
}

func (d *delivery) setID(pid *actor.PID) {
	if pid == nil {
		d.consumerID.Store(nil)
		return
	}
	id := pid.Id
	d.consumerID.Store(&id)
}

// push queues an event and reports whether the consumer actor needs a
// wake-up.
func (d *delivery) push(p *pending) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.nextSeq++
	p.seq = d.nextSeq
	switch ev := p.ev.(type) {
	case *Delivered:
		ev.Seq = p.seq
	case *Withdrawn:
		ev.Seq = p.seq
	}
	d.q = append(d.q, p)
	if d.wakeup {
		return false
	}
	d.wakeup = true
	return true
}

func (d *delivery) pending() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.q)
}

// rebind binds the consumer to pid: everything unconfirmed is handed over
// again.
func (d *delivery) rebind(pid *actor.PID) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.consumer = pid
	d.binding++
	d.alive = pid != nil
	d.setID(pid)
	for _, p := range d.q {
		p.sent = false
	}
}

// deliver and withdraw queue the receiver core's Deliver and Withdraw
// effects for the consumer (called from the receiver actor).
func (c *Channel) deliver(e broadcast.Deliver) {
	from, _ := membership.ParseNodeID(string(e.From))
	p := &pending{ev: &Delivered{Channel: c.name, Artifact: e.Artifact, From: from}, id: e.Artifact.ID, from: from, credit: true}
	c.held.add(e.Artifact.ID, from)
	if c.del.push(p) {
		c.sendToConsumer(consumerWake{})
	}
}

func (c *Channel) withdraw(id broadcast.ArtifactID) {
	// A Delivered of id still waiting, never handed over, need not be:
	// both go, and its credit comes back.
	c.del.mu.Lock()
	for i, p := range c.del.q {
		if p.id == id && p.credit && !p.sent && p.attempt == 0 {
			c.del.q = append(c.del.q[:i], c.del.q[i+1:]...)
			c.del.mu.Unlock()
			c.held.remove(id)
			c.credit()
			return
		}
	}
	c.del.mu.Unlock()
	p := &pending{ev: &Withdrawn{Channel: c.name, ID: id}, id: id}
	if c.del.push(p) {
		c.sendToConsumer(consumerWake{})
	}
}

// credit returns one delivery credit. The running total lives in the
// channel, so it survives restarts, and a lost message heals with the
// next.
func (c *Channel) credit() {
	total := c.consumedTotal.Add(1)
	c.sendToReceiver(consumedMsg{total: total})
	c.wakeCreditWaiters()
}

// consumerActor hands the channel's events to its consumer, a function or
// an actor, and keeps the contract: confirmed events leave the queue,
// unconfirmed ones are handed over again.
type consumerActor struct {
	c       *Channel
	watched *actor.PID
	timer   *time.Timer
	timerAt time.Time
	poll    time.Duration // while the consumer is gone: how often to look for it
}

type (
	consumerWake    struct{ rebind bool }
	consumerTimer   struct{}
	consumerCrashed struct{ who *actor.PID }
)

func (a *consumerActor) Receive(ctx actor.Context) {
	c := a.c
	switch m := ctx.Message().(type) {
	case *actor.Started:
		a.pump(ctx)
		return
	case *actor.Stopping, *actor.Restarting:
		if a.timer != nil {
			a.timer.Stop()
		}
		return
	case *actor.Terminated:
		a.consumerGone(ctx, m.Who, false)
		return
	case actor.SystemMessage, actor.AutoReceiveMessage:
		return
	case *Consumed:
		a.confirm(ctx, m.Seq)
	case Consumed:
		a.confirm(ctx, m.Seq)
	case *actor.DeadLetterResponse:
		a.consumerGone(ctx, m.Target, true)
	case consumerWake:
		c.del.mu.Lock()
		c.del.wakeup = false
		c.del.mu.Unlock()
		a.pump(ctx)
	case consumerTimer:
		a.timerAt = time.Time{}
		a.expire(ctx)
	case consumerCrashed:
		a.crashed(ctx, m.who)
	default:
		c.n.log.Warn().Str("channel", c.name).Str("type", fmt.Sprintf("%T", m)).
			Str("from", fmt.Sprint(ctx.Sender())).Msg("consumer actor got a message it does not know")
	}
}

// pump hands over what the window allows. For a Consume function that is
// everything due, one at a time; for an actor, up to ConsumerWindow in
// flight.
func (a *consumerActor) pump(ctx actor.Context) {
	c := a.c
	d := &c.del
	if c.cfg.Consume != nil {
		a.pumpFunc(ctx)
		return
	}
	d.mu.Lock()
	consumer, alive, binding := d.consumer, d.alive, d.binding
	if consumer == nil || !alive {
		d.mu.Unlock()
		a.lookForConsumer(ctx)
		return
	}
	if a.watched == nil || a.watched.Id != consumer.Id {
		if a.watched != nil {
			ctx.Unwatch(a.watched)
		}
		ctx.Watch(consumer)
		a.watched = consumer
	}
	inflight := 0
	var send []*pending
	for _, p := range d.q {
		if p.sent && p.binding == binding {
			inflight++
			continue
		}
		if inflight+len(send) >= c.n.cfg.ConsumerWindow {
			break
		}
		send = append(send, p)
	}
	d.mu.Unlock()
	for _, p := range send {
		// The test hook may crash us here, as a bug would: the event is not
		// marked handed over, so it goes out after the restart.
		c.hook("consumer", p.ev)
		d.mu.Lock()
		if p.sent && p.binding == d.binding || d.binding != binding {
			d.mu.Unlock()
			continue
		}
		p.sent, p.binding, p.sentAt = true, binding, now()
		p.attempt++
		ev := p.hand()
		d.mu.Unlock()
		if p.attempt > 1 {
			c.updateStats(func(s *ChannelStats) { s.Redeliveries++ })
		}
		ctx.Request(consumer, ev)
	}
	a.armTimer(ctx)
}

// hand builds the message for one hand-over: a fresh value each time, so a
// consumer still holding an earlier one sees no change under its feet.
func (p *pending) hand() Event {
	switch ev := p.ev.(type) {
	case *Delivered:
		cp := *ev
		cp.Attempt = p.attempt
		return &cp
	case *Withdrawn:
		cp := *ev
		cp.Attempt = p.attempt
		return &cp
	}
	return p.ev
}

// pumpFunc calls the Consume function for each due event in order. A
// panic is the user's bug: counted, and the event is handed over again
// after a pause, and nothing behind it overtakes it.
func (a *consumerActor) pumpFunc(ctx actor.Context) {
	c := a.c
	d := &c.del
	for {
		d.mu.Lock()
		if len(d.q) == 0 {
			d.mu.Unlock()
			return
		}
		p := d.q[0]
		if now := now(); now.Before(p.retryAt) {
			d.mu.Unlock()
			a.schedule(ctx, p.retryAt)
			return
		}
		d.mu.Unlock()
		c.hook("consumer", p.ev)
		d.mu.Lock()
		p.attempt++
		ev := p.hand()
		d.mu.Unlock()
		if p.attempt > 1 {
			c.updateStats(func(s *ChannelStats) { s.Redeliveries++ })
		}
		if !a.call(ev) {
			pause := min(10*time.Millisecond<<min(p.attempt-1, 20), c.n.cfg.ConsumerTimeout)
			d.mu.Lock()
			p.retryAt = now().Add(pause)
			d.mu.Unlock()
			continue
		}
		a.confirm(ctx, p.seq)
	}
}

// call runs the user's function; a panic there is the user's bug, counted
// and logged, and does not crash our actor.
func (a *consumerActor) call(ev Event) (ok bool) {
	defer func() {
		if r := recover(); r != nil {
			a.c.updateStats(func(s *ChannelStats) { s.ConsumerPanics++ })
			a.c.n.log.Error().Str("channel", a.c.name).Str("panic", fmt.Sprint(r)).Uint64("seq", ev.Sequence()).
				Msg("consume function panicked; the event will be handed over again")
			ok = false
		}
	}()
	a.c.cfg.Consume(ev)
	return true
}

// confirm takes event seq off the queue. Events handed over before it
// under the same binding and still unconfirmed were lost (a consumer
// handles its mailbox in order, so it skipped them only by crashing on
// them): they are handed over again at once.
func (a *consumerActor) confirm(ctx actor.Context, seq uint64) {
	c := a.c
	d := &c.del
	d.mu.Lock()
	idx := -1
	for i, p := range d.q {
		if p.seq == seq {
			idx = i
			break
		}
	}
	if idx < 0 || seq == 0 {
		d.mu.Unlock()
		c.updateStats(func(s *ChannelStats) { s.StrayConfirmations++ })
		return
	}
	p := d.q[idx]
	d.q = append(d.q[:idx], d.q[idx+1:]...)
	var dropped []*pending
	if w, ok := p.ev.(*Withdrawn); ok {
		// An older Delivered of the same id still unconfirmed need not be
		// handed over again: the consumer has been told it is gone.
		kept := d.q[:0]
		for _, q := range d.q {
			if q.credit && q.id == w.ID && q.seq < seq {
				dropped = append(dropped, q)
				continue
			}
			kept = append(kept, q)
		}
		clear(d.q[len(kept):])
		d.q = kept
	}
	lost := 0
	if c.cfg.Consume == nil {
		for _, q := range d.q {
			if q.seq < seq && q.sent && q.binding == p.binding {
				q.sent = false
				lost++
			}
		}
	}
	d.mu.Unlock()
	switch ev := p.ev.(type) {
	case *Delivered:
		c.updateStats(func(s *ChannelStats) { s.Delivered++ })
		c.held.confirm(ev.Artifact.ID)
		c.credit()
	case *Withdrawn:
		c.updateStats(func(s *ChannelStats) { s.Withdrawn++ })
		c.held.remove(ev.ID)
	}
	for range dropped {
		c.credit()
	}
	if lost > 0 {
		c.updateStats(func(s *ChannelStats) { s.ConsumerLost += uint64(lost) })
	}
	if c.cfg.Consume == nil {
		a.pump(ctx)
	}
}

// crashed handles a crash of the consumer actor that its supervisor
// handled (restart or resume). The consumer takes its mailbox in order and
// its confirmations reach us before this notice does (both travel through
// our mailbox, the notice later), so the oldest event still unconfirmed is
// the one it crashed on: that one is handed over again; the rest are still
// in its mailbox. (If it crashed on a message of its own, that event may
// come twice; its Seq tells.)
func (a *consumerActor) crashed(ctx actor.Context, who *actor.PID) {
	c := a.c
	d := &c.del
	d.mu.Lock()
	if d.consumer == nil || who.Id != d.consumer.Id {
		d.mu.Unlock()
		return
	}
	lost := false
	for _, p := range d.q {
		if p.sent && p.binding == d.binding {
			p.sent = false
			lost = true
			break
		}
	}
	d.mu.Unlock()
	if lost {
		c.updateStats(func(s *ChannelStats) { s.ConsumerLost++ })
		a.pump(ctx)
	}
}

// consumerGone handles the consumer's termination (or a delivery that
// dead-lettered): everything it had is handed over again once a consumer
// is back — a Subscribe, or an actor of the same name found again.
func (a *consumerActor) consumerGone(ctx actor.Context, who *actor.PID, deadLetter bool) {
	c := a.c
	d := &c.del
	d.mu.Lock()
	if d.consumer == nil || who == nil || who.Id != d.consumer.Id {
		d.mu.Unlock()
		return
	}
	lost := 0
	if d.alive {
		d.alive = false
		d.binding++
		for _, p := range d.q {
			if p.sent {
				p.sent = false
				lost++
			}
		}
	}
	d.mu.Unlock()
	if a.watched != nil && !deadLetter {
		a.watched = nil
	}
	if lost > 0 {
		c.updateStats(func(s *ChannelStats) { s.ConsumerLost += uint64(lost) })
	}
	c.n.log.Warn().Str("channel", c.name).Str("consumer", who.String()).Int("unconfirmed", lost).
		Msg("consumer is gone; its events wait for it to come back or for a Subscribe")
	a.poll = 0
	a.lookForConsumer(ctx)
}

// lookForConsumer checks whether an actor answers the bound consumer's PID
// again (respawned under the same name) and resumes if so; otherwise it
// looks again later, backing off to once a second.
func (a *consumerActor) lookForConsumer(ctx actor.Context) {
	c := a.c
	d := &c.del
	d.mu.Lock()
	consumer := d.consumer
	d.mu.Unlock()
	if consumer == nil {
		return // waits for a Subscribe
	}
	if _, ok := c.n.system.ProcessRegistry.GetLocal(consumer.Id); ok {
		d.mu.Lock()
		if !d.alive && d.consumer != nil && d.consumer.Id == consumer.Id {
			d.alive = true
		}
		d.mu.Unlock()
		if a.watched != nil {
			ctx.Unwatch(a.watched)
			a.watched = nil
		}
		a.pump(ctx)
		return
	}
	a.poll = min(max(2*a.poll, 10*time.Millisecond), time.Second)
	a.schedule(ctx, now().Add(a.poll))
}

// expire hands over again events an actor consumer has not confirmed
// within ConsumerTimeout, and looks for a gone consumer.
func (a *consumerActor) expire(ctx actor.Context) {
	c := a.c
	if c.cfg.Consume != nil {
		a.pumpFunc(ctx)
		return
	}
	d := &c.del
	d.mu.Lock()
	alive := d.alive
	n := 0
	deadline := now().Add(-c.n.cfg.ConsumerTimeout)
	for _, p := range d.q {
		if p.sent && !p.sentAt.After(deadline) {
			p.sent = false
			n++
		}
	}
	d.mu.Unlock()
	if n > 0 {
		c.updateStats(func(s *ChannelStats) { s.ConsumerTimeouts += uint64(n) })
	}
	if !alive {
		a.lookForConsumer(ctx)
		return
	}
	a.pump(ctx)
}

// armTimer schedules the next ConsumerTimeout expiry.
func (a *consumerActor) armTimer(ctx actor.Context) {
	c := a.c
	d := &c.del
	d.mu.Lock()
	var first time.Time
	for _, p := range d.q {
		if p.sent && (first.IsZero() || p.sentAt.Before(first)) {
			first = p.sentAt
		}
	}
	d.mu.Unlock()
	if !first.IsZero() {
		a.schedule(ctx, first.Add(c.n.cfg.ConsumerTimeout))
	}
}

// schedule makes sure a consumerTimer arrives no later than at.
func (a *consumerActor) schedule(ctx actor.Context, at time.Time) {
	if !a.timerAt.IsZero() && !at.Before(a.timerAt) {
		return
	}
	if a.timer != nil {
		a.timer.Stop()
	}
	a.timerAt = at
	self, root := ctx.Self(), a.c.n.system.Root
	a.timer = time.AfterFunc(time.Until(at), func() { root.Send(self, consumerTimer{}) })
}

// heldSet tracks what the channel holds for Held: delivered (or being
// delivered) and not withdrawn, in delivery order.
type heldSet struct {
	mu    sync.Mutex
	order []broadcast.ArtifactID
	m     map[broadcast.ArtifactID]*HeldArtifact
}

func (h *heldSet) add(id broadcast.ArtifactID, from membership.NodeID) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.m == nil {
		h.m = map[broadcast.ArtifactID]*HeldArtifact{}
	}
	if _, ok := h.m[id]; !ok {
		h.order = append(h.order, id)
	}
	h.m[id] = &HeldArtifact{ID: id, From: from}
}

func (h *heldSet) confirm(id broadcast.ArtifactID) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if e := h.m[id]; e != nil {
		e.Confirmed = true
	}
}

func (h *heldSet) remove(id broadcast.ArtifactID) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.m, id)
	// Compact the order lazily, once it is mostly gaps.
	if len(h.order) > 64 && len(h.order) > 2*len(h.m) {
		kept := h.order[:0]
		for _, x := range h.order {
			if _, ok := h.m[x]; ok {
				kept = append(kept, x)
			}
		}
		clear(h.order[len(kept):])
		h.order = kept
	}
}

func (h *heldSet) list() []HeldArtifact {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]HeldArtifact, 0, len(h.m))
	seen := make(map[broadcast.ArtifactID]bool, len(h.m))
	for _, id := range h.order {
		if e := h.m[id]; e != nil && !seen[id] {
			seen[id] = true
			out = append(out, *e)
		}
	}
	return out
}
