package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/abcast/abcast/membership"
)

// memStreamWindow is how many bytes one direction of an in-memory stream
// buffers before Send blocks: the twin of QUIC's stream flow control
// (quic-go starts a stream's window at 512 KiB). A frame larger than the
// window is accepted when the direction is empty.
const memStreamWindow = 512 << 10

// memDir is one direction of an in-memory stream: a byte-bounded queue of
// frames with one writer and one reader. ctx ends when the direction is
// reset (by either side, or because the link went down); kind and cause
// are the error both ends see from then on.
type memDir struct {
	mu     sync.Mutex
	frames [][]byte
	bytes  int
	fin    bool
	data   chan struct{} // a frame or the fin arrived (cap 1)
	space  chan struct{} // a frame was taken (cap 1)
	ctx    context.Context
	cancel context.CancelFunc
	once   sync.Once
	kind   error
	cause  error
}

func newMemDir() *memDir {
	d := &memDir{data: make(chan struct{}, 1), space: make(chan struct{}, 1)}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	return d
}

func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (d *memDir) reset(kind, cause error) {
	d.once.Do(func() {
		d.kind, d.cause = kind, cause
		d.cancel()
	})
}

// finish ends the direction cleanly; only its writer calls it.
func (d *memDir) finish() {
	d.mu.Lock()
	d.fin = true
	d.mu.Unlock()
	notify(d.data)
}

