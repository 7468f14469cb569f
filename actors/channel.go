package actors

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/abcast/abcast/actors/actorkit"
	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/internal/wire"
	"github.com/abcast/abcast/membership"
	"github.com/abcast/abcast/quicremote/transport"
)

// ChannelConfig declares one channel.
type ChannelConfig struct {
	// Name identifies the channel on the wire. Letters, digits, '-', '_'
	// and '.' only, at most 64 bytes. Members exchange a channel's
	// artifacts only while both have it open.
	Name string
	// Admit decides per advert; nil fetches everything.
	Admit broadcast.AdmissionFunc
	// Verify checks an artifact before delivery; nil checks only its id.
	Verify broadcast.VerifyFunc
	// Consume, if set, is called for every event, one at a time, on the
	// channel's consumer actor. Returning confirms the event; a panic does
	// not (it is counted and the event is handed over again after a
	// pause that grows up to ConsumerTimeout).
	Consume func(Event)
	// ConsumerPID, if set, is a local actor that receives *Delivered and
	// *Withdrawn as requests and confirms each (Confirm(ctx), or
	// ctx.Respond(&Consumed{Seq: ev.Seq})). At most Config.ConsumerWindow
	// events are unconfirmed at once; one not confirmed is delivered again
	// (same Seq, Attempt+1) when the consumer stops (it is watched; its
	// successor under the same name is found again), when the delivery
	// dead-letters, when a later event is confirmed first (the earlier was
	// lost in a crash), when the consumer sends Subscribe (do that in your
	// actor's Started to get everything unconfirmed back at once after a
	// restart), or after ConsumerTimeout. Nothing is dropped: an event's
	// credit stays out until it is confirmed.
	//
	// With neither Consume nor ConsumerPID, events wait until a Subscribe.
	ConsumerPID *actor.PID
	// Sender and Receiver override the node's core limits when non-nil.
	Sender   *broadcast.SenderConfig
	Receiver *broadcast.ReceiverConfig
}

// Channel is one channel declared on a node. Its Go methods and the
// messages its actor answers (Publish, Abort, Reevaluate, Subscribe,
// ListHeld, GetStats) are one implementation: the actor calls the same
// functions. Publish, Abort and Reevaluate never block on the network or
// on other actors.
type Channel struct {
	n     *Node
	name  string
	cfg   ChannelConfig
	scfg  broadcast.SenderConfig
	rcfg  broadcast.ReceiverConfig
	limit wire.Limits

	updateProto, fetchProto, updatesProto, chunkProto string

	// The channel's actor and its children, set while it runs.
	actorPID, senderPID, receiverPID, consumerPID atomic.Pointer[actor.PID]

	mu      sync.Mutex
	pool    map[broadcast.ArtifactID]*poolEntry // what the publisher wants live
	ops     []poolOp                            // not yet taken by the sender actor
	state   chanState
	reason  any  // why it failed
	closing bool // Close was called: the actor's stop is not a failure
	crashed any  // the actor's last failure (escalated or its own), cleared when it starts
	done    chan struct{}
	stats   ChannelStats
	statsMu sync.Mutex

	// The cores live here, not in the actor instances, so a restarted
	// actor continues from them.
	sender   *broadcast.Sender
	receiver *broadcast.Receiver
	// consumedSeen is the running total of confirmed deliveries applied to
	// the receiver core; consumedTotal is written only by the consumer
	// actor. Totals (not increments) survive a lost message.
	consumedSeen  uint64
	consumedTotal atomic.Uint64
	// creditWake, when set, is closed at the next credit returned: update
	// streams paused for a credit wait on it (update_stream.go).
	creditWake atomic.Pointer[chan struct{}]
	// del is the consumer contract's state, held what the channel holds
	// (see consumer.go).
	del  delivery
	held heldSet
}

type chanState uint8

const (
	stateDeclared chanState = iota // declared, actor not started yet
	stateRunning
	stateClosed
	stateFailed
)

