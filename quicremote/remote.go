package quicremote

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/abcast/abcast/quicremote/transport"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/asynkron/protoactor-go/extensions"
	"github.com/rs/zerolog"

	"github.com/abcast/abcast/membership"
)

// Remote makes a protoactor-go actor system reachable from the other members
// of the subnet over an RPC transport, and routes PIDs of other members'
// actors over it.
//
// # Addresses
//
// A node's actor address is its NodeID's String(): 64 lowercase hex digits.
// Start sets the actor system's address to it, so every PID spawned after
// Start carries it; a PID whose Address is another member's NodeID resolves
// to this remote. A PID naming anything else (a non-member, a malformed
// address) resolves to the system's dead-letter process.
//
// # Start-up order
//
//  1. Create the actor system (actorkit.NewActorSystem).
//  2. New; register what peers may send (Config.Messages,
//     RegisterMessages, serializers) and the kinds they may spawn
//     (Register).
//  3. Create the transport and pass it the remote's PeerEvent (as its
//     EventFunc, or from your own). The transport may exist and connect
//     before the remote: events before Start are ignored, and Start reads
//     the transport's view instead.
//  4. Start(rpc), before spawning any actor whose PID will travel: a PID's
//     address is fixed when it is spawned, and one spawned earlier says
//     "nonhost", which no other node can reach.
//
// Close the remote before the actor system goes away; closing the transport
// first is fine too (the remote sees every peer go down).
//
// # Delivery
//
// Every peer has a bounded outbound queue (QueueCapacity) drained by one
// send loop. The loop keeps one long-lived stream (RPC.OpenStream) to the
// peer on the current connection and writes whatever is queued as one
// batch frame after another, without waiting for answers: messages between
// two nodes arrive in the order they were sent, batches grow with load, and
// QUIC flow control pushes back when the peer reads slowly (the loop then
// blocks and the queue fills; further messages become dead letters). The
// receiver acknowledges batches on the same stream (every 8 batches, or
// 2 ms after one); at most MaxInflightBatches may be unacknowledged. If the
// stream fails (connection lost, write timeout, the peer refuses it), the
// messages of every unacknowledged batch become dead letters — they may or
// may not have been delivered, and are never resent, so nothing is
// delivered twice — and the loop opens a new stream, which the receiver
// orders after the old one (ActorBatch epoch): a straggler of the old
// stream is dropped rather than delivered out of order. (These decisions
// are made by pure state machines, outCore, orderCore and inCore; the
// loops only perform them.)
//
// Messages are serialized on the send loop, straight into the batch, so
// the sending actor pays only for queueing; a message must therefore not
// be modified after it was sent (protoactor's rule for every message). A
// full queue, an unserializable message, a failed stream or a peer that
// stays unreachable for ConnectGrace make dead letters, each counted by
// reason (Stats, OnDeadLetter) and published as an *actor.DeadLetterEvent,
// so a requester gets a DeadLetterResponse and its future fails with
// actor.ErrDeadLetter instead of timing out. Remote.Result tells such a
// future's caller why (*DeadLetterError).
//
// The receiver hands each message to the local process without blocking
// on it: a full bounded mailbox refuses it (its own dead letter), the
// default mailbox queues it. A target whose mailbox already holds
// MaxTargetBacklog user messages is waited for — this stops reading the
// peer's stream, so QUIC flow control slows the peer's sender — for at
// most BacklogWait per batch; then that message and the next ones to it
// (until it drains below the bound) become DeadLetterTargetBusy dead
// letters the sender sees, and the peer's other messages flow again. A
// message for an actor that does not exist, that is undecodable, of a type
// peers may not send, or beyond the decoding limits is counted, answered
// to its sender with the reason (RemoteDeadLetter, which the sender's
// remote turns into a DeadLetterResponse), and skipped; the rest of the
// batch is delivered and the connection stays up.
//
// # Who may send what
//
// Every member may send user messages to every actor of this node except:
//   - actors hidden with Hide, and their descendants (DeadLetterHidden);
//     protoactor's own processes (event stream, guardians, dead letters)
//     and the remote's ("quicremote$" ids) are never reachable;
//   - local futures: a request whose sender is a local future travels
//     with a reply alias instead of the future's guessable id; the alias
//     takes one reply, only from the member the request was sent to.
//     Anything else to a future or an alias is refused (ForgedReplies).
//     So a member that forwards a request to a third member cannot have
//     that member answer directly: the answer must come back through it;
//   - PoisonPill, which needs the right to stop (below).
//
// Payloads decode only into the protobuf types in Config.Messages (and
// RegisterMessages), protoactor's messages the remote carries, and what
// Config.Serializers decode; each within MaxDecodedBytes and
// MaxDecodedElements, counted on the wire before anything is allocated, and
// charged to the sending peer's transport memory budget (RPC.Reserve)
// until the message is in its mailbox.
//
// System messages are taken only where they make sense: Watch and Unwatch
// for a watcher on the sending member, on an actor it may reach (a hidden
// one answers Terminated NotFound, as if it did not exist); Terminated only
// for an actor of the sending member, ending a watch this node recorded on
// it; Stop (and PoisonPill) only for actors the sending member spawned here
// (SpawnNamed) and their children, or any actor with
// Config.AllowRemoteStop. protoactor's system message types sent as user
// messages are refused, because an actor cannot tell them from the real
// ones. Refusals are counted (RefusedSystem, DeadLetterRefused).
//
// # Watches and failures
//
// Watch, Unwatch, Terminated and Stop travel as system messages, PoisonPill
// as a user message, so Stop/Poison/StopFuture/PoisonFuture work across
// nodes (where allowed). The remote records every watch a local actor (or
// future) makes on a remote actor. When that peer's connection goes down,
// the peer restarts, or it stays unreachable, each recorded watch ends
// exactly once with Terminated{Why: AddressTerminated}; a Terminated the
// peer sends later for a watch already ended this way is dropped
// (StaleTerminated). Local futures whose requests went to that peer and
// are still unanswered are completed at once with a DeadLetterResponse
// (actor.ErrDeadLetter; DeadLetterPeerDown for Result). Connections coming
// up and going down are published on the actor system's EventStream as
// *EndpointConnected and *EndpointTerminated.
type Remote struct {
	system  *actor.ActorSystem
	self    membership.NodeID
	addr    string
	members func() membership.MemberSet
	cfg     Config
	log     zerolog.Logger
	sers    []Serializer
	serByID map[int32]Serializer

	ctx    context.Context // cancelled by Close; parent of every batch Call
	cancel context.CancelFunc
	closed atomic.Bool

	mu      sync.Mutex
	started bool
	rpc     transport.RPC
	peers   map[membership.NodeID]*remotePeer
	orders  map[membership.NodeID]*inboundOrder
	wg      sync.WaitGroup

	procs sync.Map // address string -> *remoteProcess

	replies   replyTable
	types     typeRegistry // protobuf types peers may send
	hidden    hiddenSet
	spawns    spawnTable
	reasons   reasonTable
	endpoints endpointEvents
	ledger    queueLedger     // peers' messages waiting in local mailboxes
	watches   incomingWatches // peers' watches on local actors

	ctr remoteCounters
}

