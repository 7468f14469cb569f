package quicremote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/abcast/abcast/quicremote/transport"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/asynkron/protoactor-go/extensions"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/encoding/protowire"

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
//  2. New.
//  3. Create the transport with the remote's PeerEvent as its EventFunc (or
//     call PeerEvent from your own EventFunc).
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
// stream is dropped rather than delivered out of order.
//
// Messages are serialized on the send loop, straight into the batch, so
// the sending actor pays only for queueing; a message must therefore not
// be modified after it was sent (protoactor's rule for every message). A
// full queue, an unserializable message, a failed stream or a peer that
// stays unreachable for ConnectGrace make dead letters, each counted by
// reason (Stats, OnDeadLetter) and published as an *actor.DeadLetterEvent,
// so a requester gets a DeadLetterResponse and its future fails with
// actor.ErrDeadLetter instead of timing out.
//
// The receiver hands each message to the local process without waiting: a
// full bounded mailbox refuses it (its own dead letter), the default mailbox
// queues it, so a slow actor never holds up messages to other actors. An
// unknown type name or a payload that does not decode is counted, answered
// with a DeadLetterResponse to its sender, and skipped; the rest of the
// batch is delivered and the connection stays up.
//
// # Watches and failures
//
// Watch, Unwatch, Terminated and Stop travel as system messages, PoisonPill
// as a user message, so Stop/Poison/StopFuture/PoisonFuture work across
// nodes. The remote records every watch a local actor (or future) makes on
// a remote actor. When that peer's connection goes down, the peer restarts,
// or it stays unreachable, each recorded watch ends exactly once with
// Terminated{Why: AddressTerminated}; a Terminated the peer sends later for
// a watch already ended this way is dropped (StaleTerminated). Local futures
// whose requests went to that peer and are still unanswered are completed
// at once with a DeadLetterResponse (actor.ErrDeadLetter).
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

	futMu      sync.Mutex
	futures    map[string]*pendingFuture
	futSweepAt int

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
		system:     system,
		self:       self,
		addr:       self.String(),
		members:    members,
		cfg:        cfg,
		log:        log.With().Str("node", self.String()).Str("component", "remote").Logger(),
		serByID:    make(map[int32]Serializer),
		peers:      make(map[membership.NodeID]*remotePeer),
		orders:     make(map[membership.NodeID]*inboundOrder),
		futures:    make(map[string]*pendingFuture),
		futSweepAt: 1024,
	}
	r.sers = append(append(r.sers, cfg.Serializers...), ProtoSerializer{})
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
	r.system.Extensions.Register(r)
	r.started = true
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
	}
	for i := range s.DeadLetters {
		s.DeadLetters[i] = r.ctr.dead[i].Load()
	}
	r.mu.Lock()
	for _, p := range r.peers {
		p.mu.Lock()
		s.Queued += p.q.n + len(p.pending)
		p.mu.Unlock()
	}
	r.mu.Unlock()
	return s
}

// PeerEvent tells the remote about the transport's peer events; it is an
// EventFunc. It never blocks: the work a PeerDown causes (dead letters,
// AddressTerminated, failed futures) runs on that peer's send loop.
func (r *Remote) PeerEvent(ev transport.PeerEvent) {
	switch e := ev.(type) {
	case transport.PeerUp:
		if p := r.existingPeer(e.Peer); p != nil {
			p.mu.Lock()
			p.up = true
			p.connID = e.ConnID
			p.mu.Unlock()
			p.signal()
		}
	case transport.PeerDown:
		if p := r.existingPeer(e.Peer); p != nil {
			r.log.Info().Str("peer", e.Peer.Short()).Uint64("conn", e.ConnID).AnErr("cause", e.Err).Msg("peer down")
			p.markDown(DeadLetterPeerDown)
		}
	}
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
	p := &remotePeer{
		r:         r,
		id:        id,
		addr:      id.String(),
		wake:      make(chan struct{}, 1),
		up:        up,
		connID:    connID,
		downSince: time.Now(),
		watches:   make(map[watchKey]watchRec),
	}
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
	p.retired.Store(true)
	p.signal()
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
	msg    any
	header actor.ReadonlyMessageHeader
	system bool
}

var errUnsupportedSystem = errors.New("quicremote: system message not carried by the remote")

