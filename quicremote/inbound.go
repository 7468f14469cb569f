package quicremote

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/abcast/abcast/quicremote/transport"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/abcast/abcast/membership"
	"github.com/abcast/abcast/proto/abcastpb"
)

// serveStream serves one peer's stream of batches (one per connection,
// normally): each frame is one ActorBatch, delivered in order, and the
// count of frames handled so far is sent back as acknowledgements (a
// varint each, when inCore says). An undecodable batch ends the stream
// with an error: the sender makes the messages it has not seen
// acknowledged dead letters and opens a new one.
func (r *Remote) serveStream(ctx context.Context, peer membership.NodeID, s transport.Stream) error {
	if r.closed.Load() {
		return errClosedRemote
	}
	// A batch is at most MaxBatchBytes (every node uses the same): the
	// transport refuses a larger frame before reading it.
	s.SetRecvLimit(r.cfg.MaxBatchBytes)
	// Closing the remote ends its incoming streams.
	stopOnClose := context.AfterFunc(r.ctx, s.Close)
	defer stopOnClose()
	in := &inStream{
		r: r, peer: peer, peerAddr: peer.String(), connID: s.ConnID(), order: r.orderFor(peer),
		dec: &batchDecoder{r: r}, core: inCore{cfg: inConfigOf(&r.cfg)}, kick: make(chan struct{}, 1),
	}
	in.ackTimer = time.AfterFunc(time.Hour, in.wakeWriter)
	in.ackTimer.Stop()
	defer in.ackTimer.Stop()
	// The writer stops when the handler returns, after any acknowledgement
	// it is writing: cancelling that write would reset the stream with a
	// code of its own before the handler's error reached the peer.
	stopAcks := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		in.writeAcks(ctx, stopAcks, s)
	}()
	defer func() {
		close(stopAcks)
		wg.Wait()
	}()
	for {
		frame, err := s.Recv()
		if err != nil {
			return nil // the stream is gone (io.EOF or not); nothing to answer
		}
		if r.closed.Load() {
			return errClosedRemote
		}
		if err := in.handleBatch(ctx, frame); err != nil {
			return err
		}
		var fx inEffects
		in.mu.Lock()
		in.core.Step(&inEvent{kind: inBatchDone}, time.Now(), &fx)
		if fx.ack {
			in.ackNow, in.ackN = true, fx.ackN
		}
		in.mu.Unlock()
		// The writer is woken for an acknowledgement due now, or by the
		// timer for a delayed one; a new delay only sets the timer. Under
		// light traffic (a request, an answer) waking the writer per batch
		// put a goroutine switch in front of the message's handling.
		switch {
		case fx.ack:
			in.wakeWriter()
		case fx.arm:
			in.ackTimer.Reset(time.Until(fx.ackAt))
		}
	}
}

// wakeWriter tells writeAcks to look.
func (in *inStream) wakeWriter() {
	select {
	case in.kick <- struct{}{}:
	default:
	}
}

// inStream is the shell of one incoming stream: the goroutine that reads
// and delivers batches (serveStream) and the one that writes
// acknowledgements (writeAcks) share its core.
type inStream struct {
	r        *Remote
	peer     membership.NodeID
	peerAddr string
	connID   uint64
	order    *inboundOrder
	dec      *batchDecoder

	// credit is reserved from the peer's budget (RPC.Reserve) and not
	// charged to a decoded message now; it is given back after each batch.
	credit int
	// owed are the charges of this batch's messages now waiting in
	// mailboxes, handed to the ledger at the end of the batch.
	owed []owedCharge

	// mu guards core's acknowledgement part, which the reader and the
	// writer share; its backlog part is the reader's alone (see inCore).
	mu     sync.Mutex
	core   inCore
	ackNow bool // an acknowledgement of ackN waits for writeAcks
	ackN   uint64
	kick   chan struct{}
	// ackTimer wakes the writer when a delayed acknowledgement is due.
	ackTimer *time.Timer
}

