package actors

import (
	"github.com/asynkron/protoactor-go/actor"

	"github.com/abcast/abcast/membership"
)

// consumerActor hands events to the user's consumer one at a time and
// returns a delivery credit after each delivery. Events wait in the
// channel's event queue (not in the mailbox) until handed over, so an event
// being handled when the actor crashed is handed over after the restart —
// once, because it leaves the queue only after the hand-over.
type consumerActor struct{ c *Channel }

type consumerWake struct{}

func (a *consumerActor) Receive(ctx actor.Context) {
	c := a.c
	switch ctx.Message().(type) {
	case *actor.Started:
		a.drain(ctx)
		return
	case actor.SystemMessage, actor.AutoReceiveMessage:
		return
	}
	switch ctx.Message().(type) {
	case consumerWake:
		a.drain(ctx)
	case Consumed, *Consumed:
		a.credit(ctx)
	default:
		c.n.log.Warn().Str("channel", c.name).Type("message", ctx.Message()).Msg("consumer got an unexpected message")
	}
}

func (a *consumerActor) drain(ctx actor.Context) {
	c := a.c
	for {
		c.evMu.Lock()
		if len(c.events) == 0 {
			c.evMu.Unlock()
			return
		}
		ev := c.events[0]
		c.evMu.Unlock()
		c.hook("consumer", ev)
		a.handOver(ctx, ev)
		c.evMu.Lock()
		c.events[0] = nil
		c.events = c.events[1:]
		if len(c.events) == 0 {
			c.events = nil
		}
		c.evMu.Unlock()
	}
}

func (a *consumerActor) handOver(ctx actor.Context, ev any) {
	c := a.c
	switch m := ev.(type) {
	case deliverMsg:
		from, _ := membership.ParseNodeID(string(m.d.From))
		e := &Delivered{Channel: c.name, Artifact: m.d.Artifact, From: from}
		c.updateStats(func(s *ChannelStats) { s.Delivered++ })
		if c.cfg.Consume != nil {
			a.call(e)
			a.credit(ctx)
			return
		}
		// An actor consumer answers Consumed; until then the credit is out.
		ctx.RequestWithCustomSender(c.cfg.ConsumerPID, e, ctx.Self())
	case withdrawMsg:
		e := &Withdrawn{Channel: c.name, ID: m.id}
		c.updateStats(func(s *ChannelStats) { s.Withdrawn++ })
		if c.cfg.Consume != nil {
			a.call(e)
			return
		}
		ctx.Send(c.cfg.ConsumerPID, e)
	}
}

// call runs the user's function; a panic there is the user's bug, counted
// and logged, and does not crash our actor: the event counts as consumed.
func (a *consumerActor) call(ev Event) {
	defer func() {
		if r := recover(); r != nil {
			a.c.updateStats(func(s *ChannelStats) { s.ConsumerPanics++ })
			a.c.n.log.Error().Str("channel", a.c.name).Interface("panic", r).Msg("consumer panicked")
		}
	}()
	a.c.cfg.Consume(ev)
}

// credit returns one delivery credit. The running total lives in the
// channel, so it survives restarts and a lost message heals with the next.
func (a *consumerActor) credit(ctx actor.Context) {
	total := a.c.consumedTotal.Add(1)
	ctx.Send(a.c.receiverPID, consumedMsg{total: total})
}