func (r *Remote) send(rp *remoteProcess, target *actor.PID, message any, system bool) {
	header, msg, sender := actor.UnwrapEnvelope(message)
	it := outItem{target: target, sender: sender, msg: msg, header: header, system: system}
	if system {
		switch msg.(type) {
		case *actor.Watch, *actor.Unwatch, *actor.Terminated, *actor.Stop:
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
		switch p.enqueue(&it) {
		case enqOK:
			if !system && sender != nil {
				r.trackFuture(sender, p.id)
			}
			return
		case enqFull:
			r.deadLetter(p, rp.node, &it, DeadLetterQueueFull, nil)
			return
		case enqStopped:
			rp.cached.CompareAndSwap(p, nil)
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
	r.system.EventStream.Publish(&actor.DeadLetterEvent{PID: it.target, Message: it.msg, Sender: it.sender})
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

// pendingFuture is a local future whose request went to peer and has not
// been answered yet. failing marks one being failed because the peer went
// down: a late answer is then dropped, so the future sees one result.
type pendingFuture struct {
	pid     *actor.PID
	peer    membership.NodeID
	failing bool
}

func isLocalFuture(r *Remote, pid *actor.PID) bool {
	return strings.HasPrefix(pid.Id, "future") && (pid.Address == r.addr || pid.Address == protoactorLocalAddress)
}

func (r *Remote) trackFuture(sender *actor.PID, peer membership.NodeID) {
	if !isLocalFuture(r, sender) {
		return
	}
	r.futMu.Lock()
	defer r.futMu.Unlock()
	if _, ok := r.futures[sender.Id]; ok {
		return
	}
	r.futures[sender.Id] = &pendingFuture{pid: sender, peer: peer}
	if len(r.futures) < r.futSweepAt {
		return
	}
	// Futures that timed out or were answered another way have left the
	// registry; forget them so the map stays as small as the live futures.
	for id, f := range r.futures {
		if _, live := r.system.ProcessRegistry.GetLocal(id); !live && !f.failing {
			delete(r.futures, id)
		}
	}
	r.futSweepAt = 2*len(r.futures) + 1024
}

// claimFuture is called before delivering a message to local future id; it
// returns false if the future is being failed and the message must be
// dropped.
func (r *Remote) claimFuture(id string) bool {
	r.futMu.Lock()
	defer r.futMu.Unlock()
	f := r.futures[id]
	if f == nil {
		return true
	}
	if f.failing {
		return false
	}
	delete(r.futures, id)
	return true
}

// failingFutures marks peer's pending futures as failing and returns them.
func (r *Remote) failingFutures(peer membership.NodeID) []*pendingFuture {
	r.futMu.Lock()
	defer r.futMu.Unlock()
	var out []*pendingFuture
	for _, f := range r.futures {
		if f.peer == peer && !f.failing {
			f.failing = true
			out = append(out, f)
		}
	}
	return out
}

func (r *Remote) failFutures(fs []*pendingFuture) {
	for _, f := range fs {
		if proc, ok := r.system.ProcessRegistry.GetLocal(f.pid.Id); ok {
			r.ctr.failedFutures.Add(1)
			proc.SendUserMessage(f.pid, &actor.DeadLetterResponse{})
		}
	}
	r.futMu.Lock()
	for _, f := range fs {
		delete(r.futures, f.pid.Id)
	}
	r.futMu.Unlock()
}

// serveStream serves one peer's stream of batches (one per connection,
// normally): each frame is one ActorBatch, delivered in order, and after it
// the count of frames handled so far is sent back as the acknowledgement
// (a varint; acknowledgements are coalesced, the latest count wins). An
// undecodable batch ends the stream with an error: the sender makes the
// messages it has not seen acknowledged dead letters and opens a new one.
func (r *Remote) serveStream(ctx context.Context, peer membership.NodeID, s transport.Stream) error {
	if r.closed.Load() {
		return errClosedRemote
	}
	// Closing the remote ends its incoming streams.
	stopOnClose := context.AfterFunc(r.ctx, s.Close)
	defer stopOnClose()
	ackCtx, cancelAcks := context.WithCancel(ctx)
	acks := make(chan ackNote, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		sendAcks(ackCtx, s, acks)
	}()
	defer func() {
		cancelAcks()
		wg.Wait()
	}()
	connID := s.ConnID()
	o := r.orderFor(peer)
	peerAddr := peer.String()
	dec := &batchDecoder{r: r}
	var handled, lastNow uint64
	for {
		frame, err := s.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return nil // the stream is gone; nothing to answer
		}
		if r.closed.Load() {
			return errClosedRemote
		}
		if err := r.handleBatch(ctx, peer, peerAddr, connID, o, dec, frame); err != nil {
			return err
		}
		handled++
		now := handled-lastNow >= ackEvery
		if now {
			lastNow = handled
		}
		select { // only this goroutine sends: replace a pending note
		case old := <-acks:
			now = now || old.now
		default:
		}
		acks <- ackNote{handled, now}
	}
}

// Acknowledgements are delayed so that light traffic (a request here, an
// answer there) does not cost a packet per batch: the receiver answers
// after every ackEvery batches at once, otherwise ackDelay after the first
// batch it has not acknowledged.
const (
	ackEvery = 8
	ackDelay = 2 * time.Millisecond
)

// ackNote tells sendAcks how many batches were handled and whether to
// acknowledge them at once.
type ackNote struct {
	n   uint64
	now bool
}

// sendAcks writes the acknowledgements of one incoming stream until ctx
// ends or the stream fails.
func sendAcks(ctx context.Context, s transport.Stream, notes <-chan ackNote) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var buf []byte
	var pending uint64
	waiting := false
	send := func() bool {
		waiting = false
		timer.Stop()
		buf = protowire.AppendVarint(buf[:0], pending)
		return s.Send(ctx, buf) == nil
	}
	for {
		select {
		case a := <-notes:
			pending = a.n
			if a.now {
				if !send() {
					return
				}
			} else if !waiting {
				waiting = true
				timer.Reset(ackDelay)
			}
		case <-timer.C:
			if waiting && !send() {
				return
			}
		case <-ctx.Done():
			return
		}
	}
}

// handleBatch decodes and delivers one incoming batch. A stale batch (its
// connection or epoch superseded) is counted and dropped; a malformed one
// is an error and nothing of it is delivered.
func (r *Remote) handleBatch(ctx context.Context, peer membership.NodeID, peerAddr string, connID uint64, o *inboundOrder, d *batchDecoder, frame []byte) error {
	defer d.release()
	b := &d.batch
	err := parseBatch(frame, b, r.cfg.MaxBatchMessages)
	if err == nil {
		// Every envelope is parsed before anything is delivered.
		d.envs = d.envs[:0]
		for i := 0; err == nil && i < len(b.envelopes); i++ {
			d.envs = append(d.envs, rawEnvelope{})
			err = parseEnvelope(b.envelopes[i], &d.envs[i])
		}
	}
	if err != nil {
		r.ctr.badBatches.Add(1)
		r.log.Warn().Str("peer", peer.Short()).Err(err).Int("bytes", len(frame)).Msg("undecodable batch")
		return fmt.Errorf("undecodable batch from %s: %w", peer.Short(), err)
	}
	if err := o.waitTurn(ctx, connID, b.epoch, b.seq); err != nil {
		if ctx.Err() != nil {
			return err
		}
		r.ctr.staleBatches.Add(1)
		return nil
	}
	// Delivery never blocks, so holding the turn while delivering only
	// holds up this peer's next batch, which must wait anyway. The turn is
	// handed on even if a delivery panics (an OnDeadLetter hook, say).
	defer o.done()
	for i := range d.envs {
		r.deliver(peer, peerAddr, d, &d.envs[i])
	}
	return nil
}

// orderFor returns the incoming batch order of peer.
func (r *Remote) orderFor(peer membership.NodeID) *inboundOrder {
	r.mu.Lock()
	defer r.mu.Unlock()
	o := r.orders[peer]
	if o == nil {
		o = &inboundOrder{changed: make(chan struct{})}
		r.orders[peer] = o
	}
	return o
}

var errStaleBatch = errors.New("batch out of date (a newer epoch or connection has started)")

// inboundOrder delivers one peer's batches in (connection, epoch, seq)
// order. The sender numbers batches from 0 in every epoch and starts a new
// epoch on every connection change and after every failed batch; a batch
// from a newer connection or epoch restarts the count at 0. Anything older,
// or a seq already passed, is refused (the sender makes its messages dead
// letters), so a batch that never arrives holds up the ones behind it only
// until the sender's next epoch begins.
type inboundOrder struct {
	mu                  sync.Mutex
	changed             chan struct{} // closed and replaced when the turn moves
	started             bool
	connID, epoch, next uint64
	busy                bool // a batch holds the turn
	// The connection and epoch of the batch holding the turn: if a newer
	// one started meanwhile, its count must not move when the old batch
	// finishes.
	busyConn, busyEpoch uint64
}

func (o *inboundOrder) moveLocked() {
	close(o.changed)
	o.changed = make(chan struct{})
}

func (o *inboundOrder) waitTurn(ctx context.Context, connID, epoch, seq uint64) error {
	o.mu.Lock()
	for {
		if !o.started || connID > o.connID || (connID == o.connID && epoch > o.epoch) {
			o.started = true
			o.connID, o.epoch, o.next = connID, epoch, 0
			o.moveLocked()
		}
		if connID < o.connID || epoch < o.epoch || seq < o.next {
			o.mu.Unlock()
			return errStaleBatch
		}
		if seq == o.next && !o.busy {
			o.busy = true
			o.busyConn, o.busyEpoch = connID, epoch
			o.mu.Unlock()
			return nil
		}
		ch := o.changed
		o.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		o.mu.Lock()
	}
}

func (o *inboundOrder) done() {
	o.mu.Lock()
	o.busy = false
	if o.busyConn == o.connID && o.busyEpoch == o.epoch {
		o.next++
	}
	o.moveLocked()
	o.mu.Unlock()
}

func (r *Remote) deliver(peer membership.NodeID, peerAddr string, d *batchDecoder, env *rawEnvelope) {
	target := d.targetOf(env)
	var sender *actor.PID
	if len(env.senderID) > 0 {
		addr := peerAddr
		if len(env.senderAddr) > 0 {
			addr = string(env.senderAddr)
		}
		sender = &actor.PID{Address: addr, Id: string(env.senderID), RequestId: env.senderReq}
	}
	msg, typeName, err := d.decode(env)
	if err != nil {
		if errors.Is(err, ErrUnknownMessageType) {
			r.ctr.unknownTypes.Add(1)
		} else {
			r.ctr.badPayloads.Add(1)
		}
		r.ctr.dead[DeadLetterUndecodable].Add(1)
		r.log.Debug().Str("peer", peer.Short()).Str("type", typeName).Int32("serializer", env.serializer).Err(err).Msg("undecodable message")
		if h := r.cfg.OnDeadLetter; h != nil {
			h(DeadLetter{Peer: peer, Target: target, Sender: sender, System: env.system, Reason: DeadLetterUndecodable, Err: err})
		}
		if sender != nil && !env.system {
			r.system.Root.Send(sender, &actor.DeadLetterResponse{})
		}
		return
	}
	r.ctr.received.Add(1)
	if env.system {
		proc, _ := r.system.ProcessRegistry.GetLocal(target.Id)
		r.deliverSystem(peer, peerAddr, proc, target, msg)
		return
	}
	if strings.HasPrefix(target.Id, "future") && !r.claimFuture(target.Id) {
		return
	}
	if sender != nil || len(env.header) > 0 {
		msg = &actor.MessageEnvelope{Header: env.header, Message: msg, Sender: sender}
	}
	r.system.Root.Send(target, msg)
}

// fixAddress gives a PID that a peer sent without a reachable address (its
// system had no remote when the PID was made) the peer's address.
func fixAddress(pid *actor.PID, peerAddr string) {
	if pid != nil && (pid.Address == "" || pid.Address == protoactorLocalAddress) {
		pid.Address = peerAddr
	}
}

func (r *Remote) deliverSystem(peer membership.NodeID, peerAddr string, proc actor.Process, target *actor.PID, msg any) {
	switch m := msg.(type) {
	case *actor.Watch:
		fixAddress(m.Watcher, peerAddr)
		proc.SendSystemMessage(target, m)
	case *actor.Unwatch:
		fixAddress(m.Watcher, peerAddr)
		proc.SendSystemMessage(target, m)
	case *actor.Terminated:
		fixAddress(m.Who, peerAddr)
		if !r.endWatch(peer, m.Who, target) {
			r.ctr.staleTerminated.Add(1)
			return
		}
		proc.SendSystemMessage(target, m)
	case *actor.Stop:
		proc.Stop(target)
	default:
		r.ctr.badPayloads.Add(1)
		r.log.Debug().Str("peer", peer.Short()).Str("type", fmt.Sprintf("%T", msg)).Msg("unsupported system message dropped")
	}
}

// endWatch removes the record of watcher's watch on who, reporting whether
// there was one.
func (r *Remote) endWatch(peer membership.NodeID, who, watcher *actor.PID) bool {
	if who == nil {
		return false
	}
	node := peer
	if who.Address != peer.String() {
		id, err := membership.ParseNodeID(who.Address)
		if err != nil {
			return false
		}
		node = id
	}
	p := r.existingPeer(node)
	return p != nil && p.takeWatch(who.Id, watcher)
}

// watchKey names one watch: a local watcher on an actor of the peer.
type watchKey struct{ watchee, watcher string }

type watchRec struct{ watchee, watcher *actor.PID }

// remotePeer is the state kept per member we send to.
type remotePeer struct {
	r       *Remote
	id      membership.NodeID
	addr    string
	wake    chan struct{}
	retired atomic.Bool

	mu        sync.Mutex
	q         outRing
	up        bool
	downSince time.Time // when a not-yet-connected peer started waiting; zero after a transport.PeerDown
	stopped   bool      // the send loop has ended; enqueue refuses
	downWork  []downWork
	connID    uint64 // the transport's current connection to the peer
	// The stream batches go out on, the connection it rides on, and the
	// batches written to it and not yet acknowledged, oldest first. Every
	// stream gets a new epoch; seq numbers its batches (see ActorBatch).
	stream     transport.Stream
	streamConn uint64
	unacked    [][]outItem
	sentAt     []time.Time // when each unacked batch was written
	pending    []outItem   // taken from the queue by the loop, not sent yet
	free       [][]outItem // acknowledged batches' slices, for reuse
	epoch, seq uint64
	watches    map[watchKey]watchRec
}

// downWork is what a PeerDown leaves for the send loop to settle.
type downWork struct {
	items   []outItem
	watches []watchRec
	futures []*pendingFuture
	reason  DeadLetterReason
}

func (p *remotePeer) signal() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

type enqResult int

const (
	enqOK enqResult = iota
	enqFull
	enqStopped
)

// enqueue queues it, keeping the watch records in step with the Watch and
// Unwatch messages that pass (a Watch that finds the queue full is recorded
// all the same, so that the dead letter that follows ends it).
func (p *remotePeer) enqueue(it *outItem) enqResult {
	p.mu.Lock()
	if p.stopped {
		p.mu.Unlock()
		return enqStopped
	}
	if it.system {
		switch m := it.msg.(type) {
		case *actor.Watch:
			if m.Watcher != nil {
				p.watches[watchKey{it.target.Id, m.Watcher.Id}] = watchRec{watchee: it.target, watcher: m.Watcher}
			}
		case *actor.Unwatch:
			if m.Watcher != nil {
				delete(p.watches, watchKey{it.target.Id, m.Watcher.Id})
			}
		}
	}
	ok := p.q.push(*it, p.r.cfg.QueueCapacity)
	wasEmpty := p.q.n == 1
	p.mu.Unlock()
	if !ok {
		return enqFull
	}
	if wasEmpty {
		p.signal()
	}
	return enqOK
}

func (p *remotePeer) takeWatch(watchee string, watcher *actor.PID) bool {
	if watcher == nil {
		return false
	}
	k := watchKey{watchee, watcher.Id}
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.watches[k]; !ok {
		return false
	}
	delete(p.watches, k)
	return true
}

// markDown records that the connection went down: everything queued for it
// and every watch on its actors is handed to the send loop to settle.
func (p *remotePeer) markDown(reason DeadLetterReason) {
	futures := p.r.failingFutures(p.id)
	p.mu.Lock()
	p.up = false
	// Known down: later messages fail at once instead of waiting out the
	// grace, which only covers a peer not connected yet.
	p.downSince = time.Time{}
	st := p.dropStreamLocked()
	p.downWork = append(p.downWork, p.takeAllLocked(reason, futures))
	p.mu.Unlock()
	if st != nil {
		st.Close()
	}
	p.signal()
	if !p.r.members().Contains(p.id) {
		p.r.retire(p)
	}
}

// dropStreamLocked forgets the current stream, returning it for the
// caller to Close outside the lock.
func (p *remotePeer) dropStreamLocked() transport.Stream {
	st := p.stream
	p.stream = nil
	return st
}

// takeUnackedLocked appends the messages of every unacknowledged batch to
// dst, oldest first, and forgets the batches.
func (p *remotePeer) takeUnackedLocked(dst []outItem) []outItem {
	for _, b := range p.unacked {
		dst = append(dst, b...)
	}
	p.unacked = nil
	p.sentAt = nil
	return dst
}

// takeAllLocked takes the unacknowledged batches, the queue and the
// watches, in that order (which is the order the messages were sent).
func (p *remotePeer) takeAllLocked(reason DeadLetterReason, futures []*pendingFuture) downWork {
	w := downWork{reason: reason, futures: futures, items: p.takeUnackedLocked(nil)}
	w.items = append(w.items, p.pending...)
	p.pending = nil
	for p.q.n > 0 {
		w.items = append(w.items, p.q.pop())
	}
	for k, rec := range p.watches {
		w.watches = append(w.watches, rec)
		delete(p.watches, k)
	}
	return w
}

// settle dead-letters w's messages, ends its watches and fails its
// futures, in that order: a queued request's dead letter already answers
// its future, which has then left the registry.
func (p *remotePeer) settle(w downWork) {
	for i := range w.items {
		p.r.deadLetter(p, p.id, &w.items[i], w.reason, nil)
	}
	for _, rec := range w.watches {
		p.r.addressTerminated(rec.watcher, rec.watchee)
	}
	p.r.failFutures(w.futures)
}

// run is the peer's send loop: the only goroutine that sends to it.
func (p *remotePeer) run() {
	defer p.r.wg.Done()
	r := p.r
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	enc := batchEncoder{r: r}
	for {
		p.mu.Lock()
		if len(p.downWork) > 0 {
			work := p.downWork
			p.downWork = nil
			p.mu.Unlock()
			for _, w := range work {
				p.settle(w)
			}
			continue
		}
		if r.closed.Load() || p.retired.Load() {
			p.stopped = true
			reason := DeadLetterClosed
			if !r.closed.Load() {
				reason = DeadLetterNotMember
			}
			st := p.dropStreamLocked()
			w := p.takeAllLocked(reason, nil)
			p.mu.Unlock()
			if st != nil {
				st.Close()
			}
			w.futures = r.failingFutures(p.id)
			p.settle(w)
			return
		}
		// A peer that takes batches but never acknowledges them would
		// hold their messages forever: give up on the stream once the
		// oldest has waited SendTimeout.
		var ackWait time.Duration
		if p.stream != nil && len(p.sentAt) > 0 {
			ackWait = time.Until(p.sentAt[0].Add(r.cfg.SendTimeout))
			if ackWait <= 0 {
				st := p.stream
				p.mu.Unlock()
				r.ctr.ackTimeouts.Add(1)
				p.streamFailed(st, fmt.Errorf("no acknowledgement from %s within %v", p.id.Short(), r.cfg.SendTimeout))
				continue
			}
		}
		if p.q.n == 0 && len(p.pending) == 0 {
			p.mu.Unlock()
			p.waitUpTo(timer, ackWait)
			continue
		}
		if !p.up {
			if d := time.Until(p.downSince.Add(r.cfg.ConnectGrace)); !p.downSince.IsZero() && d > 0 {
				p.mu.Unlock()
				timer.Reset(d)
				p.wait(timer.C)
				timer.Stop()
				continue
			}
			// Watches made while it was down stay recorded: their own
			// Watch's dead letter ends them. Older ones ended at the
			// PeerDown.
			w := downWork{reason: DeadLetterUnreachable, items: p.pending}
			p.pending = nil
			for p.q.n > 0 {
				w.items = append(w.items, p.q.pop())
			}
			p.mu.Unlock()
			p.settle(w)
			if !r.members().Contains(p.id) {
				r.retire(p)
			}
			continue
		}
		if p.stream == nil || p.streamConn != p.connID {
			old := p.dropStreamLocked()
			stale := p.takeUnackedLocked(nil)
			p.mu.Unlock()
			if old != nil {
				old.Close()
			}
			p.failItems(stale, errors.New("connection replaced"))
			p.openStream()
			continue
		}
		if len(p.unacked) >= r.cfg.MaxInflightBatches {
			p.mu.Unlock()
			p.waitUpTo(timer, ackWait)
			continue
		}
		// Encoding happens here, off the senders' goroutines and straight
		// into the batch buffer; what does not fit waits in pending.
		if len(p.pending) == 0 {
			p.pending = p.q.take(p.spare(), r.cfg.MaxBatchMessages)
		}
		items := p.pending
		p.pending = nil
		st, epoch := p.stream, p.epoch
		p.mu.Unlock()

		batch, rest := p.encodeBatch(&enc, items)
		p.mu.Lock()
		if p.stream != st {
			// The stream failed or the peer went down meanwhile. What we
			// hold was never written: while the peer is up it goes back
			// to the front and waits for the next stream; otherwise it is
			// ours to give up on (the queue was taken by markDown).
			if p.up && !p.stopped && !r.closed.Load() {
				p.pending = append(batch, rest...)
				p.mu.Unlock()
				continue
			}
			p.mu.Unlock()
			p.failItems(append(batch, rest...), errors.New("stream closed while encoding"))
			continue
		}
		p.pending = rest
		if len(batch) == 0 {
			p.mu.Unlock()
			continue
		}
		seq := p.seq
		p.seq++
		// Recorded before it is written: its acknowledgement may arrive
		// before Send returns.
		p.unacked = append(p.unacked, batch)
		p.sentAt = append(p.sentAt, time.Now())
		p.mu.Unlock()

		buf := enc.finish(epoch, seq)
		ctx, cancel := context.WithTimeout(r.ctx, r.cfg.SendTimeout)
		err := st.Send(ctx, buf)
		cancel()
		if err != nil {
			p.streamFailed(st, err)
		} else {
			// The acknowledgement deadline counts from the end of the
			// write, which may have waited for flow control.
			p.mu.Lock()
			if n := len(p.unacked); p.stream == st && n > 0 && &p.unacked[n-1][0] == &batch[0] {
				p.sentAt[n-1] = time.Now()
			}
			p.mu.Unlock()
		}
		if cap(enc.buf) > 2*r.cfg.MaxBatchBytes {
			enc.buf = nil // do not keep a buffer a burst of type names grew
		}
	}
}

// openStream opens a stream on the current connection. If that fails, the
// batch at the head of the queue becomes dead letters (so a peer that keeps
// refusing cannot hold messages forever) and the loop tries again.
func (p *remotePeer) openStream() {
	r := p.r
	ctx, cancel := context.WithTimeout(r.ctx, r.cfg.SendTimeout)
	st, err := r.rpc.OpenStream(ctx, p.id, r.cfg.Protocol)
	cancel()
	if err != nil {
		if r.ctx.Err() != nil {
			return
		}
		p.mu.Lock()
		batch := p.pending
		p.pending = nil
		if len(batch) == 0 {
			batch = p.q.take(nil, r.cfg.MaxBatchMessages)
		}
		p.mu.Unlock()
		p.failItems(batch, err)
		return
	}
	p.mu.Lock()
	if p.stopped || !p.up || st.ConnID() != p.connID {
		// The connection changed while we opened it; the loop retries once
		// the transport's events have caught up (they signal us).
		p.mu.Unlock()
		st.Close()
		t := time.NewTimer(50 * time.Millisecond)
		p.wait(t.C)
		t.Stop()
		return
	}
	p.stream, p.streamConn = st, st.ConnID()
	p.epoch++
	p.seq = 0
	p.mu.Unlock()
	r.wg.Add(1)
	go p.readAcks(st)
}

// readAcks reads st's acknowledgements (the count of batches the peer
// handled on it) and releases the batches they cover.
func (p *remotePeer) readAcks(st transport.Stream) {
	r := p.r
	defer r.wg.Done()
	var acked uint64
	for {
		frame, err := st.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("peer ended the stream")
			}
			p.streamFailed(st, err)
			return
		}
		n, k := protowire.ConsumeVarint(frame)
		p.mu.Lock()
		if p.stream != st {
			p.mu.Unlock()
			return
		}
		if k != len(frame) || n < acked || n-acked > uint64(len(p.unacked)) {
			p.mu.Unlock()
			p.streamFailed(st, fmt.Errorf("bad acknowledgement %x from %s", frame, p.id.Short()))
			return
		}
		done := int(n - acked)
		msgs := 0
		for _, b := range p.unacked[:done] {
			msgs += len(b)
			p.recycle(b)
		}
		clear(p.unacked[:done])
		p.unacked = p.unacked[done:]
		p.sentAt = p.sentAt[done:]
		acked = n
		p.mu.Unlock()
		if done > 0 {
			r.ctr.sent.Add(uint64(msgs))
			r.ctr.batches.Add(uint64(done))
			p.signal()
		}
	}
}

