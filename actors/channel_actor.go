package actors

import (
	"fmt"

	"github.com/asynkron/protoactor-go/actor"
)

// channelActor is a channel's actor: the supervisor of its sender,
// receiver and consumer actors, and the actor that answers the channel's
// requests (Publish, Abort, Reevaluate, Subscribe, ListHeld, GetStats).
// It holds no state of its own; the cores and queues live in the Channel,
// so a restart (which restarts its children too) continues from them.
type channelActor struct {
	c *Channel
}

func (a *channelActor) Receive(ctx actor.Context) {
	c := a.c
	defer func() {
		if r := recover(); r != nil {
			c.noteCrash(r)
			panic(r) // to our supervisor, which decides
		}
	}()
	switch m := ctx.Message().(type) {
	case *actor.Started:
		if prev := c.actorPID.Load(); prev != nil && prev.Id != ctx.Self().Id {
			c.n.log.Error().Str("channel", c.name).Str("running", prev.Id).Str("spawned", ctx.Self().Id).
				Msg("a channel's props were spawned twice; stopping the second actor")
			ctx.Stop(ctx.Self())
			return
		}
		if c.ended() {
			ctx.Stop(ctx.Self())
			return
		}
		c.actorPID.Store(ctx.Self())
		c.n.hide(ctx.Self())
		a.spawnChildren(ctx)
		c.started()
		return
	case *actor.Stopped:
		if c.actorPID.Load() != nil && c.actorPID.Load().Id == ctx.Self().Id {
			c.n.unhide(ctx.Self())
			c.finish(nil)
		}
		return
	case *actor.Restarting, *actor.Stopping, *actor.Terminated:
		// Children stop with us; a child our strategy gave up on was
		// escalated, not stopped, so a Terminated here is part of our own
		// restart or stop.
		return
	case actor.SystemMessage, actor.AutoReceiveMessage:
		return
	case *Publish:
		err := c.Publish(m.Artifact)
		ctx.Respond(&Published{ID: m.Artifact.ID, Err: err})
	case *Abort:
		ctx.Respond(&Aborted{ID: m.ID, Err: c.Abort(m.ID)})
	case *Reevaluate:
		if err := c.Err(); err != nil {
			ctx.Respond(&Reevaluated{Err: err})
			return
		}
		// The receiver answers once it has asked admission again.
		if pid := c.receiverPID.Load(); pid != nil {
			ctx.Send(pid, reevaluateMsg{replyTo: ctx.Sender()})
		}
	case *Subscribe:
		ctx.Respond(&Subscribed{Err: c.Subscribe(m.Consumer)})
	case *ListHeld:
		ctx.Respond(&Held{Artifacts: c.Held(), Err: c.Err()})
	case *GetStats:
		s := c.Stats()
		ctx.Respond(&s)
	default:
		c.hook("channel", m)
		if ctx.Sender() != nil {
			ctx.Respond(fmt.Errorf("actors: channel %s: unknown request %T", c.name, m))
		}
	}
}

// spawnChildren starts the sender, receiver and consumer actors. Each
// re-derives its work from the Channel when it starts, so the order only
// matters for who is there to receive the first messages.
func (a *channelActor) spawnChildren(ctx actor.Context) {
	c := a.c
	strategy := actor.WithSupervisor(c.n.childStrategy())
	spawn := func(name string, producer actor.Producer, dst interface{ Store(*actor.PID) }) {
		pid, err := ctx.SpawnNamed(actor.PropsFromProducer(producer, strategy), name)
		if err != nil {
			// Only a name clash can fail, which means our own bug.
			panic(fmt.Sprintf("spawn %s of channel %s: %v", name, c.name, err))
		}
		dst.Store(pid)
	}
	spawn("consumer", func() actor.Actor { return &consumerActor{c: c} }, &c.consumerPID)
	spawn("receiver", func() actor.Actor { return &receiverActor{c: c} }, &c.receiverPID)
	spawn("sender", func() actor.Actor { return &senderActor{c: c} }, &c.senderPID)
}
