package actors

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/internal/wire"
	"github.com/abcast/abcast/membership"
)

// Event is what a channel's consumer receives: *Delivered or *Withdrawn.
type Event interface{ isEvent() }

// Delivered hands over an artifact a peer published, at most once while it
// stays advertised.
type Delivered struct {
	Channel  string
	Artifact broadcast.Artifact
	From     membership.NodeID
}

// Withdrawn says no peer advertises a delivered artifact any more.
type Withdrawn struct {
	Channel string
	ID      broadcast.ArtifactID
}

func (*Delivered) isEvent() {}
func (*Withdrawn) isEvent() {}

// Consumed is the reply an actor consumer sends for each *Delivered (with
// ctx.Respond) once it has taken the artifact; it returns one delivery
// credit to the channel.
type Consumed struct{}

// ChannelConfig opens one channel.
type ChannelConfig struct {
	// Name identifies the channel on the wire; every member must open the
	// same channels. Letters, digits, '-', '_' and '.' only.
	Name string
	// Admit decides per advert; nil fetches everything.
	Admit broadcast.AdmissionFunc
	// Verify checks an artifact before delivery; nil checks only its id.
	Verify broadcast.VerifyFunc
	// Consume is called for every event, one at a time, on the channel's
	// consumer actor; when it returns, the delivery's credit is returned.
	// Exactly one of Consume and ConsumerPID must be set.
	Consume func(Event)
	// ConsumerPID receives *Delivered and *Withdrawn as requests and
	// must answer each *Delivered with Consumed.
	ConsumerPID *actor.PID
	// Sender and Receiver override the node's core limits when non-zero.
	Sender   *broadcast.SenderConfig
	Receiver *broadcast.ReceiverConfig
}

// ErrBusy: the channel's queue of publishes and aborts not yet taken by its
// sender actor is full; retry shortly.
var ErrBusy = errors.New("actors: channel busy")

// Channel is one opened channel. Publish, Abort and Reevaluate never block
// on the network or on other actors.
type Channel struct {
	n     *Node
	name  string
	cfg   ChannelConfig
	scfg  broadcast.SenderConfig
	rcfg  broadcast.ReceiverConfig
	limit wire.Limits

	updateProto, fetchProto string

	senderPID, receiverPID, consumerPID *actor.PID

	mu      sync.Mutex
	pool    map[broadcast.ArtifactID]broadcast.Artifact // what the publisher wants live
	ops     []poolOp                                    // not yet taken by the sender actor
	closed  bool
	stats   ChannelStats
	statsMu sync.Mutex

	// The cores live here, not in the actor instances, so a restarted
	// actor continues from them.
	sender   *broadcast.Sender
	receiver *broadcast.Receiver
	// consumed totals reported by the consumer actor and applied to the
	// receiver core; totals (not increments) survive a lost message.
	consumedSeen uint64
	// consumedTotal is written only by the consumer actor.
	consumedTotal atomic.Uint64
	// events wait here for the consumer actor (see consumerActor).
	evMu   sync.Mutex
	events []any
}

// pushEvent queues an event for the consumer and wakes it if it was idle.
func (c *Channel) pushEvent(ev any) {
	c.evMu.Lock()
	c.events = append(c.events, ev)
	first := len(c.events) == 1
	c.evMu.Unlock()
	if first {
		c.n.system.Root.Send(c.consumerPID, consumerWake{})
	}
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
	UpdateBytesSent   uint64
	FetchBytesServed  uint64
	FetchesSucceeded  uint64
	// UpdatesTransmitted counts slot updates and syncs the links actually
	// put on the wire (the core's Sender.UpdatesSent also counts updates
	// that broadcast.Coalesce dropped before they left).
	UpdatesTransmitted uint64
	// BytesSentTo and BytesServedTo split the byte counts by peer (full
	// NodeID string): slot updates sent, fetch responses served.
	BytesSentTo          map[string]uint64
	BytesServedTo        map[string]uint64
	Delivered, Withdrawn uint64
	ConsumerPanics       uint64
	ActiveFetches        int
	AdvertisedIDs        int
	PeerStats            map[string]broadcast.PeerStats
}

