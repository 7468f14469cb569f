package quicremote

import (
	"bytes"
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

// remotePeer is the shell around one peer's outCore: the send loop that
// feeds it events and performs its effects, the goroutines that read the
// peer's acknowledgements, and the lock that lets senders queue from any
// goroutine.
type remotePeer struct {
	r       *Remote
	id      membership.NodeID
	addr    string
	wake    chan struct{}
	retired atomic.Bool

	mu    sync.Mutex
	core  *outCore
	inbox []outEvent // events from other goroutines, for the loop

	// Owned by the loop.
	streams map[uint64]transport.Stream
	enc     batchEncoder

	// A write that has not finished SendTimeout after it began (the peer
	// stopped reading), or when the remote closes, closes its stream. One
	// timer rearmed per write and one hook on the remote's context per
	// peer, rather than a context with a deadline per write: that cost a
	// timer, a context and a cancellation hook per batch, more than the
	// write itself when batches are small.
	watchdog *time.Timer
	wmu      sync.Mutex
	writeOn  transport.Stream // the stream being written to (nil: none)
	expired  bool             // the watchdog closed it
}

func newRemotePeer(r *Remote, id membership.NodeID, up bool, conn uint64, now time.Time) *remotePeer {
	p := &remotePeer{
		r: r, id: id, addr: id.String(),
		wake:    make(chan struct{}, 1),
		core:    newOutCore(outConfigOf(&r.cfg), up, conn, now),
		streams: make(map[uint64]transport.Stream),
		enc:     batchEncoder{r: r},
	}
	p.watchdog = time.AfterFunc(time.Hour, func() { p.abortWrite(true) })
	p.watchdog.Stop()
	return p
}

// abortWrite closes the stream being written to, if any: the write took
// SendTimeout (expired) or the remote closed.
func (p *remotePeer) abortWrite(expired bool) {
	p.wmu.Lock()
	st := p.writeOn
	p.expired = expired && st != nil
	p.wmu.Unlock()
	if st != nil {
		st.Close()
	}
}

func (p *remotePeer) signal() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// post hands an event to the loop.
func (p *remotePeer) post(ev outEvent) {
	p.mu.Lock()
	p.inbox = append(p.inbox, ev)
	p.mu.Unlock()
	p.signal()
}

// enqueue queues it for the peer; it never blocks.
func (p *remotePeer) enqueue(it *outItem) enqResult {
	p.mu.Lock()
	res, wake := p.core.enqueue(it)
	p.mu.Unlock()
	if wake {
		p.signal()
	}
	return res
}

// takeWatch ends the record of watcher's watch on the peer's actor
// watchee, reporting whether there was one.
func (p *remotePeer) takeWatch(watchee string, watcher *actor.PID) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.core.takeWatch(watchee, watcher)
}

// queued is the number of messages waiting to be sent.
func (p *remotePeer) queued() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.core.queued()
}

// run is the peer's send loop, the only goroutine that sends to it: it
// feeds the core what happened and does what the core says, until the
// core stops (the remote closed or the peer left the member set).
func (p *remotePeer) run() {
	r := p.r
	defer r.wg.Done()
	unhook := context.AfterFunc(r.ctx, func() { p.abortWrite(false) })
	defer unhook()
	defer p.watchdog.Stop()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var fx outEffects
	var local, inbox []outEvent // outcomes of our own I/O; events from elsewhere
	var armed time.Time         // when the timer fires (zero: stopped)
	stopping := false
	for {
		fx.reset()
		now := time.Now()
		p.mu.Lock()
		inbox, p.inbox = p.inbox, inbox[:0]
		if !stopping && r.closed.Load() {
			stopping = true
			inbox = append(inbox, outEvent{kind: evStop, reason: DeadLetterClosed})
		}
		for i := range local {
			p.core.Step(&local[i], now, &fx)
		}
		for i := range inbox {
			p.core.Step(&inbox[i], now, &fx)
		}
		if len(local)+len(inbox) == 0 {
			p.core.Step(&outEvent{kind: evTick}, now, &fx)
		}
		p.mu.Unlock()
		clear(local)
		clear(inbox)
		local = p.perform(&fx, local[:0])
		if fx.stopped {
			return
		}
		if len(local) > 0 {
			continue
		}
		// The timer is moved only when the wake-up time changes (under
		// light traffic most rounds keep it); one that fires late or for
		// an old time only makes a round with nothing to do.
		if !fx.wakeAt.Equal(armed) {
			if armed = fx.wakeAt; armed.IsZero() {
				timer.Stop()
			} else {
				timer.Reset(time.Until(armed))
			}
		}
		select {
		case <-p.wake:
		case <-timer.C:
			armed = time.Time{}
		case <-r.ctx.Done():
		}
	}
}