// streamFailed gives up on st if it is still the current stream: its
// unacknowledged batches become dead letters (they may or may not have been
// delivered; they are never resent) and the loop opens a new stream.
func (p *remotePeer) streamFailed(st transport.Stream, err error) {
	p.mu.Lock()
	if p.stream != st {
		p.mu.Unlock()
		st.Close()
		return
	}
	p.stream = nil
	items := p.takeUnackedLocked(nil)
	p.mu.Unlock()
	st.Close()
	p.failItems(items, err)
	p.signal()
}

func (p *remotePeer) failItems(items []outItem, err error) {
	if len(items) == 0 {
		return
	}
	r := p.r
	if r.ctx.Err() == nil {
		r.log.Warn().Str("peer", p.id.Short()).Int("messages", len(items)).Err(err).Msg("batches failed; their messages are dead letters")
	}
	for i := range items {
		r.deadLetter(p, p.id, &items[i], DeadLetterSendFailed, err)
	}
}

// waitUpTo waits for a signal, or at most d if d > 0.
func (p *remotePeer) waitUpTo(timer *time.Timer, d time.Duration) {
	if d <= 0 {
		p.wait(nil)
		return
	}
	timer.Reset(d)
	p.wait(timer.C)
	timer.Stop()
}

func (p *remotePeer) wait(timeout <-chan time.Time) {
	select {
	case <-p.wake:
	case <-p.r.ctx.Done():
	case <-timeout:
	}
}