// poolEntry is one live artifact of the publisher, with the manifest that
// fetches of it are served from, made on first use (fetch_serve.go).
type poolEntry struct {
	a   broadcast.Artifact
	man *servedManifest
}

type poolOp struct {
	abort bool
	a     broadcast.Artifact
}

// ChannelStats counts one channel's activity on this node.
type ChannelStats struct {
	Live              int
	Sender            broadcast.SenderStats
	Receiver          broadcast.ReceiverStats
	FetchAttempts     uint64
	FetchFailures     uint64
	BadFetchResponses uint64
	UpdatesRefused    uint64 // incoming updates refused (stale, over limit, invalid)
	// UpdatesNotAccepted counts incoming updates refused because the peer
	// had not (or no longer) announced the channel on that connection:
	// stragglers of a closed incarnation, not misbehaviour.
	UpdatesNotAccepted uint64
	UpdateBytesSent    uint64
	FetchBytesServed   uint64
	FetchesSucceeded   uint64
	// UpdatesTransmitted counts slot updates and syncs the links actually
	// put on the wire (the core's Sender.UpdatesSent also counts updates
	// that broadcast.Coalesce dropped before they left).
	UpdatesTransmitted uint64
	// BytesSentTo and BytesServedTo split the byte counts by peer (full
	// NodeID string): slot updates sent, fetch responses served.
	BytesSentTo   map[string]uint64
	BytesServedTo map[string]uint64
	// Delivered and Withdrawn count events the consumer confirmed.
	Delivered, Withdrawn uint64
	// Consumer contract: events handed over again (Redeliveries), of which
	// after ConsumerTimeout (ConsumerTimeouts); deliveries that dead-lettered
	// or found the consumer stopped (ConsumerLost); panics of a Consume
	// function (ConsumerPanics); confirmations for no event in flight
	// (StrayConfirmations); events waiting or unconfirmed now (Unconfirmed).
	Redeliveries, ConsumerTimeouts, ConsumerLost, ConsumerPanics, StrayConfirmations uint64
	Unconfirmed                                                                      int
	// CreditsOut is the delivery credits the consumer holds: deliveries
	// handed out and not yet confirmed (the receiver's DeliveryCredits
	// bounds it together with running fetches).
	CreditsOut int
	// Failed is set once the channel's supervisor gave up on it.
	Failed        bool
	ActiveFetches int
	AdvertisedIDs int
	PeerStats     map[string]broadcast.PeerStats
}

// NewChannel declares a channel on the node without running it: spawn
// Props() where you want it (under your own supervisor), or use
// OpenChannel. Publishes made before it runs wait for it. A name can be
// declared again once its channel is closed or failed.
func (n *Node) NewChannel(cfg ChannelConfig) (*Channel, error) {
	if !validName(cfg.Name) {
		return nil, fmt.Errorf("actors: invalid channel name %q", cfg.Name)
	}
	if cfg.Consume != nil && cfg.ConsumerPID != nil {
		return nil, fmt.Errorf("actors: channel %s: set Consume or ConsumerPID, not both", cfg.Name)
	}
	if cfg.ConsumerPID != nil {
		if err := n.checkLocal(cfg.ConsumerPID); err != nil {
			return nil, fmt.Errorf("actors: channel %s: consumer %s: %w", cfg.Name, cfg.ConsumerPID, err)
		}
	}
	c := &Channel{n: n, name: cfg.Name, cfg: cfg, scfg: n.cfg.Sender, rcfg: n.cfg.Receiver, limit: n.cfg.Wire,
		pool: make(map[broadcast.ArtifactID]*poolEntry), done: make(chan struct{}),
		updateProto: "abcast/" + cfg.Name + "/update", fetchProto: "abcast/" + cfg.Name + "/fetch",
		updatesProto: "abcast/" + cfg.Name + "/updates", chunkProto: "abcast/" + cfg.Name + "/chunk"}
	if cfg.Sender != nil {
		c.scfg = *cfg.Sender
	}
	if cfg.Receiver != nil {
		c.rcfg = *cfg.Receiver
	}
	c.rcfg.Admit, c.rcfg.Verify = cfg.Admit, cfg.Verify
	c.del.init(cfg.ConsumerPID)
	if c.rcfg.Seed == 0 {
		c.rcfg.Seed = rand.Uint64() // nodes must not pick peers and jitter retries in step
	}
	var err error
	if c.sender, err = broadcast.NewSender(c.scfg); err != nil {
		return nil, err
	}
	if c.receiver, err = broadcast.NewReceiver(c.rcfg); err != nil {
		return nil, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, ErrClosed
	}
	if old := n.channels[cfg.Name]; old != nil && !old.ended() {
		return nil, fmt.Errorf("actors: channel %s already declared", cfg.Name)
	}
	if err := n.handleChannel(cfg.Name); err != nil {
		return nil, err
	}
	n.setChannel(cfg.Name, c)
	return c, nil
}

