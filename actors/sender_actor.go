package actors

import (
	"context"
	"fmt"
	"time"

	"github.com/abcast/abcast/actors/actorkit"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/internal/wire"
	"github.com/abcast/abcast/membership"
	"github.com/abcast/abcast/quicremote/transport"
)

// Messages of the sender side.
type (
	wakeMsg struct{}
	// sessionUp and sessionDown come from the node's presence core: the
	// sender may send to peer in session (a number that grows, used as the
	// core's ConnID), or must stop.
	sessionUp struct {
		peer    broadcast.PeerID
		session uint64
	}
	sessionDown struct{ peer broadcast.PeerID }
	sendResult  struct {
		peer broadcast.PeerID
		tok  broadcast.Token
		err  error
	}
	tickMsg       struct{}
	linkRestarted struct{}
)

func connIDOf(ctx context.Context, n *Node, peer membership.NodeID) (uint64, bool) {
	if id, ok := transport.ConnIDFromContext(ctx); ok {
		return id, true
	}
	return n.rpc.ConnID(peer)
}

// senderActor owns the channel's sender core (kept in the Channel, so a
// restart continues from it) and one link actor per peer.
type senderActor struct {
	c     *Channel
	links map[broadcast.PeerID]*actor.PID
	timer coreTimer
}

func (a *senderActor) Receive(ctx actor.Context) {
	c := a.c
	switch ctx.Message().(type) {
	case *actor.Started:
		a.links = make(map[broadcast.PeerID]*actor.PID)
		// A restart lost the links (children stop with their parent) and
		// perhaps the message that crashed: take the pending ops, bring the
		// core in line with the pool, and resend what was in flight.
		a.exec(ctx, c.sender.ResetTransmissions())
		a.reconcile(ctx)
		a.syncPeers(ctx)
		return
	case *actor.Stopping, *actor.Restarting:
		a.timer.stop()
		return
	case actor.SystemMessage, actor.AutoReceiveMessage:
		return
	}
	c.hook("sender", ctx.Message())
	switch m := ctx.Message().(type) {
	case wakeMsg:
		a.applyOps(ctx, c.takeOps())
	case sessionUp:
		a.exec(ctx, c.sender.PeerUp(m.peer, broadcast.ConnID(m.session)))
	case sessionDown:
		a.exec(ctx, c.sender.PeerDown(m.peer))
	case membersMsg:
		a.applyMembers(ctx, m.snap)
	case sendResult:
		if m.err == nil {
			a.exec(ctx, c.sender.Acked(m.peer, m.tok))
		} else {
			c.n.log.Debug().Str("channel", c.name).Str("peer", string(m.peer)[:10]).Err(m.err).Msg("slot update failed")
			a.exec(ctx, c.sender.Failed(m.peer, m.tok, now()))
		}
	case tickMsg:
		a.timer.fired()
		a.exec(ctx, c.sender.Tick(now()))
	case linkRestarted:
		a.exec(ctx, c.sender.ResetTransmissions())
	case inspectMsg:
		_, live := c.sender.Lookup(m.id)
		desc := fmt.Sprintf("live %v;", live)
		for _, p := range c.sender.Peers() {
			desc += fmt.Sprintf(" %s: pending %d: %s;", string(p)[:8], c.sender.Pending(p), c.sender.DescribePeer(p))
		}
		ctx.Respond(desc)
		return
	}
	a.publishStats()
}

func (a *senderActor) applyMembers(ctx actor.Context, snap *membership.Snapshot) {
	c := a.c
	keep := make(map[broadcast.PeerID]bool)
	for _, p := range c.n.peersOf(snap) {
		keep[p] = true
	}
	for _, p := range c.sender.Peers() {
		if !keep[p] {
			a.exec(ctx, c.sender.RemovePeer(p))
			if pid, ok := a.links[p]; ok {
				ctx.Stop(pid)
				delete(a.links, p)
			}
		}
	}
}

// syncPeers brings the core's view of members and sessions in line with
// the node's, for a (re)started actor that may have missed events.
func (a *senderActor) syncPeers(ctx actor.Context) {
	c := a.c
	a.applyMembers(ctx, c.n.view())
	sessions, _ := c.n.presenceOf(c.name)
	for _, p := range c.sender.Peers() {
		if _, ok := sessions[p]; !ok {
			a.exec(ctx, c.sender.PeerDown(p))
		}
	}
	for p, s := range sessions {
		a.exec(ctx, c.sender.PeerUp(p, broadcast.ConnID(s)))
	}
}

