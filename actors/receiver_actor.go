package actors

import (
	"context"
	"errors"
	"fmt"
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
	// updateBatchMsg is a batch of a peer's update stream, applied in
	// order; reply gets each update's outcome.
	updateBatchMsg struct {
		peer broadcast.PeerID
		conn broadcast.ConnID
		us   []updateMsg
		// force applies every update; otherwise the actor stops at a push
		// that finds no delivery credit.
		force bool
		reply chan<- batchResult // buffered; the stream's handler waits on it
	}
	// batchResult is the outcome of the first len(errs) updates of a batch;
	// consumedAt is the consumer's running total the actor had seen.
	batchResult struct {
		errs       []error
		consumedAt uint64
	}
	// fetchOutcome is how one fetch attempt ended: what it brought in
	// elapsed, or err.
	fetchOutcome struct {
		tok     broadcast.Token
		got     broadcast.Fetched
		elapsed time.Duration
		err     error
		// taken, if set, is closed once the core has taken the outcome:
		// until then the answer stays charged to the peer.
		taken chan struct{}
	}
	fetchRestarted struct{}
	fetchTick      struct{}
	consumedMsg    struct{ total uint64 }
	reevaluateMsg  struct{ replyTo *actor.PID }
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
// the fetch actor that performs the core's fetch attempts.
type receiverActor struct {
	c       *Channel
	fetcher *actor.PID
	timer   coreTimer
	accept  map[broadcast.PeerID]broadcast.ConnID
}

func (a *receiverActor) Receive(ctx actor.Context) {
	c := a.c
	switch ctx.Message().(type) {
	case *actor.Started:
		// After a restart the fetch actor and its attempts are gone, and
		// so is the timer: the core makes the attempts again and announces
		// its next deadline. Events sent while it was down may be lost:
		// re-apply the members, the peers' presence and the consumer's
		// running total of consumed deliveries.
		props := actor.PropsFromProducer(func() actor.Actor { return &fetchActor{c: c} },
			actor.WithMailbox(actorkit.BoundedMailbox(c.n.cfg.MailboxCapacity, actorkit.WithOnRefused(func(*actor.PID, interface{}) { c.n.refused.Add(1) }))))
		a.fetcher = ctx.Spawn(props)
		a.timer = coreTimer{}
		a.applyMembers(ctx, c.n.view())
		_, a.accept = c.n.presenceOf(c.name)
		a.exec(ctx, c.receiver.RestartFetches())
		a.applyConsumed(ctx, c.consumedTotal.Load())
		return
	case *actor.Stopping, *actor.Restarting:
		a.timer.stop()
		return
	case actor.SystemMessage, actor.AutoReceiveMessage:
		return
	}
	c.hook("receiver", ctx.Message())
	switch m := ctx.Message().(type) {
	case updateMsg:
		m.reply <- a.applyUpdate(ctx, m)
	case updateBatchMsg:
		res := batchResult{errs: make([]error, 0, len(m.us))}
		for _, u := range m.us {
			if !m.force && u.decodeErr == nil && u.u.Kind == broadcast.KindPush {
				a.applyConsumed(ctx, c.consumedTotal.Load())
				if c.receiver.Waiting() >= c.rcfg.DeliveryCredits {
					// The consumer holds every credit: the rest of the
					// batch waits for one (the stream pauses), rather than
					// dropping the push to fetch it again later.
					break
				}
			}
			res.errs = append(res.errs, a.applyUpdate(ctx, u))
		}
		res.consumedAt = c.consumedSeen
		m.reply <- res
	case membersMsg:
		a.applyMembers(ctx, m.snap)
	case fetchOutcome:
		a.fetchOutcome(ctx, m)
	case fetchRestarted:
		a.exec(ctx, c.receiver.RestartFetches())
	case fetchTick:
		a.timer.fired()
		a.exec(ctx, c.receiver.Tick(now()))
	case consumedMsg:
		a.applyConsumed(ctx, m.total)
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
		ctx.Respond(c.receiver.DescribeID(m.id))
		return
	}
	a.publishStats()
}

// applyUpdate hands one incoming update to the core and says how it went
// (nil or ErrStale: acknowledged).
func (a *receiverActor) applyUpdate(ctx actor.Context, m updateMsg) error {
	c := a.c
	if m.decodeErr != nil {
		c.receiver.RecordInvalid(m.peer)
		c.updateStats(func(s *ChannelStats) { s.UpdatesRefused++ })
		return m.decodeErr
	}
	if conn, ok := a.accept[m.peer]; !ok || conn != m.conn {
		c.updateStats(func(s *ChannelStats) { s.UpdatesNotAccepted++ })
		return errNotAccepted
	}
	// Take the credits the consumer returned so far first: their messages
	// wait behind a batch of updates, and a push decided without them
	// would be dropped and fetched again although the consumer kept up.
	a.applyConsumed(ctx, c.consumedTotal.Load())
	eff, err := c.receiver.HandleUpdate(m.peer, m.conn, m.u)
	a.exec(ctx, eff)
	if err != nil && !errors.Is(err, broadcast.ErrStale) {
		c.updateStats(func(s *ChannelStats) { s.UpdatesRefused++ })
		c.n.log.Debug().Str("channel", c.name).Str("peer", string(m.peer)[:10]).Err(err).Msg("update refused")
	}
	return err
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

// fetchOutcome hands the core how an attempt ended: a manifest or chunk
// (which the core checks), a response that did not decode (the peer's
// fault), or nothing (timeout, transport error, not found).
func (a *receiverActor) fetchOutcome(ctx actor.Context, m fetchOutcome) {
	c := a.c
	if m.taken != nil {
		defer close(m.taken)
	}
	var eff []broadcast.Effect
	switch {
	case m.err == nil:
		var err error
		eff, err = c.receiver.FetchDone(m.tok, m.got, m.elapsed, now())
		if err != nil {
			c.updateStats(func(s *ChannelStats) { s.BadFetchResponses++ })
			c.n.log.Debug().Str("channel", c.name).Err(err).Msg("fetched part refused")
		}
		for _, e := range eff {
			if _, ok := e.(broadcast.Deliver); ok {
				c.updateStats(func(s *ChannelStats) { s.FetchesSucceeded++ })
			}
		}
	case errors.Is(m.err, broadcast.ErrInvalid), errors.Is(m.err, transport.ErrTooLarge):
		c.updateStats(func(s *ChannelStats) { s.BadFetchResponses++ })
		c.n.log.Debug().Str("channel", c.name).Err(m.err).Msg("fetch response refused")
		eff = c.receiver.FetchInvalid(m.tok, now())
	default:
		c.updateStats(func(s *ChannelStats) { s.FetchFailures++ })
		c.n.log.Debug().Str("channel", c.name).Err(m.err).Dur("elapsed", m.elapsed).Msg("fetch failed")
		eff = c.receiver.FetchFailed(m.tok, now())
	}
	a.exec(ctx, eff)
}

func (a *receiverActor) exec(ctx actor.Context, eff []broadcast.Effect) {
	c := a.c
	for _, e := range eff {
		switch e := e.(type) {
		case broadcast.FetchAttempt, broadcast.CancelFetch, broadcast.CancelAttempt:
			ctx.Send(a.fetcher, e)
		case broadcast.RetryAt:
			a.timer.set(ctx, c.n.system.Root, e.At, fetchTick{})
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

// fetchActor performs the receiver core's fetch attempts, each a call to
// the chosen peer for a manifest or a chunk with the core's timeout, and
// reports how each ended and how long it took. It makes no choices of its
// own: which part, which peer, how long and when to try again are the
// core's (broadcast/fetch.go).
type fetchActor struct {
	c     *Channel
	calls map[broadcast.Token]fetchCall
}

type fetchCall struct {
	id     broadcast.ArtifactID
	cancel context.CancelFunc
}

type attemptEnded struct{ tok broadcast.Token }

func (f *fetchActor) Receive(ctx actor.Context) {
	switch ctx.Message().(type) {
	case *actor.Started:
		f.calls = make(map[broadcast.Token]fetchCall)
		return
	case *actor.Restarting:
		// The attempts in flight die with their calls: the core makes
		// them again.
		f.cancelAll()
		ctx.Send(ctx.Parent(), fetchRestarted{})
		return
	case *actor.Stopping:
		f.cancelAll()
		return
	case actor.SystemMessage, actor.AutoReceiveMessage:
		return
	}
	f.c.hook("fetch", ctx.Message())
	switch m := ctx.Message().(type) {
	case broadcast.FetchAttempt:
		f.attempt(ctx, m)
	case broadcast.CancelFetch:
		for tok, call := range f.calls {
			if call.id == m.ID {
				call.cancel()
				delete(f.calls, tok)
			}
		}
	case broadcast.CancelAttempt:
		if call, ok := f.calls[m.Token]; ok {
			call.cancel()
			delete(f.calls, m.Token)
		}
	case attemptEnded:
		if call, ok := f.calls[m.tok]; ok {
			call.cancel()
			delete(f.calls, m.tok)
		}
	}
}

func (f *fetchActor) attempt(ctx actor.Context, m broadcast.FetchAttempt) {
	c := f.c
	parent, self, root := ctx.Parent(), ctx.Self(), c.n.system.Root
	peer, err := membership.ParseNodeID(string(m.Peer))
	if err != nil {
		ctx.Send(parent, fetchOutcome{tok: m.Token, err: fmt.Errorf("fetch of %x: peer %q: %w", []byte(m.ID), m.Peer, err)})
		return
	}
	req, err := wire.EncodeFetchRequest(wire.FetchRequest{ID: m.ID, Digest: m.Digest, Chunk: m.Chunk})
	if err != nil {
		ctx.Send(parent, fetchOutcome{tok: m.Token, err: fmt.Errorf("fetch of %x from %s: %w", []byte(m.ID), peer.Short(), err)})
		return
	}
	cctx, cancel := context.WithTimeout(c.n.ctx, m.Timeout)
	f.calls[m.Token] = fetchCall{id: m.ID, cancel: cancel}
	c.updateStats(func(s *ChannelStats) { s.FetchAttempts++ })
	c.n.goTracked(func() {
		defer cancel()
		// An answer is a manifest or one chunk, never a whole large
		// artifact: the transport refuses anything larger than the wire
		// limits allow for one before reading it.
		start := time.Now()
		var resp []byte
		var err error
		if m.Chunk == broadcast.ManifestPart {
			resp, err = c.n.rpc.Call(cctx, peer, c.fetchProto, req, transport.MaxResponse(c.limit.MaxFetchResponseLen()))
		} else {
			// A chunk comes as its bare bytes (handleChunk), checked by
			// the core against the manifest's hash; the bytes the
			// transport read are the chunk.
			resp, err = c.n.rpc.Call(cctx, peer, c.chunkProto, req, transport.MaxResponse(c.limit.MaxChunkLen()))
		}
		elapsed := time.Since(start)
		// The transport charged the answer to the peer's budget while
		// reading it; it stays charged, decoded, until the receiver has
		// taken it (what the core keeps then counts under
		// MaxFetchBytesPerPeer), so that answers waiting for the receiver
		// cannot pile up beyond the budget.
		held := 0
		if err == nil {
			if !c.n.rpc.Reserve(peer, len(resp)) {
				err = fmt.Errorf("%w: answer of %d bytes does not fit the peer's memory budget", transport.ErrRefused, len(resp))
			} else {
				held = len(resp)
				defer c.n.rpc.Release(peer, held)
			}
		}
		var got broadcast.Fetched
		if err == nil {
			if m.Chunk == broadcast.ManifestPart {
				got, err = wire.DecodeFetchResponse(resp, c.limit)
			} else if got.Data = resp; resp == nil {
				got.Data = []byte{} // an answer, told from a manifest's
			}
		}
		// A cancelled call was abandoned by the core (or the node is
		// closing): nobody waits for its outcome.
		if !errors.Is(cctx.Err(), context.Canceled) {
			if err != nil {
				err = fmt.Errorf("fetch of %x from %s: %w", []byte(m.ID), peer.Short(), err)
			}
			out := fetchOutcome{tok: m.Token, got: got, elapsed: elapsed, err: err}
			if held > 0 {
				out.taken = make(chan struct{})
			}
			root.Send(parent, out)
			if held > 0 {
				// A lost outcome (the receiver restarted) gives the
				// charge back after HandlerTimeout.
				wait := time.NewTimer(c.n.cfg.HandlerTimeout)
				select {
				case <-out.taken:
				case <-wait.C:
				case <-c.n.ctx.Done():
				}
				wait.Stop()
			}
		}
		root.Send(self, attemptEnded{m.Token})
	})
}

func (f *fetchActor) cancelAll() {
	for tok, call := range f.calls {
		call.cancel()
		delete(f.calls, tok)
	}
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