// OpenChannel declares a channel and runs it under the node's own
// supervisor, returning once it runs.
func (n *Node) OpenChannel(cfg ChannelConfig) (*Channel, error) {
	c, err := n.NewChannel(cfg)
	if err != nil {
		return nil, err
	}
	res, err := n.system.Root.RequestFuture(n.root, spawnChannel{c}, 10*time.Second).Result()
	if err == nil {
		err, _ = res.(error)
	}
	if err != nil {
		c.finish(fmt.Errorf("spawn: %w", err))
		return nil, fmt.Errorf("actors: open channel %s: %w", cfg.Name, err)
	}
	return c, nil
}

// handleChannel registers the transport handlers of a channel name, once
// per name for the node's life: a closed channel's handlers answer that it
// is not open. Called with n.mu held.
func (n *Node) handleChannel(name string) error {
	update, fetch, updates, chunk := "abcast/"+name+"/update", "abcast/"+name+"/fetch", "abcast/"+name+"/updates", "abcast/"+name+"/chunk"
	lookup := func() *Channel {
		n.mu.Lock()
		defer n.mu.Unlock()
		if c := n.channels[name]; c != nil && c.running() {
			return c
		}
		return nil
	}
	if n.handled == nil {
		n.handled = map[string]bool{}
	}
	if n.handled[name] {
		return nil
	}
	if err := n.rpc.Handle(update, func(ctx context.Context, peer membership.NodeID, req []byte) ([]byte, error) {
		if c := lookup(); c != nil {
			return c.handleUpdate(ctx, peer, req)
		}
		return nil, fmt.Errorf("update from %s: channel %s is not open here", peer.Short(), name)
	}, n.cfg.UpdateHandlers); err != nil {
		return fmt.Errorf("actors: channel %s: %w", name, err)
	}
	if err := n.rpc.Handle(fetch, func(ctx context.Context, peer membership.NodeID, req []byte) ([]byte, error) {
		if c := lookup(); c != nil {
			return c.handleFetch(ctx, peer, req)
		}
		return nil, fmt.Errorf("fetch from %s: channel %s is not open here", peer.Short(), name)
	}, n.cfg.FetchHandlers); err != nil {
		return fmt.Errorf("actors: channel %s: %w", name, err)
	}
	if err := n.rpc.Handle(chunk, func(ctx context.Context, peer membership.NodeID, req []byte) ([]byte, error) {
		if c := lookup(); c != nil {
			return c.handleChunk(ctx, peer, req)
		}
		return nil, fmt.Errorf("chunk fetch from %s: channel %s is not open here", peer.Short(), name)
	}, n.cfg.FetchHandlers); err != nil {
		return fmt.Errorf("actors: channel %s: %w", name, err)
	}
	// A peer keeps one update stream per channel; a second may be open
	// while the first one's end is still on its way.
	if err := n.rpc.HandleStream(updates, func(ctx context.Context, peer membership.NodeID, s transport.Stream) error {
		return serveUpdateStream(ctx, n, peer, s, lookup)
	}, updateStreamsPerPeer); err != nil {
		return fmt.Errorf("actors: channel %s: %w", name, err)
	}
	n.handled[name] = true
	return nil
}