// OpenChannel opens a channel; every member must open the same ones.
func (n *Node) OpenChannel(cfg ChannelConfig) (*Channel, error) {
	if !validName(cfg.Name) {
		return nil, fmt.Errorf("actors: invalid channel name %q", cfg.Name)
	}
	if (cfg.Consume == nil) == (cfg.ConsumerPID == nil) {
		return nil, fmt.Errorf("actors: channel %s needs exactly one of Consume and ConsumerPID", cfg.Name)
	}
	c := &Channel{n: n, name: cfg.Name, cfg: cfg, scfg: n.cfg.Sender, rcfg: n.cfg.Receiver, limit: n.cfg.Wire,
		pool: make(map[broadcast.ArtifactID]broadcast.Artifact), updateProto: "abcast/" + cfg.Name + "/update", fetchProto: "abcast/" + cfg.Name + "/fetch"}
	if cfg.Sender != nil {
		c.scfg = *cfg.Sender
	}
	if cfg.Receiver != nil {
		c.rcfg = *cfg.Receiver
	}
	c.rcfg.Admit, c.rcfg.Verify = cfg.Admit, cfg.Verify
	var err error
	if c.sender, err = broadcast.NewSender(c.scfg); err != nil {
		return nil, err
	}
	if c.receiver, err = broadcast.NewReceiver(c.rcfg); err != nil {
		return nil, err
	}
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil, ErrClosed
	}
	if _, dup := n.channels[cfg.Name]; dup {
		n.mu.Unlock()
		return nil, fmt.Errorf("actors: channel %s already open", cfg.Name)
	}
	res, err := n.system.Root.RequestFuture(n.root, openChannel{c}, 10*time.Second).Result()
	if err == nil && res != nil {
		err, _ = res.(error)
	}
	if err != nil {
		n.mu.Unlock()
		return nil, fmt.Errorf("actors: open channel %s: %w", cfg.Name, err)
	}
	n.channels[cfg.Name] = c
	members := n.members
	up := make(map[membership.NodeID]uint64, len(n.up))
	for k, v := range n.up {
		up[k] = v
	}
	n.mu.Unlock()
	n.system.Root.Send(c.senderPID, membersMsg{members})
	n.system.Root.Send(c.receiverPID, membersMsg{members})
	for peer, conn := range up {
		n.system.Root.Send(c.senderPID, peerUpMsg{peer, conn})
	}
	if err := n.rpc.Handle(c.updateProto, c.handleUpdate, n.cfg.UpdateHandlers); err != nil {
		return nil, fmt.Errorf("actors: channel %s: %w", cfg.Name, err)
	}
	if err := n.rpc.Handle(c.fetchProto, c.handleFetch, n.cfg.FetchHandlers); err != nil {
		return nil, fmt.Errorf("actors: channel %s: %w", cfg.Name, err)
	}
	return c, nil
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

// Publish adds an artifact for every other member. It returns at once: an
// error wrapping broadcast.ErrSlotsExhausted when the channel already holds
// its maximum of live artifacts, broadcast.ErrDuplicate for a live id,
// broadcast.ErrInvalid for an artifact the wire limits refuse, ErrBusy when
// the sender actor is behind by more than the live-slot bound.
func (c *Channel) Publish(a broadcast.Artifact) error {
	switch {
	case a.ID == "" || len(a.ID) > c.limit.MaxIDLen:
		return fmt.Errorf("%w: artifact id of %d bytes (limit %d)", broadcast.ErrInvalid, len(a.ID), c.limit.MaxIDLen)
	case len(a.Attribute) > c.limit.MaxAttributeLen:
		return fmt.Errorf("%w: attribute of %d bytes (limit %d)", broadcast.ErrInvalid, len(a.Attribute), c.limit.MaxAttributeLen)
	case len(a.Payload) > c.limit.MaxPayloadLen:
		return fmt.Errorf("%w: payload of %d bytes (limit %d)", broadcast.ErrInvalid, len(a.Payload), c.limit.MaxPayloadLen)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.closed:
		return ErrClosed
	case c.pool[a.ID].ID != "":
		return fmt.Errorf("%w: artifact %x on channel %s", broadcast.ErrDuplicate, []byte(a.ID), c.name)
	case len(c.pool) >= c.scfg.MaxSlots:
		return fmt.Errorf("%w: channel %s holds %d live artifacts", broadcast.ErrSlotsExhausted, c.name, len(c.pool))
	case len(c.ops) >= 2*c.scfg.MaxSlots:
		return fmt.Errorf("%w: %s", ErrBusy, c.name)
	}
	c.pool[a.ID] = a
	c.pushOp(poolOp{a: a})
	return nil
}