// applyOps applies a burst of publishes and aborts to the core, then
// performs the effects once, so an artifact published and aborted within
// the burst never leaves (broadcast.Coalesce).
func (a *senderActor) applyOps(ctx actor.Context, ops []poolOp) {
	var all []broadcast.Effect
	for _, op := range ops {
		var eff []broadcast.Effect
		if op.abort {
			eff, _ = a.c.sender.Abort(op.a.ID) // unknown: already reconciled
		} else {
			eff, _ = a.c.sender.Publish(op.a) // duplicate: already reconciled
		}
		all = append(all, eff...)
	}
	a.exec(ctx, broadcast.Coalesce(all))
}

// reconcile makes the core's live set equal the publisher's pool.
func (a *senderActor) reconcile(ctx actor.Context) {
	c := a.c
	c.takeOps()
	c.mu.Lock()
	want := make(map[broadcast.ArtifactID]broadcast.Artifact, len(c.pool))
	for id, e := range c.pool {
		want[id] = e.a
	}
	c.mu.Unlock()
	for _, art := range c.sender.LiveArtifacts() {
		if _, ok := want[art.ID]; ok {
			delete(want, art.ID)
			continue
		}
		eff, _ := c.sender.Abort(art.ID)
		a.exec(ctx, eff)
	}
	for _, art := range want {
		eff, _ := c.sender.Publish(art)
		a.exec(ctx, eff)
	}
}

func (a *senderActor) exec(ctx actor.Context, eff []broadcast.Effect) {
	for _, e := range eff {
		switch e := e.(type) {
		case broadcast.SendUpdate:
			ctx.Send(a.link(ctx, e.Peer), e)
		case broadcast.CancelSend:
			if pid, ok := a.links[e.Peer]; ok {
				ctx.Send(pid, e)
			}
		case broadcast.RetryAt:
			a.timer.set(ctx, a.c.n.system.Root, e.At, tickMsg{})
		}
	}
}

func (a *senderActor) link(ctx actor.Context, peer broadcast.PeerID) *actor.PID {
	if pid, ok := a.links[peer]; ok {
		return pid
	}
	id, err := membership.ParseNodeID(string(peer))
	if err != nil {
		panic(fmt.Sprintf("sender core named a peer that is no NodeID: %q", peer)) // our bug
	}
	c := a.c
	props := actor.PropsFromProducer(func() actor.Actor { return &linkActor{c: c, peer: id, calls: map[broadcast.Token]context.CancelFunc{}} },
		actor.WithMailbox(actorkit.BoundedMailbox(c.n.cfg.MailboxCapacity, actorkit.WithOnRefused(func(*actor.PID, interface{}) { c.n.refused.Add(1) }))))
	pid := ctx.Spawn(props)
	a.links[peer] = pid
	return pid
}

// coreTimer is the one timer a core's time contract asks its owner to keep
// (broadcast.RetryAt): set to the earliest deadline announced, it sends msg
// to the actor when it fires, and the actor then calls the core's Tick.
type coreTimer struct {
	at time.Time
	t  *time.Timer
}

func (ct *coreTimer) set(ctx actor.Context, root *actor.RootContext, at time.Time, msg any) {
	if !ct.at.IsZero() && !at.Before(ct.at) {
		return
	}
	ct.at = at
	if ct.t != nil {
		ct.t.Stop()
	}
	self := ctx.Self()
	ct.t = time.AfterFunc(time.Until(at), func() { root.Send(self, msg) })
}

// fired forgets the deadline: the actor is about to Tick, and the core
// announces its next one.
func (ct *coreTimer) fired() { ct.at = time.Time{} }

func (ct *coreTimer) stop() {
	if ct.t != nil {
		ct.t.Stop()
	}
	ct.at = time.Time{}
}

func (a *senderActor) publishStats() {
	c := a.c
	st, live := c.sender.Stats(), c.sender.Live()
	c.updateStats(func(s *ChannelStats) { s.Sender, s.Live = st, live })
}