// perform does what fx says, in its documented order, and appends the
// outcomes of its I/O to out.
func (p *remotePeer) perform(fx *outEffects, out []outEvent) []outEvent {
	r := p.r
	var futures []*replyAlias
	if fx.failFutures {
		futures = r.failingAliases(p.id)
	}
	for _, id := range fx.close {
		if st := p.streams[id]; st != nil {
			st.Close()
			delete(p.streams, id)
		}
	}
	for _, d := range fx.dead {
		if d.err != nil && r.ctx.Err() == nil {
			r.log.Warn().Str("peer", p.id.Short()).Int("messages", len(d.items)).Str("reason", d.reason.String()).Err(d.err).Msg("messages given up")
		}
		for i := range d.items {
			r.deadLetter(p, p.id, &d.items[i], d.reason, d.err)
		}
	}
	for _, rec := range fx.watchEnds {
		r.addressTerminated(rec.watcher, rec.watchee)
	}
	r.failFutures(futures, fx.failReason)
	r.ctr.sent.Add(fx.sent)
	r.ctr.batches.Add(fx.batches)
	r.ctr.ackTimeouts.Add(fx.ackTimeouts)
	r.ctr.badAcks.Add(fx.badAcks)
	if fx.gaveUp && !r.members().Contains(p.id) {
		r.retire(p)
	}
	switch {
	case fx.open != 0:
		out = append(out, p.open(fx.open))
	case fx.encode != nil:
		batch, rest := p.encodeBatch(&p.enc, fx.encode)
		out = append(out, outEvent{kind: evEncoded, stream: fx.encodeStream, batch: batch, rest: rest})
	case fx.write:
		out = append(out, outEvent{kind: evWritten, stream: fx.writeStream, err: p.write(fx)})
	}
	return out
}

// open opens stream id on the peer's current connection and starts
// reading its acknowledgements.
func (p *remotePeer) open(id uint64) outEvent {
	r := p.r
	ctx, cancel := context.WithTimeout(r.ctx, r.cfg.SendTimeout)
	st, err := r.rpc.OpenStream(ctx, p.id, r.cfg.Protocol)
	cancel()
	if err != nil {
		if r.ctx.Err() != nil {
			err = errClosedRemote
		}
		return outEvent{kind: evOpened, stream: id, err: err}
	}
	// Acknowledgements are a varint each: the transport refuses anything
	// longer before reading it.
	st.SetRecvLimit(maxAckSize)
	p.streams[id] = st
	r.wg.Add(1)
	go p.readAcks(id, st)
	return outEvent{kind: evOpened, stream: id, conn: st.ConnID()}
}

// write writes the frame encoded last, under the watchdog.
func (p *remotePeer) write(fx *outEffects) error {
	r := p.r
	st := p.streams[fx.writeStream]
	if st == nil {
		return errors.New("stream closed before its write")
	}
	buf := p.enc.finish(fx.writeEpoch, fx.writeSeq)
	p.wmu.Lock()
	p.writeOn, p.expired = st, false
	p.wmu.Unlock()
	if r.ctx.Err() != nil {
		// Closed before the hook could see this write.
		p.wmu.Lock()
		p.writeOn = nil
		p.wmu.Unlock()
		return errClosedRemote
	}
	p.watchdog.Reset(r.cfg.SendTimeout)
	// No context: the watchdog bounds the write, and closing the remote
	// closes the stream.
	err := st.Send(context.Background(), buf)
	p.watchdog.Stop()
	p.wmu.Lock()
	expired := p.expired
	p.writeOn, p.expired = nil, false
	p.wmu.Unlock()
	if expired {
		err = fmt.Errorf("write not finished within %v (SendTimeout): %w", r.cfg.SendTimeout, context.DeadlineExceeded)
	}
	if cap(p.enc.buf) > 2*r.cfg.MaxBatchBytes {
		p.enc.buf = nil // do not keep a buffer a burst of type names grew
	}
	return err
}

// readAcks hands stream id's acknowledgements to the loop until the
// stream fails (as it does when the loop closes it).
func (p *remotePeer) readAcks(id uint64, st transport.Stream) {
	defer p.r.wg.Done()
	for {
		frame, err := st.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("peer ended the stream")
			}
			p.post(outEvent{kind: evStreamFailed, stream: id, err: fmt.Errorf("reading from %s: %w", p.id.Short(), err)})
			return
		}
		// The frame is the transport's until the next Recv; the receive
		// limit keeps it short, and the copy stays short even without.
		if len(frame) > maxAckSize {
			frame = frame[:maxAckSize+1]
		}
		p.post(outEvent{kind: evAck, stream: id, frame: bytes.Clone(frame)})
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

// outQueue is a FIFO of outItems in fixed-size chunks taken from a pool
// shared by every peer: it holds memory in proportion to what it holds
// now, and a burst neither copies what is queued to grow it nor leaves a
// large buffer behind (a ring that grows by doubling did both, and under
// load allocating it was most of the sender's garbage).
type outQueue struct {
	head, tail *itemChunk
	hi, ti     int // next item to take from head; next free slot in tail
	n          int
}

// chunkItems is the number of items in a chunk (64 bytes each).
const chunkItems = 128

type itemChunk struct {
	items [chunkItems]outItem
	next  *itemChunk
}

// chunkPool keeps emptied chunks (cleared, so they pin no messages) for
// any peer's queue; the collector takes those unused for two cycles.
var chunkPool = sync.Pool{New: func() any { return new(itemChunk) }}