// checkLocal reports whether pid is a live actor of this node's system.
func (n *Node) checkLocal(pid *actor.PID) error {
	if pid.Address != n.system.Address() && pid.Address != "nonhost" {
		return fmt.Errorf("%w: address %s is not this node's (%s)", ErrNotLocal, pid.Address, n.system.Address())
	}
	if _, ok := n.system.ProcessRegistry.GetLocal(pid.Id); !ok {
		return fmt.Errorf("%w: no actor %s", ErrNotLocal, pid.Id)
	}
	return nil
}

func validName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}

// Name returns the channel's name.
func (c *Channel) Name() string { return c.name }

// PID returns the channel's actor, or nil while it is not running.
func (c *Channel) PID() *actor.PID { return c.actorPID.Load() }

// Props returns the props of the channel's actor, to spawn under your own
// supervisor: ctx.Spawn(ch.Props()). The channel runs once the actor has
// started and stops (closed) when it is stopped; a failure its own
// supervision cannot handle is escalated to yours. Spawn it once.
func (c *Channel) Props() *actor.Props {
	return actor.PropsFromProducer(func() actor.Actor { return &channelActor{c: c} },
		actor.WithSupervisor(c.n.childStrategy()),
		actor.WithMailbox(actorkit.BoundedMailbox(c.n.cfg.MailboxCapacity, actorkit.WithOnRefused(func(*actor.PID, any) { c.n.refused.Add(1) }))))
}

// Done is closed once the channel has stopped (closed or failed).
func (c *Channel) Done() <-chan struct{} { return c.done }

// Err returns nil while the channel is declared or running, an error
// wrapping ErrChannelFailed once its supervisor gave up on it, and
// ErrChannelClosed once it was closed.
func (c *Channel) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stateErr()
}

func (c *Channel) stateErr() error {
	switch c.state {
	case stateClosed:
		return fmt.Errorf("%w: %s", ErrChannelClosed, c.name)
	case stateFailed:
		return fmt.Errorf("%w: %s: %v", ErrChannelFailed, c.name, c.reason)
	}
	if c.n.isClosed() {
		return ErrClosed
	}
	return nil
}

func (c *Channel) failure() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == stateFailed {
		return c.stateErr()
	}
	return nil
}

func (c *Channel) running() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state == stateRunning
}

func (c *Channel) ended() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state == stateClosed || c.state == stateFailed
}

// isClosed reports whether Close was called. It takes no lock: channels
// ask it while holding their own (the lock order is node, then channel).
func (n *Node) isClosed() bool { return n.closing.Load() }

// owns reports whether pid is the channel's actor or one of its children.
func (c *Channel) owns(pid *actor.PID) bool {
	self := c.actorPID.Load()
	return self != nil && pid != nil && (pid.Id == self.Id || strings.HasPrefix(pid.Id, self.Id+"/"))
}