// put queues f, waiting for room until ctx ends or the direction is reset.
func (d *memDir) put(ctx context.Context, f []byte) error {
	for {
		if d.ctx.Err() != nil {
			return d.ctx.Err()
		}
		d.mu.Lock()
		if d.bytes == 0 || d.bytes+len(f) <= memStreamWindow {
			d.frames = append(d.frames, f)
			d.bytes += len(f)
			d.mu.Unlock()
			notify(d.data)
			return nil
		}
		d.mu.Unlock()
		select {
		case <-d.space:
		case <-d.ctx.Done():
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// get takes the next frame; ok is false at the clean end.
func (d *memDir) get() (f []byte, ok bool, reset bool) {
	for {
		if d.ctx.Err() != nil {
			return nil, false, true
		}
		d.mu.Lock()
		if len(d.frames) > 0 {
			f = d.frames[0]
			d.frames[0] = nil
			d.frames = d.frames[1:]
			d.bytes -= len(f)
			d.mu.Unlock()
			notify(d.space)
			return f, true, false
		}
		fin := d.fin
		d.mu.Unlock()
		if fin {
			return nil, false, false
		}
		select {
		case <-d.data:
		case <-d.ctx.Done():
		}
	}
}

// memStream is one end of an in-memory stream.
type memStream struct {
	cfg      Config
	peer     membership.NodeID
	protocol string
	connID   uint64
	in, out  *memDir
	ctrs     *peerCounters
	local    context.Context // this end's transport; done once it closed
	finished bool            // CloseSend was called (writer-side only)
	gone     func()          // on a handler's end: ends its context when the stream is reset
	limit    int             // SetRecvLimit; only Recv's goroutine touches it

	held heldFrame
}

var _ Stream = (*memStream)(nil)

func (s *memStream) fail(kind, cause error, detail string) *Error {
	if s.local.Err() != nil && kind != ErrCancelled {
		kind, cause = ErrClosed, nil // our own transport closed, as on QUIC
	}
	return newErr(s.peer, s.protocol, kind, cause, detail)
}

func (s *memStream) ConnID() uint64 { return s.connID }

func (s *memStream) resetBoth(kind, cause error) {
	s.in.reset(kind, cause)
	s.out.reset(kind, cause)
}

var (
	errMemAbandoned  = errors.New("stream abandoned")
	errMemHandler    = errors.New("peer's stream handler failed")
	errMemOverBudget = errors.New("the peer's memory budget for us is exhausted")
	errMemTooLarge   = errors.New("peer refused the frame size")
	errMemFinished   = errors.New("peer's handler finished")
)

// Send implements Stream.
func (s *memStream) Send(ctx context.Context, frame []byte) error {
	if len(frame) > s.cfg.MaxFrameSize {
		return s.fail(ErrTooLarge, nil, fmt.Sprintf("frame of %d bytes exceeds %d", len(frame), s.cfg.MaxFrameSize))
	}
	if s.finished {
		s.resetBoth(ErrNotConnected, errMemAbandoned)
		return s.fail(ErrNotConnected, errors.New("Send after CloseSend"), "")
	}
	if s.out.ctx.Err() != nil {
		return s.fail(s.out.kind, s.out.cause, "")
	}
	if err := ctx.Err(); err != nil {
		s.resetBoth(ErrNotConnected, errMemAbandoned)
		return s.fail(ErrCancelled, err, "")
	}
	if err := s.out.put(ctx, slices.Clone(frame)); err != nil {
		if s.out.ctx.Err() != nil {
			return s.fail(s.out.kind, s.out.cause, "")
		}
		s.resetBoth(ErrNotConnected, errMemAbandoned)
		return s.fail(ErrCancelled, err, "")
	}
	return nil
}

// Recv implements Stream.
func (s *memStream) Recv() ([]byte, error) {
	s.held.release()
	f, ok, reset := s.in.get()
	if reset {
		if s.gone != nil {
			s.gone()
		}
		return nil, s.fail(s.in.kind, s.in.cause, "")
	}
	if !ok {
		return nil, io.EOF
	}
	if len(f) > recvLimit(s.limit, s.cfg) {
		s.ctrs.oversized.Add(1)
		s.resetBoth(ErrTooLarge, errMemTooLarge)
		return nil, s.fail(ErrTooLarge, nil, "incoming frame")
	}
	if !s.held.take(len(f), s.cfg.MaxBytesPerPeer) {
		s.ctrs.refused.Add(1)
		s.resetBoth(ErrRefused, errMemOverBudget)
		return nil, s.fail(ErrRefused, nil, fmt.Sprintf("frame of %d bytes exceeds the peer's memory budget", len(f)))
	}
	return f, nil
}

// SetRecvLimit implements Stream.
func (s *memStream) SetRecvLimit(n int) { s.limit = n }

// CloseSend implements Stream.
func (s *memStream) CloseSend() error {
	if s.out.ctx.Err() != nil {
		return s.fail(s.out.kind, s.out.cause, "")
	}
	s.finished = true
	s.out.finish()
	return nil
}

// Close implements Stream.
func (s *memStream) Close() {
	s.resetBoth(ErrNotConnected, errMemAbandoned)
	s.held.release()
}

// OpenStream implements RPC.
func (m *MemTransport) OpenStream(ctx context.Context, peer membership.NodeID, protocol string) (Stream, error) {
	fail := func(k error, cause error, detail string) (Stream, error) {
		return nil, newErr(peer, protocol, k, cause, detail)
	}
	if err := validProtocol(protocol); err != nil {
		return fail(ErrRefused, err, "")
	}
	a, err := m.admit(ctx, peer, protocol, true)
	if err != nil {
		return nil, err
	}
	link, rlink, remote, he, rctr, release := a.link, a.rlink, a.remote, a.he, a.rctr, a.release

	toH, fromH := newMemDir(), newMemDir()
	opener := &memStream{cfg: m.cfg, peer: peer, protocol: protocol, connID: link.connID, in: fromH, out: toH, ctrs: m.counter(peer), local: m.ctx}
	opener.held.ctrs = opener.ctrs
	served := &memStream{cfg: remote.cfg, peer: m.id, protocol: protocol, connID: rlink.connID, in: toH, out: fromH, ctrs: rctr, held: heldFrame{ctrs: rctr}, local: remote.ctx}
	down := func() { served.resetBoth(ErrNotConnected, errMemLinkDown) }
	stops := []func() bool{
		context.AfterFunc(link.ctx, down),
		context.AfterFunc(m.ctx, down),
		context.AfterFunc(remote.ctx, down),
	}
	// The handler's context ends when the opener abandons the stream (its
	// Close resets the handler's sending side), the link goes down or the
	// remote transport closes.
	hctx, hcancel := context.WithCancel(WithConnID(link.ctx, rlink.connID))
	served.gone = hcancel
	stops = append(stops, context.AfterFunc(fromH.ctx, hcancel), context.AfterFunc(remote.ctx, hcancel))
	remote.wg.Add(1)
	go func() {
		defer remote.wg.Done()
		defer release()
		defer he.release(m.id)
		defer hcancel()
		err := runMemStreamHandler(hctx, he.sh, m.id, served)
		served.held.release()
		switch {
		case err != nil:
			served.resetBoth(ErrRemote, errMemHandler)
		case link.ctx.Err() != nil || remote.ctx.Err() != nil || m.ctx.Err() != nil:
			// The handler returned because the link or a transport went
			// away: the stream was reset, not finished (the AfterFuncs
			// that say so may not have run yet).
			served.resetBoth(ErrNotConnected, errMemLinkDown)
		default:
			if !served.finished {
				fromH.finish()
			}
			toH.reset(ErrNotConnected, errMemFinished)
		}
		for _, stop := range stops {
			stop()
		}
	}()
	return opener, nil
}

func runMemStreamHandler(ctx context.Context, h StreamHandler, peer membership.NodeID, s Stream) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("stream handler panicked: %v", r)
		}
	}()
	return h(ctx, peer, s)
}