type remoteCounters struct {
	sent, batches, received          atomic.Uint64
	dead                             [numDeadLetterReasons]atomic.Uint64
	unknownTypes, badPayloads        atomic.Uint64
	badBatches, staleBatches         atomic.Uint64
	addressTerminated, failedFutures atomic.Uint64
	staleTerminated                  atomic.Uint64
	ackTimeouts                      atomic.Uint64
	forgedReplies, refusedSystem     atomic.Uint64
	backlogStalls, badAcks           atomic.Uint64
	watchesRefused                   atomic.Uint64
}

var remoteExtensionID = extensions.NextExtensionID()

// protoactor's address for a system without a remote.
const protoactorLocalAddress = "nonhost"

var errClosedRemote = errors.New("quicremote: remote closed")

// New prepares a remote for system as node self. members says who is
// a member right now (membership.LatestMembers(source)); only members get
// routes. Nothing is sent or received until Start.
func New(system *actor.ActorSystem, self membership.NodeID, members func() membership.MemberSet, cfg Config, log zerolog.Logger) (*Remote, error) {
	if system == nil || members == nil {
		return nil, errors.New("quicremote: New needs an actor system and a member set")
	}
	if self.IsZero() {
		return nil, errors.New("quicremote: New needs a node id")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r := &Remote{
		system:  system,
		self:    self,
		addr:    self.String(),
		members: members,
		cfg:     cfg,
		log:     log.With().Str("node", self.String()).Str("component", "remote").Logger(),
		serByID: make(map[int32]Serializer),
		peers:   make(map[membership.NodeID]*remotePeer),
		orders:  make(map[membership.NodeID]*inboundOrder),
	}
	r.types.init(cfg.Messages)
	r.ledger.init(r)
	r.endpoints.wake = make(chan struct{}, 1)
	r.sers = append(append(r.sers, cfg.Serializers...), protoSerializer{&r.types})
	for _, s := range r.sers {
		r.serByID[s.ID()] = s
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	return r, nil
}

// RemoteOf returns the remote started on system, or nil.
func RemoteOf(system *actor.ActorSystem) *Remote {
	r, _ := system.Extensions.Get(remoteExtensionID).(*Remote)
	return r
}

// ExtensionID makes the remote an actor system extension (see RemoteOf).
func (r *Remote) ExtensionID() extensions.ExtensionID { return remoteExtensionID }

// Address is this node's actor address, its NodeID's String().
func (r *Remote) Address() string { return r.addr }

// PID names actor id on node.
func (r *Remote) PID(node membership.NodeID, id string) *actor.PID {
	return actor.NewPID(node.String(), id)
}

// Start sets the actor system's address, installs the route to other
// members and registers the remote's stream handler on rpc. Call it once, before
// spawning actors whose PIDs travel and before the system is used from
// other goroutines (it writes the system's address without a lock).
func (r *Remote) Start(rpc transport.RPC) error {
	if rpc == nil {
		return errors.New("quicremote: Start needs a transport")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.started || r.closed.Load() {
		return errors.New("quicremote: remote already started or closed")
	}
	if err := rpc.HandleStream(r.cfg.Protocol, r.serveStream, r.cfg.HandlerLimit); err != nil {
		return fmt.Errorf("quicremote: registering the remote's protocol: %w", err)
	}
	r.rpc = rpc
	r.system.ProcessRegistry.Address = r.addr
	r.system.ProcessRegistry.RegisterAddressResolver(r.resolve)
	r.system.ProcessRegistry.Add(spawnWatcher{r}, spawnWatcherID)
	r.system.Extensions.Register(r)
	r.started = true
	// The transport may have connected before the remote existed: its
	// view now is the start of the endpoint events (later events that it
	// already shows are not reported twice).
	for _, peer := range rpc.Peers() {
		if conn, up := rpc.ConnID(peer); up {
			r.endpoints.noteUp(peer, conn)
		}
	}
	r.wg.Add(2)
	go r.publishEndpoints()
	go func() {
		defer r.wg.Done()
		r.ledger.run(r.ctx)
	}()
	r.log.Info().Str("protocol", r.cfg.Protocol).Msg("remote started")
	return nil
}

// Close stops every peer's send loop: queued messages become dead letters
// (DeadLetterClosed), watches of remote actors end with AddressTerminated,
// waiting futures fail. Incoming batches are refused from now on. It does
// not close the transport. Close waits for the send loops to end, which
// takes at most the longest batch in flight (cancelled at once).
func (r *Remote) Close() error {
	if r.closed.Swap(true) {
		return nil
	}
	r.cancel()
	r.mu.Lock()
	peers := make([]*remotePeer, 0, len(r.peers))
	for _, p := range r.peers {
		peers = append(peers, p)
	}
	r.mu.Unlock()
	for _, p := range peers {
		p.signal()
	}
	r.wg.Wait()
	r.log.Info().Msg("remote closed")
	return nil
}

// Stats returns the counters.
func (r *Remote) Stats() Stats {
	s := Stats{
		Sent:              r.ctr.sent.Load(),
		Batches:           r.ctr.batches.Load(),
		Received:          r.ctr.received.Load(),
		UnknownTypes:      r.ctr.unknownTypes.Load(),
		BadPayloads:       r.ctr.badPayloads.Load(),
		BadBatches:        r.ctr.badBatches.Load(),
		StaleBatches:      r.ctr.staleBatches.Load(),
		AddressTerminated: r.ctr.addressTerminated.Load(),
		FailedFutures:     r.ctr.failedFutures.Load(),
		StaleTerminated:   r.ctr.staleTerminated.Load(),
		AckTimeouts:       r.ctr.ackTimeouts.Load(),
		ForgedReplies:     r.ctr.forgedReplies.Load(),
		RefusedSystem:     r.ctr.refusedSystem.Load(),
		BacklogStalls:     r.ctr.backlogStalls.Load(),
		BadAcks:           r.ctr.badAcks.Load(),
		WatchesRefused:    r.ctr.watchesRefused.Load(),
		QueuedBytes:       r.ledger.bytes.Load(),

		EndpointEventsDropped: r.endpoints.droppedCount(),
	}
	for i := range s.DeadLetters {
		s.DeadLetters[i] = r.ctr.dead[i].Load()
	}
	r.mu.Lock()
	for _, p := range r.peers {
		s.Queued += p.queued()
	}
	r.mu.Unlock()
	return s
}

// PeerEvent tells the remote about the transport's peer events; it is an
// EventFunc. It never blocks: the work a PeerDown causes (dead letters,
// AddressTerminated, failed futures) runs on that peer's send loop.
//
// Events that come before Start are ignored: Start reads the transport's
// view instead.
func (r *Remote) PeerEvent(ev transport.PeerEvent) {
	switch e := ev.(type) {
	case transport.PeerUp:
		if p := r.noteEndpoint(e.Peer, e.ConnID, true, nil); p != nil {
			p.post(outEvent{kind: evPeerUp, conn: e.ConnID})
		}
	case transport.PeerDown:
		if p := r.noteEndpoint(e.Peer, e.ConnID, false, e.Err); p != nil {
			r.log.Info().Str("peer", e.Peer.Short()).Uint64("conn", e.ConnID).AnErr("cause", e.Err).Msg("peer down")
			p.post(outEvent{kind: evPeerDown})
			if !r.members().Contains(e.Peer) {
				r.retire(p)
			}
		}
		if r.started0() && !r.members().Contains(e.Peer) {
			r.dropWatchesOf(e.Peer)
		}
	}
}

// noteEndpoint queues the endpoint event, if the remote has started, and
// returns the peer's state if there is one.
func (r *Remote) noteEndpoint(peer membership.NodeID, conn uint64, up bool, err error) *remotePeer {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.started {
		return nil
	}
	if up {
		r.endpoints.noteUp(peer, conn)
	} else {
		r.endpoints.noteDown(peer, conn, err)
	}
	return r.peers[peer]
}

// started0 reports whether Start has run.
func (r *Remote) started0() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.started
}

func (r *Remote) existingPeer(id membership.NodeID) *remotePeer {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.peers[id]
}

// peerFor returns id's peer state, creating it (and its send loop) for a
// member. The state is created under mu together with reading the
// transport's view of the connection, so no PeerUp/PeerDown can fall
// between the two.
func (r *Remote) peerFor(id membership.NodeID) (*remotePeer, DeadLetterReason) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed.Load() || !r.started {
		return nil, DeadLetterClosed
	}
	if p := r.peers[id]; p != nil {
		return p, 0
	}
	if id == r.self || !r.members().Contains(id) {
		return nil, DeadLetterNotMember
	}
	connID, up := r.rpc.ConnID(id)
	p := newRemotePeer(r, id, up, connID, time.Now())
	r.peers[id] = p
	r.wg.Add(1)
	go p.run()
	return p, 0
}

// retire forgets p (its peer left the member set); its loop ends.
func (r *Remote) retire(p *remotePeer) {
	r.mu.Lock()
	if r.peers[p.id] == p {
		delete(r.peers, p.id)
	}
	r.mu.Unlock()
	if !p.retired.Swap(true) {
		p.post(outEvent{kind: evStop, reason: DeadLetterNotMember})
	}
}

// resolve is the actor system's address resolver.
func (r *Remote) resolve(pid *actor.PID) (actor.Process, bool) {
	if v, ok := r.procs.Load(pid.Address); ok {
		return v.(*remoteProcess), true
	}
	if r.closed.Load() {
		return nil, false
	}
	id, err := membership.ParseNodeID(pid.Address)
	if err != nil || id == r.self || !r.members().Contains(id) {
		return nil, false
	}
	v, _ := r.procs.LoadOrStore(pid.Address, &remoteProcess{r: r, node: id})
	return v.(*remoteProcess), true
}

// remoteProcess stands for every actor of one member node.
type remoteProcess struct {
	r      *Remote
	node   membership.NodeID
	cached atomic.Pointer[remotePeer]
}

var _ actor.Process = (*remoteProcess)(nil)

func (rp *remoteProcess) SendUserMessage(pid *actor.PID, message any) {
	rp.r.send(rp, pid, message, false)
}

func (rp *remoteProcess) SendSystemMessage(pid *actor.PID, message any) {
	rp.r.send(rp, pid, message, true)
}

func (rp *remoteProcess) Stop(pid *actor.PID) {
	rp.r.send(rp, pid, &actor.Stop{}, true)
}

func (rp *remoteProcess) peer() (*remotePeer, DeadLetterReason) {
	if p := rp.cached.Load(); p != nil && !p.retired.Load() {
		return p, 0
	}
	p, reason := rp.r.peerFor(rp.node)
	if p != nil {
		rp.cached.Store(p)
	}
	return p, reason
}

// outItem is one message waiting for, or riding in, a batch.
type outItem struct {
	target *actor.PID
	sender *actor.PID
	alias  *replyAlias // travels instead of sender, a local future
	msg    any
	header actor.ReadonlyMessageHeader
	system bool
}

var errUnsupportedSystem = errors.New("quicremote: system message not carried by the remote")

func (r *Remote) send(rp *remoteProcess, target *actor.PID, message any, system bool) {
	header, msg, sender := actor.UnwrapEnvelope(message)
	it := outItem{target: target, sender: sender, msg: msg, header: header, system: system}
	if system {
		switch m := msg.(type) {
		case *actor.Terminated:
			// A local actor ended, or was never there: the peer's watch of
			// it ends with this message, sent or not.
			if m.Who != nil && m.Who.Address == r.addr {
				r.watches.remove(rp.node, m.Who.Id, target.Id)
			}
		case *actor.Watch, *actor.Unwatch, *actor.Stop:
		default:
			r.deadLetter(nil, rp.node, &it, DeadLetterUnserializable, errUnsupportedSystem)
			return
		}
	}
	// A peer whose loop just ended (it left the member set) refuses; the
	// second look finds its successor or none.
	for range 2 {
		p, reason := rp.peer()
		if p == nil {
			r.deadLetter(nil, rp.node, &it, reason, nil)
			return
		}
		if !system && sender != nil && it.alias == nil && isLocalFuture(r, sender) {
			it.alias = r.newAlias(sender, p.id)
		}
		switch p.enqueue(&it) {
		case enqOK:
			return
		case enqFull:
			r.deadLetter(p, rp.node, &it, DeadLetterQueueFull, nil)
			return
		case enqStopped:
			rp.cached.CompareAndSwap(p, nil)
			if it.alias != nil {
				it.alias.claim() // the successor peer gets its own
				it.alias = nil
			}
		}
	}
	r.deadLetter(nil, rp.node, &it, DeadLetterClosed, nil)
}

// deadLetter gives up on it. A Watch that cannot be sent ends the watch with
// AddressTerminated (once: only if its record was still there); anything
// else is published as a dead letter, which answers a waiting requester.
func (r *Remote) deadLetter(p *remotePeer, node membership.NodeID, it *outItem, reason DeadLetterReason, err error) {
	r.ctr.dead[reason].Add(1)
	if e := r.log.Debug(); e.Enabled() {
		e.Str("peer", node.Short()).Str("target", it.target.Id).Str("reason", reason.String()).
			Str("type", fmt.Sprintf("%T", it.msg)).AnErr("err", err).Msg("dead letter")
	}
	if h := r.cfg.OnDeadLetter; h != nil {
		h(DeadLetter{Peer: node, Target: it.target, Sender: it.sender, Message: it.msg, System: it.system, Reason: reason, Err: err})
	}
	if w, ok := it.msg.(*actor.Watch); ok && it.system {
		if p == nil || p.takeWatch(it.target.Id, w.Watcher) {
			r.addressTerminated(w.Watcher, it.target)
		}
		return
	}
	sender := it.sender
	switch {
	case it.alias != nil && !it.alias.claim():
		// Answered already (the peer went down and failed it): the
		// future has its one result.
		sender = nil
	case sender != nil && !it.system && isLocalFuture(r, sender):
		r.noteFutureFailed(sender, node, it.target, reason, false)
	}
	r.system.EventStream.Publish(&actor.DeadLetterEvent{PID: it.target, Message: it.msg, Sender: sender})
}

func (r *Remote) addressTerminated(watcher, watchee *actor.PID) {
	if watcher == nil {
		return
	}
	proc, ok := r.system.ProcessRegistry.GetLocal(watcher.Id)
	if !ok {
		return
	}
	r.ctr.addressTerminated.Add(1)
	proc.SendSystemMessage(watcher, &actor.Terminated{Who: watchee, Why: actor.TerminatedReason_AddressTerminated})
}
