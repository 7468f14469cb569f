package actors

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/membership"
	"github.com/abcast/abcast/quicremote/transport"
)

// Small slot updates of one (channel, peer) ride one long-lived stream
// (protocol "abcast/<channel>/updates") instead of a stream each: a stream
// per message tops out near 20-30 k/s and costs a handler start and a
// response each, which is what limited small artifacts. Updates larger
// than maxStreamedUpdate (latency-sensitive pushes) keep a cancellable
// stream each.
//
// Sender → receiver frames are batches of consecutive updates, each with
// its sequence number (1, 2, ... on each stream); receiver → sender frames
// acknowledge every update up to a sequence number, naming those it
// refused with the reason, so the sender core still learns Acked or Failed
// per token. The abort rule holds: an update cancelled (superseded or
// aborted) while it waits to be written is never written; one already
// written is forgotten (its acknowledgement is ignored), because the
// stream carries others and cannot be reset for one — it is at most a few
// KiB that left before the abort, and the newer state follows it.
//
// Bounds: a batch frame is at most maxBatchBytes and maxBatchEntries, an
// acknowledgement frame at most maxAckBytes (each side sets its receive
// limit, and what it holds counts against the peer's transport budget);
// the receiver handles one frame at a time, so a peer holds at most one
// batch of ours in memory per stream, and at most updateStreamsPerPeer
// streams per channel.
const (
	maxStreamedUpdate    = 16 << 10
	maxBatchBytes        = 64 << 10
	maxBatchEntries      = 256
	maxAckError          = 128
	maxAckBytes          = 2*binaryVarintLen + maxBatchEntries*(2*binaryVarintLen+maxAckError)
	binaryVarintLen      = 10
	updateStreamsPerPeer = 2
	// streamRefusedPause is how long a link sends each update on its own
	// stream after the peer refused the update stream (a peer without it).
	streamRefusedPause = 30 * time.Second
)

// errUpdateStream reports that the update stream failed before the update
// was acknowledged; the sender core retries it.
var errUpdateStream = errors.New("update stream failed")

// streamedUpdate is one update of a link's stream.
type streamedUpdate struct {
	tok       broadcast.Token
	data      []byte
	seq       uint64 // 0 while it waits to be written
	timer     *time.Timer
	cancelled bool
}

// updateStream is a link's stream to its peer: updates wait in queue
// until the writer takes them, then in flight until acknowledged.
type updateStream struct {
	c      *Channel
	peer   membership.NodeID
	report func(tok broadcast.Token, err error, bytes int)

	ctx    context.Context
	cancel context.CancelFunc
	wake   chan struct{}

	mu      sync.Mutex
	queue   []*streamedUpdate
	flight  []*streamedUpdate // in sequence order
	byTok   map[broadcast.Token]*streamedUpdate
	nextSeq uint64
	err     error // set once the stream failed; nothing is accepted after
	// refused is set when the peer refused the stream itself.
	refused bool
}

func newUpdateStream(c *Channel, peer membership.NodeID, report func(broadcast.Token, error, int)) *updateStream {
	ctx, cancel := context.WithCancel(c.n.ctx)
	s := &updateStream{c: c, peer: peer, report: report, ctx: ctx, cancel: cancel, wake: make(chan struct{}, 1),
		byTok: make(map[broadcast.Token]*streamedUpdate), nextSeq: 1}
	c.n.goTracked(s.run)
	return s
}

// send queues data for tok with the core's timeout; false if the stream
// has failed (the caller uses another).
func (s *updateStream) send(tok broadcast.Token, data []byte, timeout time.Duration) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return false
	}
	u := &streamedUpdate{tok: tok, data: data}
	u.timer = time.AfterFunc(timeout, func() { s.timedOut(u) })
	s.queue = append(s.queue, u)
	s.byTok[tok] = u
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return true
}

// cancelTok forgets tok: never written if it still waits, its
// acknowledgement ignored if it is in flight. It reports whether the
// stream knew tok.
func (s *updateStream) cancelTok(tok broadcast.Token) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.byTok[tok]
	if !ok {
		return false
	}
	delete(s.byTok, tok)
	u.timer.Stop()
	u.cancelled = true
	if u.seq == 0 {
		for i, q := range s.queue {
			if q == u {
				s.queue = append(s.queue[:i], s.queue[i+1:]...)
				break
			}
		}
	}
	return true
}