// Abort withdraws a published artifact: transmissions of it are cancelled
// and peers that may hold it are told. It returns an error wrapping
// broadcast.ErrUnknownID for an id that is not live.
func (c *Channel) Abort(id broadcast.ArtifactID) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	if _, ok := c.pool[id]; !ok {
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
func (c *Channel) pushOp(op poolOp) {
	c.ops = append(c.ops, op)
	if len(c.ops) == 1 {
		c.n.system.Root.Send(c.senderPID, wakeMsg{})
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
// answered Later for.
func (c *Channel) Reevaluate() {
	c.n.system.Root.Send(c.receiverPID, reevaluateMsg{})
}

// Stats returns the channel's counters.
func (c *Channel) Stats() ChannelStats {
	c.statsMu.Lock()
	defer c.statsMu.Unlock()
	s := c.stats
	s.PeerStats = maps.Clone(c.stats.PeerStats)
	s.BytesSentTo = maps.Clone(c.stats.BytesSentTo)
	s.BytesServedTo = maps.Clone(c.stats.BytesServedTo)
	return s
}

func (c *Channel) updateStats(fn func(*ChannelStats)) {
	c.statsMu.Lock()
	fn(&c.stats)
	c.statsMu.Unlock()
}

// handleUpdate serves an incoming slot update: the receiver actor applies
// it, and only then is it acknowledged. Stale updates are acknowledged too
// (a newer state is already held); refused ones return an error.
func (c *Channel) handleUpdate(ctx context.Context, peer membership.NodeID, req []byte) ([]byte, error) {
	u, decodeErr := wire.DecodeSlotUpdate(req, c.limit)
	if decodeErr != nil {
		decodeErr = fmt.Errorf("update from %s: %w", peer.Short(), decodeErr)
	}
	conn, ok := connIDOf(ctx, c.n, peer)
	if !ok {
		return nil, fmt.Errorf("update from %s: no connection", peer.Short())
	}
	// A Go channel rather than a protoactor future: no registry entry per
	// update, and the handler can also give up when its stream is reset. An
	// update that did not decode still goes to the receiver actor, which
	// counts it against the peer before the refusal is answered.
	reply := make(chan error, 1)
	c.n.system.Root.Send(c.receiverPID, updateMsg{peer: broadcast.PeerID(peer.String()), conn: broadcast.ConnID(conn), u: u, decodeErr: decodeErr, reply: reply})
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

// handleFetch serves an artifact from the publisher's pool, which is the
// truth about what is live.
func (c *Channel) handleFetch(ctx context.Context, peer membership.NodeID, req []byte) ([]byte, error) {
	id, err := wire.DecodeFetchRequest(req, c.limit)
	if err != nil {
		return nil, fmt.Errorf("fetch from %s: %w", peer.Short(), err)
	}
	c.mu.Lock()
	a, ok := c.pool[id]
	c.mu.Unlock()
	if !ok {
		return wire.EncodeFetchResponse(nil)
	}
	resp, err := wire.EncodeFetchResponse(&a)
	if err == nil {
		c.updateStats(func(s *ChannelStats) {
			s.FetchBytesServed += uint64(len(resp))
			if s.BytesServedTo == nil {
				s.BytesServedTo = make(map[string]uint64)
			}
			s.BytesServedTo[peer.String()] += uint64(len(resp))
		})
	}
	return resp, err
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
	r, err := c.n.system.Root.RequestFuture(c.receiverPID, inspectMsg{id}, 5*time.Second).Result()
	if err != nil {
		r = err.Error()
	}
	s, err := c.n.system.Root.RequestFuture(c.senderPID, inspectMsg{id}, 5*time.Second).Result()
	if err != nil {
		s = err.Error()
	}
	return fmt.Sprintf("receiver: %v; sender: %v", r, s)
}