// outRing is a FIFO of outItems that grows on demand up to a limit.
type outRing struct {
	buf     []outItem
	head, n int
}

func (q *outRing) push(it outItem, limit int) bool {
	if q.n >= limit {
		return false
	}
	if q.n == len(q.buf) {
		size := min(max(2*len(q.buf), 64), limit)
		nb := make([]outItem, size)
		for i := 0; i < q.n; i++ {
			nb[i] = q.buf[(q.head+i)%len(q.buf)]
		}
		q.buf, q.head = nb, 0
	}
	q.buf[(q.head+q.n)%len(q.buf)] = it
	q.n++
	return true
}

func (q *outRing) pop() outItem {
	it := q.buf[q.head]
	q.buf[q.head] = outItem{}
	q.head = (q.head + 1) % len(q.buf)
	q.n--
	return it
}

// spare returns an empty slice to take a batch into, reusing one of an
// acknowledged batch when there is one. Called with p.mu held.
func (p *remotePeer) spare() []outItem {
	if n := len(p.free); n > 0 {
		b := p.free[n-1]
		p.free[n-1] = nil
		p.free = p.free[:n-1]
		return b
	}
	return nil
}

// recycle keeps an acknowledged batch's slice for reuse (cleared, so it
// pins no messages). Called with p.mu held.
func (p *remotePeer) recycle(b []outItem) {
	if len(p.free) < 4 && cap(b) <= p.r.cfg.MaxBatchMessages {
		clear(b[:cap(b)])
		p.free = append(p.free, b[:0])
	}
}