// Publish adds an artifact for every other member. It returns at once: an
// error wrapping broadcast.ErrSlotsExhausted when the channel already holds
// its maximum of live artifacts, broadcast.ErrDuplicate for a live id,
// broadcast.ErrInvalid for an artifact the wire limits refuse, ErrBusy when
// the sender actor is behind by more than the live-slot bound,
// ErrChannelClosed or ErrChannelFailed. The payload must not be modified
// afterwards: it is sent from the caller's slice (an advertised artifact
// of one chunk is copied once, into the answer its fetches are served
// from, and held only there).
func (c *Channel) Publish(a broadcast.Artifact) error {
	switch {
	case a.ID == "" || len(a.ID) > c.limit.MaxIDLen:
		return fmt.Errorf("%w: artifact id of %d bytes (limit %d)", broadcast.ErrInvalid, len(a.ID), c.limit.MaxIDLen)
	case len(a.Attribute) > c.limit.MaxAttributeLen:
		return fmt.Errorf("%w: attribute of %d bytes (limit %d)", broadcast.ErrInvalid, len(a.Attribute), c.limit.MaxAttributeLen)
	case len(a.Payload) > c.limit.MaxPayloadLen:
		return fmt.Errorf("%w: payload of %d bytes (limit %d)", broadcast.ErrInvalid, len(a.Payload), c.limit.MaxPayloadLen)
	}
	a, man := c.encodeServed(a)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.stateErr(); err != nil {
		return err
	}
	switch {
	case c.pool[a.ID] != nil:
		return fmt.Errorf("%w: artifact %x on channel %s", broadcast.ErrDuplicate, []byte(a.ID), c.name)
	case len(c.pool) >= c.scfg.MaxSlots:
		return fmt.Errorf("%w: channel %s holds %d live artifacts", broadcast.ErrSlotsExhausted, c.name, len(c.pool))
	case len(c.ops) >= 2*c.scfg.MaxSlots:
		return fmt.Errorf("%w: %s", ErrBusy, c.name)
	}
	c.pool[a.ID] = &poolEntry{a: a, man: man}
	c.pushOp(poolOp{a: a})
	return nil
}

// Abort withdraws a published artifact: transmissions of it are cancelled
// and peers that may hold it are told. It returns an error wrapping
// broadcast.ErrUnknownID for an id that is not live.
func (c *Channel) Abort(id broadcast.ArtifactID) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.stateErr(); err != nil {
		return err
	}
	if c.pool[id] == nil {
		return fmt.Errorf("%w: %x on channel %s", broadcast.ErrUnknownID, []byte(id), c.name)
	}
	if len(c.ops) >= 2*c.scfg.MaxSlots {
		return fmt.Errorf("%w: %s", ErrBusy, c.name)
	}
	delete(c.pool, id)
	c.pushOp(poolOp{abort: true, a: broadcast.Artifact{ID: id}})
	return nil
}

// pushOp queues an op and wakes the sender actor if the queue was empty;
// one wake-up message at most is ever waiting, so the mailbox stays small.
// Called with c.mu held.
func (c *Channel) pushOp(op poolOp) {
	c.ops = append(c.ops, op)
	if len(c.ops) == 1 {
		c.sendToSender(wakeMsg{})
	}
}

func (c *Channel) takeOps() []poolOp {
	c.mu.Lock()
	defer c.mu.Unlock()
	ops := c.ops
	c.ops = nil
	return ops
}

// Reevaluate asks the admission function again about every advert it
// answered Later for. It returns at once (ErrChannelClosed or
// ErrChannelFailed if the channel ended); send Reevaluate to the channel's
// actor to be told when it is done.
func (c *Channel) Reevaluate() error {
	if err := c.Err(); err != nil {
		return err
	}
	c.sendToReceiver(reevaluateMsg{})
	return nil
}

// Subscribe binds the channel's consumer to pid, a live local actor (nil
// pauses delivery); every event not yet confirmed is delivered to it at
// once. It returns ErrNotLocal for a PID no local actor answers.
func (c *Channel) Subscribe(pid *actor.PID) error {
	if err := c.Err(); err != nil {
		return err
	}
	if pid != nil {
		if err := c.n.checkLocal(pid); err != nil {
			return fmt.Errorf("actors: channel %s: consumer %s: %w", c.name, pid, err)
		}
	}
	if c.cfg.Consume != nil {
		return fmt.Errorf("actors: channel %s consumes with a function; it takes no consumer actor", c.name)
	}
	c.del.rebind(pid)
	c.sendToConsumer(consumerWake{rebind: true})
	return nil
}

// Held lists the artifacts this node holds on the channel: delivered (or
// being delivered) and not withdrawn, oldest first, each with whether the
// consumer confirmed it. A consumer that lost its state compares it with
// what it has; unconfirmed ones are being delivered again anyway.
func (c *Channel) Held() []HeldArtifact { return c.held.list() }

