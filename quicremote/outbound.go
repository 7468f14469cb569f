package quicremote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/abcast/abcast/quicremote/transport"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/abcast/abcast/membership"
)

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
	futures []*replyAlias
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
	futures := p.r.failingAliases(p.id)
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
func (p *remotePeer) takeAllLocked(reason DeadLetterReason, futures []*replyAlias) downWork {
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
// futures. The futures' aliases were claimed when w was made, so a
// queued request's dead letter does not answer its future a second time.
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
			w.futures = r.failingAliases(p.id)
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
		p.mu.Lock()
		if p.stream != st {
			p.mu.Unlock()
			return
		}
		done, err := parseAck(frame, acked, len(p.unacked))
		if err != nil {
			p.mu.Unlock()
			r.ctr.badAcks.Add(1)
			p.streamFailed(st, fmt.Errorf("acknowledgement from %s: %w", p.id.Short(), err))
			return
		}
		n := acked + uint64(done)
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

// maxAckSize is the longest acknowledgement: a varint of 64 bits.
const maxAckSize = 10

var errBadAck = errors.New("bad acknowledgement")

// parseAck reads an acknowledgement frame, the count of batches the peer
// has handled on the stream, given the count acked before and the number
// of batches awaiting acknowledgement; it returns how many of those the
// frame acknowledges. A frame that is not exactly one varint of at most
// maxAckSize bytes, goes back, or acknowledges more than was sent is an
// error: the peer is broken or hostile, and the stream is failed.
func parseAck(frame []byte, acked uint64, unacked int) (int, error) {
	if len(frame) > maxAckSize {
		return 0, fmt.Errorf("%w: %d bytes, at most %d", errBadAck, len(frame), maxAckSize)
	}
	n, k := protowire.ConsumeVarint(frame)
	if k != len(frame) {
		return 0, fmt.Errorf("%w: %x is not one varint", errBadAck, frame)
	}
	if n < acked || n-acked > uint64(unacked) {
		return 0, fmt.Errorf("%w: %d batches after %d, with %d awaiting", errBadAck, n, acked, unacked)
	}
	return int(n - acked), nil
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