// timedOut fails an update the peer did not acknowledge in time: one
// still waiting alone, one in flight with the whole stream (the peer, or
// the path to it, is stuck, and so is everything behind it).
func (s *updateStream) timedOut(u *streamedUpdate) {
	s.mu.Lock()
	if u.cancelled || s.byTok[u.tok] != u {
		s.mu.Unlock()
		return
	}
	if u.seq == 0 {
		s.mu.Unlock()
		if s.cancelTok(u.tok) {
			s.report(u.tok, fmt.Errorf("update to %s: %w", s.peer.Short(), context.DeadlineExceeded), 0)
		}
		return
	}
	s.mu.Unlock()
	s.fail(fmt.Errorf("update to %s: no acknowledgement in time: %w", s.peer.Short(), context.DeadlineExceeded))
}

// close ends the stream, failing what it holds.
func (s *updateStream) close() { s.fail(errUpdateStream) }

// fail ends the stream once and reports every update it still held.
func (s *updateStream) fail(err error) {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return
	}
	s.err = err
	var lost []*streamedUpdate
	lost = append(lost, s.flight...)
	lost = append(lost, s.queue...)
	s.queue, s.flight = nil, nil
	clear(s.byTok)
	s.mu.Unlock()
	s.cancel()
	for _, u := range lost {
		u.timer.Stop()
		if !u.cancelled {
			s.report(u.tok, fmt.Errorf("update to %s: %w: %w", s.peer.Short(), errUpdateStream, err), 0)
		}
	}
}

func (s *updateStream) failed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err != nil
}

// run opens the stream, then writes batches while a reader takes the
// acknowledgements.
func (s *updateStream) run() {
	octx, ocancel := context.WithTimeout(s.ctx, s.c.n.cfg.HandlerTimeout)
	str, err := s.c.n.rpc.OpenStream(octx, s.peer, s.c.updatesProto)
	ocancel()
	if err != nil {
		if errors.Is(err, transport.ErrRefused) {
			s.mu.Lock()
			s.refused = true
			s.mu.Unlock()
		}
		s.fail(err)
		return
	}
	stop := context.AfterFunc(s.ctx, str.Close)
	defer stop()
	str.SetRecvLimit(maxAckBytes)
	done := make(chan struct{})
	s.c.n.goTracked(func() {
		defer close(done)
		s.readAcks(str)
	})
	var frame []byte
	for {
		select {
		case <-s.ctx.Done():
			str.Close()
			<-done
			return
		case <-s.wake:
		}
		for {
			var n int
			frame, n = s.nextBatch(frame[:0])
			if n == 0 {
				break
			}
			if err := str.Send(s.ctx, frame); err != nil {
				s.fail(err)
				str.Close()
				<-done
				return
			}
			s.c.updateStats(func(st *ChannelStats) { st.UpdatesTransmitted += uint64(n) })
		}
	}
}

// nextBatch moves the waiting updates that fit one frame into flight and
// appends their encoding to frame.
func (s *updateStream) nextBatch(frame []byte) ([]byte, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for len(s.queue) > 0 && n < maxBatchEntries {
		u := s.queue[0]
		size := 2*binaryVarintLen + len(u.data)
		if n > 0 && len(frame)+size > maxBatchBytes {
			break
		}
		u.seq = s.nextSeq
		s.nextSeq++
		frame = protowire.AppendVarint(frame, u.seq)
		frame = protowire.AppendBytes(frame, u.data)
		s.queue[0] = nil
		s.queue = s.queue[1:]
		s.flight = append(s.flight, u)
		n++
	}
	return frame, n
}

// readAcks reports the outcome of every acknowledged update.
func (s *updateStream) readAcks(str transport.Stream) {
	for {
		frame, err := str.Recv()
		if err == io.EOF {
			err = errors.New("peer closed the update stream")
		}
		if err != nil {
			s.fail(err)
			return
		}
		through, refused, err := decodeAck(frame)
		if err != nil {
			s.fail(err)
			return
		}
		if err := s.acked(through, refused); err != nil {
			s.fail(err)
			return
		}
	}
}