func (q *outQueue) push(it *outItem, limit int) bool {
	if q.n >= limit {
		return false
	}
	switch {
	case q.tail == nil:
		q.head = chunkPool.Get().(*itemChunk)
		q.tail, q.hi, q.ti = q.head, 0, 0
	case q.ti == chunkItems:
		c := chunkPool.Get().(*itemChunk)
		q.tail.next, q.tail, q.ti = c, c, 0
	}
	q.tail.items[q.ti] = *it
	q.ti++
	q.n++
	return true
}

// take moves queued items to dst until dst holds maxN, a chunk's run at a
// time.
func (q *outQueue) take(dst []outItem, maxN int) []outItem {
	for q.n > 0 && len(dst) < maxN {
		end := chunkItems
		if q.head == q.tail {
			end = q.ti
		}
		k := min(end-q.hi, maxN-len(dst))
		run := q.head.items[q.hi : q.hi+k]
		dst = append(dst, run...)
		clear(run)
		q.hi += k
		q.n -= k
		if q.hi == end {
			// The head chunk is drained: back to the pool (the tail
			// too once empty, so that an idle peer holds none).
			old := q.head
			q.head, q.hi = old.next, 0
			old.next = nil
			if q.head == nil {
				q.tail, q.ti = nil, 0
			}
			chunkPool.Put(old)
		}
	}
	return dst
}

// Batch slices (the messages of a batch, kept until it is acknowledged)
// come from pools by capacity class, 64 × 4^i items, and go back once
// acknowledged: under load every batch needs one, and up to
// MaxInflightBatches are held at once.
const (
	batchClassMin = 64
	batchClasses  = 6 // up to 64 × 4^5 = 65,536 items
)

var batchPools [batchClasses]sync.Pool

// batchClass is the smallest class that holds n items, or -1 beyond the
// largest.
func batchClass(n int) int {
	c, size := 0, batchClassMin
	for size < n {
		c, size = c+1, size*4
	}
	if c >= batchClasses {
		return -1
	}
	return c
}

// getItems returns an empty slice with room for n items.
func getItems(n int) []outItem {
	c := batchClass(n)
	if c < 0 {
		return make([]outItem, 0, n)
	}
	if b, ok := batchPools[c].Get().(*[]outItem); ok {
		return (*b)[:0]
	}
	return make([]outItem, 0, batchClassMin<<(2*c))
}

// putItems gives b back for reuse, cleared so that it pins no messages
// (what lies beyond its length was never written or was cleared when the
// batch was compacted). Only slices from getItems fit a class exactly;
// others are left to the collector.
func putItems(b []outItem) {
	c := batchClass(cap(b))
	if c < 0 || cap(b) != batchClassMin<<(2*c) {
		return
	}
	clear(b)
	b = b[:0]
	batchPools[c].Put(&b)
}

// encodeBatch encodes items into enc until MaxBatchBytes is reached and
// returns the items encoded (compacted to the front of items, whose array
// is kept until the batch is acknowledged) and those left for the next
// batch. A message that cannot be serialized, whose serializer panics, or
// that alone exceeds MaxBatchBytes, becomes a dead letter.
func (p *remotePeer) encodeBatch(enc *batchEncoder, items []outItem) (batch, rest []outItem) {
	enc.reset()
	batch = items[:0]
	for i := 0; i < len(items) && rest == nil; {
		i, batch, rest = p.encodeFrom(enc, items, i, batch)
	}
	clear(items[len(batch):])
	return batch, rest
}

// encodeFrom is encodeBatch from items[i] on, appending to batch, until the
// items run out, the batch is full (rest: a copy of the items left; it is
// rare) or a serializer panics: then that message is a dead letter and
// next is the one after it. The panic is recovered here, once per run of
// messages, not once per message.
func (p *remotePeer) encodeFrom(enc *batchEncoder, items []outItem, i int, batch []outItem) (next int, out, rest []outItem) {
	r := p.r
	out = batch
	mark := enc.mark()
	serializing := false
	defer func() {
		if !serializing {
			return
		}
		v := recover()
		enc.undo(mark)
		r.deadLetter(p, p.id, &items[i], DeadLetterUnserializable, fmt.Errorf("serializer panicked on %T: %v", items[i].msg, v))
		next = i + 1
	}()
	for ; i < len(items); i++ {
		mark = enc.mark()
		serializing = true
		err := enc.add(&items[i])
		serializing = false
		if err != nil {
			r.deadLetter(p, p.id, &items[i], DeadLetterUnserializable, err)
			continue
		}
		if enc.frameSize() <= r.cfg.MaxBatchBytes {
			out = append(out, items[i])
			continue
		}
		size := enc.frameSize() - mark.buf
		enc.rollback(mark)
		if len(out) > 0 {
			return i, out, append(getItems(len(items)-i), items[i:]...)
		}
		r.deadLetter(p, p.id, &items[i], DeadLetterUnserializable, fmt.Errorf("%w: message of %d bytes encoded exceeds MaxBatchBytes %d", ErrMessageTooLarge, size, r.cfg.MaxBatchBytes))
	}
	return i, out, nil
}