// writeAcks writes the stream's acknowledgements until stop is closed, ctx
// (the handler's) ends or a write fails: the ones inCore wanted at once,
// and the delayed ones when their time comes.
func (in *inStream) writeAcks(ctx context.Context, stop <-chan struct{}, s transport.Stream) {
	var buf []byte
	for {
		select {
		case <-in.kick:
		case <-stop:
			return
		case <-ctx.Done():
			return
		}
		var fx inEffects
		in.mu.Lock()
		in.core.Step(&inEvent{kind: inTick}, time.Now(), &fx)
		send, n := in.ackNow || fx.ack, max(in.ackN, fx.ackN)
		in.ackNow = false
		in.mu.Unlock()
		if !fx.ackAt.IsZero() {
			// Woken before the delay ended (the timer is shared with
			// the reader, which may have moved it): wait again.
			in.ackTimer.Reset(time.Until(fx.ackAt))
		}
		if send {
			buf = protowire.AppendVarint(buf[:0], n)
			if s.Send(ctx, buf) != nil {
				return
			}
		}
	}
}

// handleBatch decodes and delivers one incoming batch. A stale batch (its
// connection or epoch superseded) is counted and dropped; a malformed one
// is an error and nothing of it is delivered.
func (in *inStream) handleBatch(ctx context.Context, frame []byte) error {
	r, d := in.r, in.dec
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
		r.log.Warn().Str("peer", in.peer.Short()).Err(err).Int("bytes", len(frame)).Msg("undecodable batch")
		return fmt.Errorf("undecodable batch from %s: %w", in.peer.Short(), err)
	}
	if err := in.order.waitTurn(ctx, in.connID, b.epoch, b.seq); err != nil {
		if ctx.Err() != nil {
			return err
		}
		r.ctr.staleBatches.Add(1)
		return nil
	}
	// Holding the turn while delivering holds up only this peer's next
	// batch, which must wait anyway. The turn is handed on even if a
	// delivery panics (an OnDeadLetter hook, say).
	defer in.order.done()
	defer in.releaseCredit()
	defer in.handOver()
	in.core.Step(&inEvent{kind: inBatchStart}, time.Now(), &inEffects{}) // the backlog part, no lock
	for i := range d.envs {
		in.deliver(ctx, &d.envs[i])
	}
	return nil
}

// orderFor returns the incoming batch order of peer.
func (r *Remote) orderFor(peer membership.NodeID) *inboundOrder {
	r.mu.Lock()
	defer r.mu.Unlock()
	o := r.orders[peer]
	if o == nil {
		o = &inboundOrder{}
		r.orders[peer] = o
	}
	return o
}

var errStaleBatch = errors.New("batch out of date (a newer epoch or connection has started)")

// inboundOrder is the shell of one peer's orderCore, shared by the peer's
// streams: a batch that must wait for its turn waits for the turn to move.
type inboundOrder struct {
	mu      sync.Mutex
	core    orderCore
	changed chan struct{} // closed when the turn moves, if a batch waits (nil: none does)
}

// moveLocked tells the waiting batches that the turn moved. Normally
// none waits (one stream per peer), and no channel is made.
func (o *inboundOrder) moveLocked() {
	if o.changed != nil {
		close(o.changed)
		o.changed = nil
	}
}

