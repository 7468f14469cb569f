package actors

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/abcast/abcast/actors/actorkit"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/internal/wire"
	"github.com/abcast/abcast/membership"
	"github.com/abcast/abcast/quicremote/transport"
)

// Messages of the receiver side.
type (
	updateMsg struct {
		peer broadcast.PeerID
		conn broadcast.ConnID
		u    broadcast.SlotUpdate
		// decodeErr: the update did not decode; it is only counted.
		decodeErr error
		reply     chan<- error // buffered; the handler waits on it
	}
	fetchFailed struct{ from broadcast.PeerID }
	fetchResult struct {
		id   broadcast.ArtifactID
		from broadcast.PeerID
		a    broadcast.Artifact
	}
	fetchRejected struct{ from broadcast.PeerID }
	consumedMsg   struct{ total uint64 }
	reevaluateMsg struct{ replyTo *actor.PID }
	// acceptPeer and dropPeer come from the node's presence core: apply
	// peer's updates arriving on conn from now on; or forget what peer
	// advertised (it closed the channel) and refuse its updates.
	acceptPeer struct {
		peer broadcast.PeerID
		conn broadcast.ConnID
	}
	dropPeer struct{ peer broadcast.PeerID }
)

// errNotAccepted refuses an update from a peer that has not announced the
// channel on its connection (a straggler of a closed incarnation, or one
// quicker than the announcement): the sender retries.
var errNotAccepted = errors.New("channel not announced by the sender on this connection")

// receiverActor owns the channel's receiver core (kept in the Channel) and
// one fetch actor per running download.
type receiverActor struct {
	c       *Channel
	fetches map[broadcast.ArtifactID]*actor.PID
	accept  map[broadcast.PeerID]broadcast.ConnID
}

func (a *receiverActor) Receive(ctx actor.Context) {
	c := a.c
	switch ctx.Message().(type) {
	case *actor.Started:
		// After a restart the fetch actors are gone: start them again.
		// Events sent while it was down may be lost: re-apply the members
		// and the consumer's running total of consumed deliveries.
		a.fetches = make(map[broadcast.ArtifactID]*actor.PID)
		a.applyMembers(ctx, c.n.view())
		_, a.accept = c.n.presenceOf(c.name)
		a.exec(ctx, c.receiver.RestartFetches())
		a.applyConsumed(ctx, c.consumedTotal.Load())
		return
	case actor.SystemMessage, actor.AutoReceiveMessage:
		return
	}
	c.hook("receiver", ctx.Message())
	switch m := ctx.Message().(type) {
	case updateMsg:
		if m.decodeErr != nil {
			c.receiver.RecordInvalid(m.peer)
			c.updateStats(func(s *ChannelStats) { s.UpdatesRefused++ })
			m.reply <- m.decodeErr
			break
		}
		if conn, ok := a.accept[m.peer]; !ok || conn != m.conn {
			c.updateStats(func(s *ChannelStats) { s.UpdatesNotAccepted++ })
			m.reply <- errNotAccepted
			break
		}
		eff, err := c.receiver.HandleUpdate(m.peer, m.conn, m.u)
		a.exec(ctx, eff)
		if err != nil && !errors.Is(err, broadcast.ErrStale) {
			c.updateStats(func(s *ChannelStats) { s.UpdatesRefused++ })
			c.n.log.Debug().Str("channel", c.name).Str("peer", string(m.peer)[:10]).Err(err).Msg("update refused")
		}
		m.reply <- err
	case membersMsg:
		a.applyMembers(ctx, m.snap)
	case fetchResult:
		eff, err := c.receiver.FetchDone(m.id, m.from, m.a)
		if err != nil {
			c.updateStats(func(s *ChannelStats) { s.BadFetchResponses++ })
			if pid, ok := a.fetches[m.id]; ok {
				ctx.Send(pid, fetchRejected{from: m.from})
			}
			return
		}
		c.updateStats(func(s *ChannelStats) { s.FetchesSucceeded++ })
		if pid, ok := a.fetches[m.id]; ok && c.receiver.IsDelivered(m.id) {
			ctx.Stop(pid)
			delete(a.fetches, m.id)
		}
		a.exec(ctx, eff)
	case consumedMsg:
		a.applyConsumed(ctx, m.total)
	case fetchFailed:
		c.receiver.RecordFetchFailure(m.from)
	case reevaluateMsg:
		a.exec(ctx, c.receiver.Reevaluate())
		if m.replyTo != nil {
			ctx.Send(m.replyTo, &Reevaluated{})
		}
	case acceptPeer:
		a.accept[m.peer] = m.conn
	case dropPeer:
		delete(a.accept, m.peer)
		a.exec(ctx, c.receiver.RemovePeer(m.peer))
		if c.n.view().Contains(mustNodeID(m.peer)) {
			c.receiver.AddPeer(m.peer)
		}
	case inspectMsg:
		ctx.Respond(fmt.Sprintf("%s; fetch actor %v", c.receiver.DescribeID(m.id), a.fetches[m.id] != nil))
		return
	}
	a.publishStats()
}