// linkActor transmits one peer's slot updates, each on its own stream, and
// reports every outcome to the sender actor. The core bounds how many are
// in flight, so its mailbox stays small.
type linkActor struct {
	c     *Channel
	peer  membership.NodeID
	calls map[broadcast.Token]context.CancelFunc
	// stream carries the small updates (update_stream.go); nil until the
	// first, replaced when it fails. Until streamRefusedUntil, after the
	// peer refused it, every update goes on its own stream.
	stream             *updateStream
	streamRefusedUntil time.Time
}

type callDone struct{ tok broadcast.Token }

func (l *linkActor) Receive(ctx actor.Context) {
	switch ctx.Message().(type) {
	case *actor.Started:
		return
	case *actor.Restarting:
		l.cancelAll()
		ctx.Send(ctx.Parent(), linkRestarted{})
		return
	case *actor.Stopping:
		l.cancelAll()
		return
	case actor.SystemMessage, actor.AutoReceiveMessage:
		return
	}
	l.c.hook("link", ctx.Message())
	switch m := ctx.Message().(type) {
	case broadcast.SendUpdate:
		l.send(ctx, m)
	case broadcast.CancelSend:
		if cancel, ok := l.calls[m.Token]; ok {
			cancel()
			delete(l.calls, m.Token)
		} else if l.stream != nil {
			l.stream.cancelTok(m.Token)
		}
	case callDone:
		if cancel, ok := l.calls[m.tok]; ok {
			cancel()
			delete(l.calls, m.tok)
		}
	}
}

func (l *linkActor) send(ctx actor.Context, m broadcast.SendUpdate) {
	c := l.c
	parent, self, root := ctx.Parent(), ctx.Self(), c.n.system.Root
	data, err := wire.EncodeSlotUpdate(m.Update)
	if err != nil {
		// Our own bug; report failure so the core backs off instead of
		// waiting forever.
		ctx.Send(parent, sendResult{peer: m.Peer, tok: m.Token, err: err})
		return
	}
	if len(data) <= maxStreamedUpdate && l.streamed(ctx, m, data) {
		return
	}
	c.updateStats(func(s *ChannelStats) { s.UpdatesTransmitted++ })
	// The timeout is the core's (it grows with the size and the failed
	// attempts of this state).
	cctx, cancel := context.WithTimeout(c.n.ctx, m.Timeout)
	l.calls[m.Token] = cancel
	peer := l.peer
	c.n.goTracked(func() {
		err := c.n.rpc.Push(cctx, peer, c.updateProto, data)
		if err == nil {
			c.countSent(peer, len(data))
		}
		// A cancelled call's result is dropped by the core (unknown token).
		root.Send(parent, sendResult{peer: m.Peer, tok: m.Token, err: err})
		root.Send(self, callDone{m.Token})
	})
}

// streamed queues a small update on the peer's update stream, opening one
// if there is none (or it failed); false when the peer refused the stream
// lately, and the update goes on a stream of its own.
func (l *linkActor) streamed(ctx actor.Context, m broadcast.SendUpdate, data []byte) bool {
	if l.stream != nil && l.stream.failed() {
		l.stream.mu.Lock()
		refused := l.stream.refused
		l.stream.mu.Unlock()
		if refused {
			l.streamRefusedUntil = time.Now().Add(streamRefusedPause)
		}
		l.stream = nil
	}
	if time.Now().Before(l.streamRefusedUntil) {
		return false
	}
	if l.stream == nil {
		c, parent, root, peer := l.c, ctx.Parent(), l.c.n.system.Root, m.Peer
		l.stream = newUpdateStream(c, l.peer, func(tok broadcast.Token, err error, bytes int) {
			if err == nil {
				c.countSent(l.peer, bytes)
			}
			root.Send(parent, sendResult{peer: peer, tok: tok, err: err})
		})
	}
	return l.stream.send(m.Token, data, m.Timeout)
}

func (l *linkActor) cancelAll() {
	for tok, cancel := range l.calls {
		cancel()
		delete(l.calls, tok)
	}
	if l.stream != nil {
		l.stream.close()
		l.stream = nil
	}
}

// countSent counts the bytes of an update peer acknowledged.
func (c *Channel) countSent(peer membership.NodeID, n int) {
	c.updateStats(func(s *ChannelStats) {
		s.UpdateBytesSent += uint64(n)
		if s.BytesSentTo == nil {
			s.BytesSentTo = make(map[string]uint64)
		}
		s.BytesSentTo[peer.String()] += uint64(n)
	})
}