// waitTurn waits until batch seq of (connID, epoch) has the turn, or
// reports errStaleBatch.
func (o *inboundOrder) waitTurn(ctx context.Context, connID, epoch, seq uint64) error {
	o.mu.Lock()
	for {
		verdict, moved := o.core.admit(connID, epoch, seq)
		if moved {
			o.moveLocked()
		}
		switch verdict {
		case orderGo:
			o.mu.Unlock()
			return nil
		case orderStale:
			o.mu.Unlock()
			return errStaleBatch
		}
		if o.changed == nil {
			o.changed = make(chan struct{})
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

// done hands the turn on.
func (o *inboundOrder) done() {
	o.mu.Lock()
	o.core.finish()
	o.moveLocked()
	o.mu.Unlock()
}

// chargeChunk is how much of the peer's budget a stream reserves at a
// time for decoded messages: the transport's budget is behind a lock, and
// reserving each message's few hundred bytes on its own cost more than
// decoding it. At most this much is reserved beyond what is held, per
// stream, until the end of the batch.
const chargeChunk = 64 << 10

// charge takes n bytes for a decoded message from the stream's credit,
// reserving more from the peer's budget when it runs short; false if the
// budget cannot take them.
func (in *inStream) charge(n int) bool {
	if n <= in.credit {
		in.credit -= n
		return true
	}
	need := n - in.credit
	if in.r.rpc.Reserve(in.peer, max(need, chargeChunk)) {
		in.credit += max(need, chargeChunk) - n
		return true
	}
	if in.r.rpc.Reserve(in.peer, need) {
		in.credit = 0
		return true
	}
	return false
}

// uncharge gives n charged bytes back to the credit once the message is
// handed on.
func (in *inStream) uncharge(n int) { in.credit += n }

// owe keeps the n charged bytes of a message now waiting in proc's
// mailbox charged to the peer: the ledger gives them back once the actor
// took it.
func (in *inStream) owe(id string, proc actor.Process, mb actor.Mailbox, n int) {
	in.owed = append(in.owed, owedCharge{id: id, proc: proc, mb: mb, queuedCharge: queuedCharge{peer: in.peer, cost: n, n: 1}})
}

// handOver gives the batch's waiting messages' charges to the ledger.
func (in *inStream) handOver() {
	in.r.ledger.add(in.owed)
	clear(in.owed)
	in.owed = in.owed[:0]
}

// releaseCredit gives the credit back to the peer's budget.
func (in *inStream) releaseCredit() {
	if in.credit > 0 {
		in.r.rpc.Release(in.peer, in.credit)
		in.credit = 0
	}
}

// incoming is one envelope being delivered.
type incoming struct {
	env    *rawEnvelope
	target *actor.PID
	sender *actor.PID
	proc   actor.Process
}

// deliver hands one envelope to its local process, after the checks that
// say whether the sending peer may send it there (see Remote's
// documentation, "Who may send what"), waiting while the target's mailbox
// is full, and within the decoding limits.
func (in *inStream) deliver(ctx context.Context, env *rawEnvelope) {
	r, d := in.r, in.dec
	t := d.target(env)
	m := incoming{env: env, target: &t.pid}
	if len(env.senderID) > 0 {
		addr := in.peerAddr
		if len(env.senderAddr) > 0 {
			addr = string(env.senderAddr)
		}
		m.sender = &actor.PID{Address: addr, Id: string(env.senderID), RequestId: env.senderReq}
	}
	id := m.target.Id
	hidden := false
	switch {
	case t.kind == targetReply:
		in.deliverReply(&m)
		return
	case t.kind == targetActivator && !env.system:
		in.deliverSpawn(&m)
		return
	case t.kind == targetFuture:
		// A future is answered through its alias only; the one system
		// message for it is a Terminated ending its watch (StopFuture),
		// checked in deliverSystem.
		if !env.system {
			in.refuseReply(&m, "addressed to a future's own id")
			return
		}
	case t.isHidden(r):
		// A hidden system message is decoded all the same: a Watch is
		// answered as for an actor that does not exist.
		if !env.system {
			in.refuse(&m, nil, DeadLetterHidden, nil)
			return
		}
		hidden = true
	}
	var found bool
	m.proc, found = t.process(r)
	if !found && !env.system && !hidden {
		// Refused here rather than by the dead-letter process, so that
		// the sender learns why.
		in.refuse(&m, nil, DeadLetterNotFound, nil)
		return
	}
	var mb actor.Mailbox
	if !env.system && !hidden {
		if mb = mailboxOf(m.proc); mb != nil && !in.awaitBacklog(ctx, id, mb) {
			in.refuse(&m, nil, DeadLetterTargetBusy, nil)
			return
		}
	}
	msg, cost, ok := in.decode(&m)
	if !ok {
		return
	}
	queued := false // its charge went to the ledger
	defer func() {
		if !queued {
			in.uncharge(cost)
		}
	}()
	if _, ends := msg.(*actor.Terminated); hidden && !ends {
		// A hidden actor still learns that an actor it watches ended
		// (deliverSystem checks the watch); nothing else reaches it.
		in.refuse(&m, msg, DeadLetterHidden, nil)
		return
	}
	if env.system {
		in.deliverSystem(&m, msg)
		return
	}
	switch v := msg.(type) {
	case *abcastpb.RemoteDeadLetter:
		// A peer's refusal, for an actor here that asked: protoactor's
		// own answer.
		msg = &actor.DeadLetterResponse{Target: &actor.PID{Address: in.peerAddr, Id: v.TargetId}}
	case *actor.Watch, *actor.Unwatch, *actor.Terminated, *actor.Stop:
		// An actor sees these in Receive like the system's own: as user
		// messages they would be a forged watch or termination.
		in.refuseSystem(&m, msg, "system message sent as a user message")
		return
	case *actor.PoisonPill:
		if !r.mayStop(in.peer, id) {
			in.refuseSystem(&m, msg, "PoisonPill without the right to stop")
			return
		}
	}
	if m.sender != nil || len(env.header) > 0 {
		msg = &actor.MessageEnvelope{Header: env.header, Message: msg, Sender: m.sender}
	}
	r.ctr.received.Add(1)
	m.proc.SendUserMessage(m.target, msg)
	if mb != nil && cost > 0 {
		in.owe(id, m.proc, mb, cost)
		queued = true
	}
}

// decode decodes m's payload within the limits, charging its decoded size
// to the peer's budget (the caller releases cost once the message is
// handed on). A message that fails is counted and refused.
func (in *inStream) decode(m *incoming) (msg any, cost int, ok bool) {
	r := in.r
	plan, err := in.dec.plan(m.env)
	// Before refusing for want of budget, the ledger gives back what
	// mailboxes no longer hold.
	if err == nil && !in.charge(plan.cost) && (r.ledger.settle() == 0 || !in.charge(plan.cost)) {
		err = fmt.Errorf("%w: %d bytes decoded exceed what %s's memory budget has left", errDecodeLimit, plan.cost, in.peer.Short())
	}
	if err == nil {
		if msg, err = in.dec.finish(&plan, m.env); err == nil {
			return msg, plan.cost, true
		}
		in.uncharge(plan.cost)
	}
	reason := DeadLetterUndecodable
	switch {
	case errors.Is(err, errDecodeLimit):
		reason = DeadLetterDecodeLimit
	case errors.Is(err, ErrUnknownMessageType):
		r.ctr.unknownTypes.Add(1)
	default:
		r.ctr.badPayloads.Add(1)
	}
	r.log.Debug().Str("peer", in.peer.Short()).Bytes("type", plan.name).Int32("serializer", m.env.serializer).Err(err).Msg("undecodable message")
	in.refuse(m, nil, reason, err)
	return nil, 0, false
}

// refuse gives up on an incoming message: counted by reason, reported to
// OnDeadLetter, and answered so that no one waits for it in vain: a
// request's sender gets a DeadLetterResponse, the watcher of a hidden
// actor a Terminated NotFound.
func (in *inStream) refuse(m *incoming, msg any, reason DeadLetterReason, err error) {
	r := in.r
	r.ctr.dead[reason].Add(1)
	if e := r.log.Debug(); e.Enabled() {
		e.Str("peer", in.peer.Short()).Str("target", m.target.Id).Str("reason", reason.String()).
			Str("type", fmt.Sprintf("%T", msg)).AnErr("err", err).Msg("incoming message refused")
	}
	if h := r.cfg.OnDeadLetter; h != nil {
		h(DeadLetter{Peer: in.peer, Target: m.target, Sender: m.sender, Message: msg, System: m.env.system, Reason: reason, Err: err})
	}
	if w, ok := msg.(*actor.Watch); ok && m.env.system && reason == DeadLetterHidden {
		if fixAddress(w.Watcher, in.peerAddr); w.Watcher != nil && w.Watcher.Address == in.peerAddr {
			r.sendSystem(w.Watcher, &actor.Terminated{Who: m.target, Why: actor.TerminatedReason_NotFound})
		}
		return
	}
	if m.sender != nil && !m.env.system {
		r.system.Root.Send(m.sender, remoteDeadLetterReply(m.target, reason))
	}
}

// fixAddress gives a PID that a peer sent without a reachable address (its
// system had no remote when the PID was made) the peer's address.
func fixAddress(pid *actor.PID, peerAddr string) {
	if pid != nil && (pid.Address == "" || pid.Address == protoactorLocalAddress) {
		pid.Address = peerAddr
	}
}

// refuseSystem refuses a watch, termination or stop the peer had no right
// to send.
func (in *inStream) refuseSystem(m *incoming, msg any, why string) {
	in.r.ctr.refusedSystem.Add(1)
	in.refuse(m, msg, DeadLetterRefused, errors.New(why))
}

// refuseReply refuses a message to a local future that did not come the
// way the future's answer must: counted, and not answered (it is itself
// an answer).
func (in *inStream) refuseReply(m *incoming, why string) {
	r := in.r
	r.ctr.forgedReplies.Add(1)
	r.ctr.dead[DeadLetterRefused].Add(1)
	r.log.Debug().Str("peer", in.peer.Short()).Str("target", m.target.Id).Str("why", why).Msg("reply refused")
	if h := r.cfg.OnDeadLetter; h != nil {
		h(DeadLetter{Peer: in.peer, Target: m.target, Sender: m.sender, System: m.env.system, Reason: DeadLetterRefused, Err: errors.New(why)})
	}
}

// deliverReply hands a reply to the future behind an alias, if the alias
// was given to this peer and has not been answered yet.
func (in *inStream) deliverReply(m *incoming) {
	a := in.r.alias(m.target.Id)
	switch {
	case m.env.system:
		in.refuseReply(m, "system message to a reply alias")
		return
	case a == nil:
		in.refuseReply(m, "unknown or answered reply alias")
		return
	case a.peer != in.peer:
		in.refuseReply(m, "reply alias of a request sent to another member")
		return
	}
	msg, cost, ok := in.decode(m)
	if !ok {
		return
	}
	defer in.uncharge(cost)
	if dl, ok := msg.(*abcastpb.RemoteDeadLetter); ok {
		// The peer refused the request: the future fails as with
		// protoactor's own dead letters, and Result can say why.
		target := &actor.PID{Address: in.peerAddr, Id: dl.TargetId}
		if !a.done.Load() {
			in.r.noteFutureFailed(a.future, in.peer, target, reasonFromWire(dl.Reason), true)
		}
		msg = &actor.DeadLetterResponse{Target: target}
	}
	if m.sender != nil || len(m.env.header) > 0 {
		msg = &actor.MessageEnvelope{Header: m.env.header, Message: msg, Sender: m.sender}
	}
	if !a.answer(msg) {
		in.refuseReply(m, "reply alias answered meanwhile")
		return
	}
	in.r.ctr.received.Add(1)
}

// deliverSystem delivers a system message the peer has the right to send:
//   - Watch and Unwatch only for a watcher of its own;
//   - Terminated only for one of its own actors, ending a watch this node
//     made on it (one it did not make, or that already ended with
//     AddressTerminated, is dropped as stale);
//   - Stop only where mayStop allows.
//
// A future takes nothing but the Terminated that ends its watch.
func (in *inStream) deliverSystem(m *incoming, msg any) {
	r := in.r
	future := strings.HasPrefix(m.target.Id, futurePrefix)
	switch v := msg.(type) {
	case *actor.Watch:
		if fixAddress(v.Watcher, in.peerAddr); future || v.Watcher == nil || v.Watcher.Address != in.peerAddr {
			in.refuseSystem(m, msg, "Watch for a watcher on another node")
			return
		}
		if !r.watches.add(in.peer, m.target.Id, v.Watcher.Id, r.cfg.MaxWatchesPerPeer) {
			r.ctr.watchesRefused.Add(1)
			in.refuse(m, msg, DeadLetterRefused, errTooManyWatches)
			return
		}
	case *actor.Unwatch:
		if fixAddress(v.Watcher, in.peerAddr); future || v.Watcher == nil || v.Watcher.Address != in.peerAddr {
			in.refuseSystem(m, msg, "Unwatch for a watcher on another node")
			return
		}
		r.watches.remove(in.peer, m.target.Id, v.Watcher.Id)
	case *actor.Terminated:
		if fixAddress(v.Who, in.peerAddr); v.Who == nil || v.Who.Address != in.peerAddr {
			in.refuseSystem(m, msg, "Terminated for an actor on another node")
			return
		}
		if !r.endWatch(in.peer, v.Who, m.target) {
			r.ctr.staleTerminated.Add(1)
			return
		}
	case *actor.Stop:
		if future || !r.mayStop(in.peer, m.target.Id) {
			in.refuseSystem(m, msg, "Stop without the right to stop")
			return
		}
		r.ctr.received.Add(1)
		m.proc.Stop(m.target)
		return
	default:
		r.ctr.badPayloads.Add(1)
		in.refuse(m, msg, DeadLetterUndecodable, fmt.Errorf("%T is not a system message the remote carries", msg))
		return
	}
	r.ctr.received.Add(1)
	m.proc.SendSystemMessage(m.target, msg)
}

// mayStop reports whether peer may stop (Stop, PoisonPill) the local actor
// id: with AllowRemoteStop, or if it spawned the actor or an ancestor.
func (r *Remote) mayStop(peer membership.NodeID, id string) bool {
	return r.cfg.AllowRemoteStop || r.spawnedBy(peer, id)
}

// deliverSpawn serves a peer's ActorSpawnRequest and answers its sender.
func (in *inStream) deliverSpawn(m *incoming) {
	msg, cost, ok := in.decode(m)
	if !ok {
		return
	}
	in.uncharge(cost)
	req, isReq := msg.(*abcastpb.ActorSpawnRequest)
	if !isReq || m.sender == nil {
		in.refuse(m, msg, DeadLetterRefused, errors.New("the remote takes only spawn requests with a sender"))
		return
	}
	in.r.ctr.received.Add(1)
	in.r.system.Root.Send(m.sender, in.r.spawnFor(in.peer, req))
}

// sendSystem sends a system message to pid, local or remote.
func (r *Remote) sendSystem(pid *actor.PID, msg any) {
	proc, _ := r.system.ProcessRegistry.Get(pid)
	proc.SendSystemMessage(pid, msg)
}

// endWatch removes the record of watcher's watch on who, an actor of
// peer, reporting whether there was one.
func (r *Remote) endWatch(peer membership.NodeID, who, watcher *actor.PID) bool {
	p := r.existingPeer(peer)
	return p != nil && p.takeWatch(who.Id, watcher)
}

// awaitBacklog asks inCore whether a user message for id, whose mailbox
// is mb, may be delivered, and waits (polling the mailbox: protoactor says
// nothing when it drains) while the core says to wait. Waiting here stops
// this stream's reading, so QUIC flow control pushes back on the sender.
func (in *inStream) awaitBacklog(ctx context.Context, id string, mb actor.Mailbox) bool {
	ev := inEvent{kind: inBacklog, target: id}
	pause := 100 * time.Microsecond
	limit := in.r.cfg.MaxTargetBacklog
	for {
		ev.queued = mb.UserMessageCount()
		// The core reads the time only at the bound; below it, the
		// clock (tens of nanoseconds a message) is not read.
		var now time.Time
		if ev.queued >= limit {
			now = time.Now()
		}
		var fx inEffects
		in.core.Step(&ev, now, &fx) // the backlog part: this goroutine's alone (inCore)
		if fx.stall {
			in.r.ctr.backlogStalls.Add(1)
		}
		switch fx.answer {
		case backlogDeliver:
			return true
		case backlogRefuse:
			return false
		}
		ev.retry = true
		t := time.NewTimer(min(pause, time.Until(fx.until)))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return false
		}
		pause = min(2*pause, 10*time.Millisecond)
	}
}