func (a *receiverActor) applyMembers(ctx actor.Context, snap *membership.Snapshot) {
	c := a.c
	keep := make(map[broadcast.PeerID]bool)
	for _, p := range c.n.peersOf(snap) {
		keep[p] = true
		c.receiver.AddPeer(p)
	}
	for _, p := range c.receiver.Peers() {
		if !keep[p] {
			a.exec(ctx, c.receiver.RemovePeer(p))
		}
	}
}

// applyConsumed returns the credits of deliveries consumed up to total.
func (a *receiverActor) applyConsumed(ctx actor.Context, total uint64) {
	c := a.c
	for c.consumedSeen < total {
		c.consumedSeen++
		a.exec(ctx, c.receiver.Consumed())
	}
}

func (a *receiverActor) exec(ctx actor.Context, eff []broadcast.Effect) {
	c := a.c
	for _, e := range eff {
		switch e := e.(type) {
		case broadcast.StartFetch:
			if old, ok := a.fetches[e.ID]; ok {
				ctx.Stop(old)
			}
			start := e
			props := actor.PropsFromProducer(func() actor.Actor { return &fetchActor{c: c, id: start.ID, advertisers: start.Advertisers} },
				actor.WithMailbox(actorkit.BoundedMailbox(c.n.cfg.MailboxCapacity, actorkit.WithOnRefused(func(*actor.PID, interface{}) { c.n.refused.Add(1) }))))
			a.fetches[e.ID] = ctx.Spawn(props)
		case broadcast.AdvertisersChanged:
			if pid, ok := a.fetches[e.ID]; ok {
				ctx.Send(pid, e)
			}
		case broadcast.CancelFetch:
			if pid, ok := a.fetches[e.ID]; ok {
				ctx.Stop(pid)
				delete(a.fetches, e.ID)
			}
		case broadcast.Deliver:
			c.deliver(e)
		case broadcast.Withdraw:
			c.withdraw(e.ID)
		}
	}
}

func (a *receiverActor) publishStats() {
	c := a.c
	st, fetching, ids, waiting := c.receiver.Stats(), c.receiver.Fetching(), c.receiver.IDs(), c.receiver.Waiting()
	peers := c.receiver.Peers()
	ps := make(map[string]broadcast.PeerStats, len(peers))
	for _, p := range peers {
		ps[string(p)] = c.receiver.PeerStats(p)
	}
	c.updateStats(func(s *ChannelStats) {
		s.Receiver, s.ActiveFetches, s.AdvertisedIDs, s.PeerStats, s.CreditsOut = st, fetching, ids, ps, waiting
	})
}

// fetchActor downloads one artifact: it asks one advertiser at a time, with
// a per-attempt timeout that doubles, and tries the others on failure,
// until it succeeds or is stopped (no one advertises the id any more).
type fetchActor struct {
	c           *Channel
	id          broadcast.ArtifactID
	advertisers []broadcast.PeerID
	attempt     int
	seq         int
	cancel      context.CancelFunc
	timer       *time.Timer
	avoid       map[broadcast.PeerID]int // attempt number until which a peer is skipped
	next        int
}

type attemptDone struct {
	seq  int
	from broadcast.PeerID
	a    *broadcast.Artifact
	err  error
}
type retryMsg struct{ seq int }