// acked settles the updates in flight up to through.
func (s *updateStream) acked(through uint64, refused map[uint64]string) error {
	s.mu.Lock()
	if len(s.flight) == 0 || through < s.flight[0].seq || through >= s.nextSeq {
		s.mu.Unlock()
		return fmt.Errorf("update stream from %s: acknowledgement of %d, in flight %d..%d", s.peer.Short(), through, s.firstSeq(), s.nextSeq-1)
	}
	var done []*streamedUpdate
	for len(s.flight) > 0 && s.flight[0].seq <= through {
		u := s.flight[0]
		s.flight[0] = nil
		s.flight = s.flight[1:]
		if !u.cancelled {
			u.timer.Stop()
			delete(s.byTok, u.tok)
			done = append(done, u)
		}
	}
	s.mu.Unlock()
	for _, u := range done {
		if why, bad := refused[u.seq]; bad {
			s.report(u.tok, fmt.Errorf("update to %s: %w: %s", s.peer.Short(), transport.ErrRemote, why), 0)
		} else {
			s.report(u.tok, nil, len(u.data))
		}
	}
	return nil
}

func (s *updateStream) firstSeq() uint64 {
	if len(s.flight) == 0 {
		return s.nextSeq
	}
	return s.flight[0].seq
}

// encodeAck writes an acknowledgement of every update up to through,
// naming the refused ones (seq → reason, cut to maxAckError).
func encodeAck(buf []byte, through uint64, refused []ackRefusal) []byte {
	buf = protowire.AppendVarint(buf, through)
	buf = protowire.AppendVarint(buf, uint64(len(refused)))
	for _, r := range refused {
		buf = protowire.AppendVarint(buf, r.seq)
		why := r.why
		if len(why) > maxAckError {
			why = why[:maxAckError]
		}
		buf = protowire.AppendString(buf, why)
	}
	return buf
}

type ackRefusal struct {
	seq uint64
	why string
}

func decodeAck(b []byte) (uint64, map[uint64]string, error) {
	bad := func(what string) (uint64, map[uint64]string, error) {
		return 0, nil, fmt.Errorf("update stream: acknowledgement: %s: %w", what, broadcast.ErrInvalid)
	}
	through, n := protowire.ConsumeVarint(b)
	if n < 0 {
		return bad("sequence")
	}
	b = b[n:]
	count, n := protowire.ConsumeVarint(b)
	if n < 0 || count > maxBatchEntries {
		return bad("refusal count")
	}
	b = b[n:]
	var refused map[uint64]string
	if count > 0 {
		refused = make(map[uint64]string, count)
	}
	for range count {
		seq, n := protowire.ConsumeVarint(b)
		if n < 0 {
			return bad("refused sequence")
		}
		b = b[n:]
		why, n := protowire.ConsumeString(b)
		if n < 0 || len(why) > maxAckError {
			return bad("refusal reason")
		}
		b = b[n:]
		refused[seq] = why
	}
	if len(b) != 0 {
		return bad("trailing bytes")
	}
	return through, refused, nil
}

// decodeBatch splits a batch frame into its updates, which must continue
// the stream's sequence at next. The updates alias frame.
func decodeBatch(frame []byte, next uint64) ([][]byte, error) {
	var out [][]byte
	for len(frame) > 0 {
		if len(out) == maxBatchEntries {
			return nil, fmt.Errorf("update stream: batch of more than %d updates: %w", maxBatchEntries, broadcast.ErrInvalid)
		}
		seq, n := protowire.ConsumeVarint(frame)
		if n < 0 || seq != next {
			return nil, fmt.Errorf("update stream: update numbered %d, want %d: %w", seq, next, broadcast.ErrInvalid)
		}
		frame = frame[n:]
		data, n := protowire.ConsumeBytes(frame)
		if n < 0 || len(data) > maxStreamedUpdate {
			return nil, fmt.Errorf("update stream: update %d malformed or above %d bytes: %w", seq, maxStreamedUpdate, broadcast.ErrInvalid)
		}
		frame = frame[n:]
		out = append(out, data)
		next++
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("update stream: empty batch: %w", broadcast.ErrInvalid)
	}
	return out, nil
}