// Stats returns the channel's counters.
func (c *Channel) Stats() ChannelStats {
	c.statsMu.Lock()
	s := c.stats
	s.PeerStats = maps.Clone(c.stats.PeerStats)
	s.BytesSentTo = maps.Clone(c.stats.BytesSentTo)
	s.BytesServedTo = maps.Clone(c.stats.BytesServedTo)
	c.statsMu.Unlock()
	s.Unconfirmed = c.del.pending()
	s.Failed = c.failure() != nil
	return s
}

func (c *Channel) updateStats(fn func(*ChannelStats)) {
	c.statsMu.Lock()
	fn(&c.stats)
	c.statsMu.Unlock()
}

// Close stops the channel on this node: its actors stop (wherever they
// were spawned), its published artifacts are dropped (peers withdraw
// them), what it received is forgotten, and peers stop sending to it. It
// returns once the actors have stopped. The name can then be declared
// again. Closing a channel that already ended returns nil.
func (c *Channel) Close() error {
	c.mu.Lock()
	if c.state == stateClosed || c.state == stateFailed {
		c.mu.Unlock()
		return nil
	}
	c.closing = true
	c.mu.Unlock()
	c.stopActor()
	return nil
}

// stopActor stops the channel's actor and waits for it, or finishes a
// channel that never ran.
func (c *Channel) stopActor() {
	if pid := c.actorPID.Load(); pid != nil {
		_ = c.n.system.Root.StopFuture(pid).Wait()
		<-c.done
		return
	}
	c.finish(nil)
}

// started is called by the channel's actor once its children run: the
// first time, the channel opens for peers (our announcements say so).
func (c *Channel) started() {
	n := c.n
	n.mu.Lock()
	defer n.mu.Unlock()
	c.mu.Lock()
	first := c.state == stateDeclared
	if first {
		c.state = stateRunning
	}
	c.crashed = nil
	c.mu.Unlock()
	if first && !n.closed && n.channels[c.name] == c {
		n.execPresence(n.presence.Open(c.name))
	}
}

// noteCrash records that the channel's actor failed (so that a stop by
// its supervisor that follows is a failure, not a close).
func (c *Channel) noteCrash(reason any) {
	c.mu.Lock()
	c.crashed = reason
	c.mu.Unlock()
}

// markFailed is called by the node's supervisor as it gives up on the
// channel's actor.
func (c *Channel) markFailed(reason any) { c.noteCrash(reason) }

// finish ends the channel once its actor stopped (or it never ran): a
// stop nobody asked for, after a crash, is a failure, reported on the
// EventStream; otherwise the channel is closed.
func (c *Channel) finish(cause any) {
	n := c.n
	c.mu.Lock()
	if c.state == stateClosed || c.state == stateFailed {
		c.mu.Unlock()
		return
	}
	failed := !c.closing && (c.crashed != nil || cause != nil)
	if failed {
		c.state, c.reason = stateFailed, c.crashed
		if c.reason == nil {
			c.reason = cause
		}
	} else {
		c.state = stateClosed
	}
	c.pool, c.ops = nil, nil
	reason := c.reason
	c.mu.Unlock()
	c.actorPID.Store(nil)
	c.senderPID.Store(nil)
	c.receiverPID.Store(nil)
	c.consumerPID.Store(nil)
	n.mu.Lock()
	if n.channels[c.name] == c && !n.closed {
		if !failed {
			n.setChannel(c.name, nil)
		}
		n.execPresence(n.presence.Close(c.name))
	}
	n.mu.Unlock()
	if failed {
		n.log.Error().Str("channel", c.name).Str("reason", fmt.Sprint(reason)).Msg("channel failed: its supervisor gave up on it")
		n.system.EventStream.Publish(&ChannelFailed{Channel: c.name, Node: n.self, Reason: reason})
	}
	close(c.done)
}

// sendToSender, sendToReceiver and sendToConsumer post to the channel's
// child actors if they run; a message for one that does not is not
// needed, because each re-derives its state when it starts.
func (c *Channel) sendToSender(msg any)   { c.post(c.senderPID.Load(), msg) }
func (c *Channel) sendToReceiver(msg any) { c.post(c.receiverPID.Load(), msg) }
func (c *Channel) sendToConsumer(msg any) { c.post(c.consumerPID.Load(), msg) }