// take moves up to maxN queued items to dst.
func (q *outRing) take(dst []outItem, maxN int) []outItem {
	for q.n > 0 && len(dst) < maxN {
		dst = append(dst, q.pop())
	}
	// Give a ring that grew for a burst back to the collector once empty.
	if q.n == 0 && len(q.buf) > 1024 {
		q.buf, q.head = nil, 0
	}
	return dst
}

// encodeBatch encodes items into enc until MaxBatchBytes is reached and
// returns the items encoded (a new slice: it is kept until acknowledged)
// and those left for the next batch. A message that cannot be serialized,
// or alone exceeds MaxBatchBytes, becomes a dead letter.
func (p *remotePeer) encodeBatch(enc *batchEncoder, items []outItem) (batch, rest []outItem) {
	r := p.r
	enc.reset()
	// Encoded items are compacted to the front of items, which becomes the
	// batch; rest is copied out (it is rare: the batch ran out of bytes).
	batch = items[:0]
	for i := range items {
		mark := enc.mark()
		if err := enc.add(&items[i]); err != nil {
			r.deadLetter(p, p.id, &items[i], DeadLetterUnserializable, err)
			continue
		}
		if enc.frameSize() <= r.cfg.MaxBatchBytes {
			batch = append(batch, items[i])
			continue
		}
		size := enc.frameSize() - mark.buf
		enc.rollback(mark)
		if len(batch) > 0 {
			rest = append([]outItem(nil), items[i:]...)
			clear(items[len(batch):])
			return batch, rest
		}
		r.deadLetter(p, p.id, &items[i], DeadLetterUnserializable, fmt.Errorf("%w: message of %d bytes encoded exceeds MaxBatchBytes %d", ErrMessageTooLarge, size, r.cfg.MaxBatchBytes))
	}
	clear(items[len(batch):])
	return batch, nil
}