// serveUpdateStream is the receiving end of a peer's update stream on
// channel name: each batch goes to the receiver actor in one message, and
// is acknowledged once applied. A malformed batch resets the stream and is
// counted against the peer.
func serveUpdateStream(ctx context.Context, n *Node, peer membership.NodeID, s transport.Stream, lookup func() *Channel) error {
	s.SetRecvLimit(maxBatchBytes)
	conn := broadcast.ConnID(s.ConnID())
	next := uint64(1)
	var ack []byte
	var refused []ackRefusal
	for {
		frame, err := s.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		c := lookup()
		if c == nil {
			return fmt.Errorf("update stream from %s: channel not open here", peer.Short())
		}
		datas, err := decodeBatch(frame, next)
		if err != nil {
			c.invalidUpdate(peer, conn, err)
			return fmt.Errorf("update stream from %s: %w", peer.Short(), err)
		}
		errs := c.applyUpdates(ctx, peer, conn, datas)
		refused = refused[:0]
		for i, err := range errs {
			if err != nil && !errors.Is(err, broadcast.ErrStale) {
				refused = append(refused, ackRefusal{seq: next + uint64(i), why: err.Error()})
			}
		}
		next += uint64(len(datas))
		ack = encodeAck(ack[:0], next-1, refused)
		if err := s.Send(ctx, ack); err != nil {
			return err
		}
	}
}

// applyUpdates decodes a batch and has the receiver actor apply it,
// returning each update's outcome (all failed if the actor does not answer
// within HandlerTimeout or ctx ends).
func (c *Channel) applyUpdates(ctx context.Context, peer membership.NodeID, conn broadcast.ConnID, datas [][]byte) []error {
	errs := make([]error, len(datas))
	fail := func(err error) []error {
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	pid := c.receiverPID.Load()
	if pid == nil {
		return fail(fmt.Errorf("update from %s: channel %s is restarting", peer.Short(), c.name))
	}
	us := make([]updateMsg, len(datas))
	for i, d := range datas {
		u, err := c.decodeUpdate(peer, d)
		us[i] = updateMsg{peer: broadcast.PeerID(peer.String()), conn: conn, u: u, decodeErr: err}
	}
	timer := time.NewTimer(c.n.cfg.HandlerTimeout)
	defer timer.Stop()
	// A push that finds every delivery credit held pauses the batch (and
	// so the stream: the sender's flow control holds the rest) until the
	// consumer returns one; after creditPause the rest is applied anyway,
	// its pushes fetched later as the core decides.
	pause := time.NewTimer(min(c.n.cfg.HandlerTimeout/2, creditPause))
	defer pause.Stop()
	force := false
	done := 0
	reply := make(chan batchResult, 1)
	for done < len(us) {
		c.n.system.Root.Send(pid, updateBatchMsg{peer: us[0].peer, conn: conn, us: us[done:], force: force, reply: reply})
		var res batchResult
		select {
		case res = <-reply:
		case <-timer.C:
			return fail(fmt.Errorf("update from %s: receiver busy", peer.Short()))
		case <-ctx.Done():
			return fail(ctx.Err())
		}
		copy(errs[done:], res.errs)
		done += len(res.errs)
		if done == len(us) {
			break
		}
		wake := c.creditWaiter()
		if c.consumedTotal.Load() > res.consumedAt {
			continue // a credit came back meanwhile
		}
		select {
		case <-wake:
		case <-pause.C:
			force = true
		case <-timer.C:
			return fail(fmt.Errorf("update from %s: receiver busy", peer.Short()))
		case <-ctx.Done():
			return fail(ctx.Err())
		}
	}
	return errs
}

// creditPause bounds how long a batch waits for a delivery credit.
const creditPause = time.Second

// creditWaiter returns a channel closed when the consumer next returns a
// delivery credit.
func (c *Channel) creditWaiter() <-chan struct{} {
	for {
		if p := c.creditWake.Load(); p != nil {
			return *p
		}
		ch := make(chan struct{})
		if c.creditWake.CompareAndSwap(nil, &ch) {
			return ch
		}
	}
}

// wakeCreditWaiters tells the paused update streams a credit came back.
func (c *Channel) wakeCreditWaiters() {
	if p := c.creditWake.Swap(nil); p != nil {
		close(*p)
	}
}

// invalidUpdate counts a malformed batch against the peer, as an update
// that did not decode is.
func (c *Channel) invalidUpdate(peer membership.NodeID, conn broadcast.ConnID, err error) {
	if pid := c.receiverPID.Load(); pid != nil {
		c.n.system.Root.Send(pid, updateMsg{peer: broadcast.PeerID(peer.String()), conn: conn, decodeErr: err, reply: make(chan error, 1)})
	}
}