func (c *Channel) post(pid *actor.PID, msg any) {
	if pid != nil {
		c.n.system.Root.Send(pid, msg)
	}
}

// maxUpdateLen is the longest update an honest peer sends: a push of at
// most MaxPushSize encoded, or an advert (id, attribute, digest), plus the
// commit, the slot and the artifact's tag and length (64 bytes covers them).
func (c *Channel) maxUpdateLen() int {
	advert := c.limit.MaxIDLen + c.limit.MaxAttributeLen + len(broadcast.Digest{}) + 16
	return max(c.rcfg.MaxPushSize, advert) + 64
}

// decodeUpdate decodes one update from peer. One longer than maxUpdateLen
// is refused undecoded: the copy would cost as much as the frame, for an
// update the core refuses anyway.
func (c *Channel) decodeUpdate(peer membership.NodeID, data []byte) (broadcast.SlotUpdate, error) {
	if max := c.maxUpdateLen(); len(data) > max {
		return broadcast.SlotUpdate{}, fmt.Errorf("update from %s: %w: %d bytes, more than a push of MaxPushSize or an advert takes (%d)", peer.Short(), broadcast.ErrInvalid, len(data), max)
	}
	u, err := wire.DecodeSlotUpdate(data, c.limit)
	if err != nil {
		return u, fmt.Errorf("update from %s: %w", peer.Short(), err)
	}
	return u, nil
}

// handleUpdate serves an incoming slot update: the receiver actor applies
// it, and only then is it acknowledged. Stale updates are acknowledged too
// (a newer state is already held); refused ones return an error.
func (c *Channel) handleUpdate(ctx context.Context, peer membership.NodeID, req []byte) ([]byte, error) {
	u, decodeErr := c.decodeUpdate(peer, req)
	conn, ok := connIDOf(ctx, c.n, peer)
	if !ok {
		return nil, fmt.Errorf("update from %s: no connection", peer.Short())
	}
	pid := c.receiverPID.Load()
	if pid == nil {
		return nil, fmt.Errorf("update from %s: channel %s is restarting", peer.Short(), c.name)
	}
	// A Go channel rather than a protoactor future: no registry entry per
	// update, and the handler can also give up when its stream is reset. An
	// update that did not decode still goes to the receiver actor, which
	// counts it against the peer before the refusal is answered.
	reply := make(chan error, 1)
	c.n.system.Root.Send(pid, updateMsg{peer: broadcast.PeerID(peer.String()), conn: broadcast.ConnID(conn), u: u, decodeErr: decodeErr, reply: reply})
	timer := time.NewTimer(c.n.cfg.HandlerTimeout)
	defer timer.Stop()
	select {
	case err := <-reply:
		if err != nil && !errors.Is(err, broadcast.ErrStale) {
			return nil, err
		}
		return nil, nil
	case <-timer.C:
		return nil, fmt.Errorf("update from %s: receiver busy", peer.Short())
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (c *Channel) hook(kind string, msg any) {
	if h := c.n.cfg.Hooks; h != nil && h.BeforeReceive != nil {
		h.BeforeReceive(kind, c.name, msg)
	}
}

type inspectMsg struct{ id broadcast.ArtifactID }

// Inspect describes, for diagnostics, what this node's channel knows of id:
// the receiver's view (advertisers, phase, credits) and the sender's
// per-peer transmission state.
func (c *Channel) Inspect(id broadcast.ArtifactID) string {
	ask := func(pid *actor.PID) any {
		if pid == nil {
			return "not running"
		}
		r, err := c.n.system.Root.RequestFuture(pid, inspectMsg{id}, 5*time.Second).Result()
		if err != nil {
			return err
		}
		return r
	}
	return fmt.Sprintf("receiver: %v; sender: %v", ask(c.receiverPID.Load()), ask(c.senderPID.Load()))
}