func (f *fetchActor) Receive(ctx actor.Context) {
	switch ctx.Message().(type) {
	case *actor.Started:
		f.avoid = make(map[broadcast.PeerID]int)
		f.next = rand.IntN(len(f.advertisers) + 1)
		f.try(ctx)
		return
	case *actor.Stopping, *actor.Restarting:
		f.stop()
		return
	case actor.SystemMessage, actor.AutoReceiveMessage:
		return
	}
	f.c.hook("fetch", ctx.Message())
	switch m := ctx.Message().(type) {
	case broadcast.AdvertisersChanged:
		f.advertisers = m.Advertisers
	case attemptDone:
		if m.seq != f.seq {
			return
		}
		f.stop()
		if m.err == nil && m.a != nil {
			f.c.updateStats(func(s *ChannelStats) { s.FetchAttempts++ })
			ctx.Send(ctx.Parent(), fetchResult{id: f.id, from: m.from, a: *m.a})
			return // the parent stops us on success, or says fetchRejected
		}
		f.c.updateStats(func(s *ChannelStats) { s.FetchAttempts++; s.FetchFailures++ })
		if m.from != "" {
			ctx.Send(ctx.Parent(), fetchFailed{from: m.from})
		}
		f.avoid[m.from] = f.attempt + len(f.advertisers)
		f.backoff(ctx)
	case fetchRejected:
		f.avoid[m.from] = f.attempt + 4*len(f.advertisers) // it served wrong bytes
		f.backoff(ctx)
	case retryMsg:
		if m.seq == f.seq {
			f.try(ctx)
		}
	}
}

func (f *fetchActor) stop() {
	if f.cancel != nil {
		f.cancel()
		f.cancel = nil
	}
	if f.timer != nil {
		f.timer.Stop()
		f.timer = nil
	}
}

// pick chooses the next advertiser that is connected and not avoided,
// rotating so successive attempts spread over the advertisers.
func (f *fetchActor) pick() (membership.NodeID, broadcast.PeerID, bool) {
	up := f.c.n.rpc.Peers()
	for pass := 0; pass < 2; pass++ {
		for i := range f.advertisers {
			p := f.advertisers[(f.next+i)%len(f.advertisers)]
			if pass == 0 && f.avoid[p] > f.attempt {
				continue
			}
			id, err := membership.ParseNodeID(string(p))
			if err != nil || !slices.Contains(up, id) {
				continue
			}
			f.next = (f.next + i + 1) % len(f.advertisers)
			return id, p, true
		}
	}
	return membership.NodeID{}, "", false
}

func (f *fetchActor) try(ctx actor.Context) {
	c := f.c
	f.seq++
	if len(f.advertisers) == 0 {
		f.backoff(ctx)
		return
	}
	peer, pid, ok := f.pick()
	if !ok {
		f.backoff(ctx)
		return
	}
	f.attempt++
	timeout := min(c.n.cfg.FetchTimeoutMin<<min(f.attempt/max(len(f.advertisers), 1), 10), c.n.cfg.FetchTimeoutMax)
	cctx, cancel := context.WithTimeout(c.n.ctx, timeout)
	f.cancel = cancel
	seq, self, root, id := f.seq, ctx.Self(), c.n.system.Root, f.id
	req, err := wire.EncodeFetchRequest(id)
	if err != nil {
		cancel()
		f.backoff(ctx)
		return
	}
	c.n.goTracked(func() {
		defer cancel()
		// An answer is at most the largest artifact the wire limits allow
		// (MaxMessageLen covers the fetch response); the transport refuses
		// anything larger before reading it.
		resp, err := c.n.rpc.Call(cctx, peer, c.fetchProto, req, transport.MaxResponse(c.limit.MaxMessageLen()))
		var art *broadcast.Artifact
		if err == nil {
			art, err = wire.DecodeFetchResponse(resp, c.limit)
		}
		root.Send(self, attemptDone{seq: seq, from: pid, a: art, err: err})
	})
}

func (f *fetchActor) backoff(ctx actor.Context) {
	c := f.c
	f.seq++
	d := min(c.n.cfg.FetchBackoffMin<<min(f.attempt, 16), c.n.cfg.FetchBackoffMax)
	d = d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
	seq, self, root := f.seq, ctx.Self(), c.n.system.Root
	f.timer = time.AfterFunc(d, func() { root.Send(self, retryMsg{seq}) })
}

// mustNodeID parses a core peer id, which the actors always build from a
// NodeID.
func mustNodeID(p broadcast.PeerID) membership.NodeID {
	id, err := membership.ParseNodeID(string(p))
	if err != nil {
		panic(fmt.Sprintf("core peer id %q is not a NodeID", p)) // our bug
	}
	return id
}
