package quicremote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/abcast/abcast/membership"
)

// memStreamWindow is how many frames one direction of an in-memory stream
// buffers before Send blocks: the twin of QUIC's stream flow control.
const memStreamWindow = 16

// memDir is one direction of an in-memory stream. ctx ends when the
// direction is reset (by either side, or because the link went down); kind
// is the error kind both ends see from then on.
type memDir struct {
	frames  chan []byte
	finOnce sync.Once
	ctx     context.Context
	cancel  context.CancelFunc
	once    sync.Once
	kind    error
}

func newMemDir() *memDir {
	d := &memDir{frames: make(chan []byte, memStreamWindow)}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	return d
}

func (d *memDir) reset(kind error) {
	d.once.Do(func() {
		d.kind = kind
		d.cancel()
	})
}

// fin ends the direction cleanly; only its writer calls it, never
// concurrently with its own Send.
func (d *memDir) fin() { d.finOnce.Do(func() { close(d.frames) }) }

// memStream is one end of an in-memory stream.
type memStream struct {
	cfg      Config
	peer     membership.NodeID
	protocol string
	connID   uint64
	in, out  *memDir
	ctrs     *peerCounters
	finished bool // CloseSend was called (writer-side only)

	mu   sync.Mutex
	held int
}

var _ Stream = (*memStream)(nil)

func (s *memStream) fail(kind, cause error, detail string) *Error {
	return newErr(s.peer, s.protocol, kind, cause, detail)
}

func (s *memStream) ConnID() uint64 { return s.connID }

func (s *memStream) resetBoth(kind error) {
	s.in.reset(kind)
	s.out.reset(kind)
}

// Send implements Stream.
func (s *memStream) Send(ctx context.Context, frame []byte) error {
	if len(frame) > s.cfg.MaxFrameSize {
		return s.fail(ErrTooLarge, nil, fmt.Sprintf("frame of %d bytes exceeds %d", len(frame), s.cfg.MaxFrameSize))
	}
	if s.finished {
		return s.fail(ErrProtocol, errors.New("Send after CloseSend"), "")
	}
	if s.out.ctx.Err() != nil {
		return s.fail(s.out.kind, errMemLinkDown, "")
	}
	if err := ctx.Err(); err != nil {
		s.resetBoth(ErrNotConnected)
		return s.fail(ErrCancelled, err, "")
	}
	f := slices.Clone(frame)
	select {
	case s.out.frames <- f:
		return nil
	case <-s.out.ctx.Done():
		return s.fail(s.out.kind, errMemLinkDown, "")
	case <-ctx.Done():
		s.resetBoth(ErrNotConnected)
		return s.fail(ErrCancelled, ctx.Err(), "")
	}
}

// Recv implements Stream.
func (s *memStream) Recv() ([]byte, error) {
	s.release()
	if s.in.ctx.Err() != nil {
		return nil, s.fail(s.in.kind, errMemLinkDown, "")
	}
	var f []byte
	var ok bool
	select {
	case f, ok = <-s.in.frames:
	case <-s.in.ctx.Done():
		return nil, s.fail(s.in.kind, errMemLinkDown, "")
	}
	if s.in.ctx.Err() != nil {
		return nil, s.fail(s.in.kind, errMemLinkDown, "")
	}
	if !ok {
		return nil, io.EOF
	}
	if len(f) > s.cfg.MaxFrameSize {
		s.ctrs.oversized.Add(1)
		s.resetBoth(ErrTooLarge)
		return nil, s.fail(ErrTooLarge, nil, "incoming frame")
	}
	if !s.ctrs.hold(len(f), s.cfg.MaxRequestBytesPerPeer) {
		s.ctrs.refused.Add(1)
		s.resetBoth(ErrRefused)
		return nil, s.fail(ErrRefused, nil, fmt.Sprintf("frame of %d bytes exceeds the peer's request budget", len(f)))
	}
	s.mu.Lock()
	s.held = len(f)
	s.mu.Unlock()
	return f, nil
}

func (s *memStream) release() {
	s.mu.Lock()
	n := s.held
	s.held = 0
	s.mu.Unlock()
	if n > 0 {
		s.ctrs.unhold(n)
	}
}

// CloseSend implements Stream.
func (s *memStream) CloseSend() error {
	if s.out.ctx.Err() != nil {
		return s.fail(s.out.kind, errMemLinkDown, "")
	}
	s.finished = true
	s.out.fin()
	return nil
}

// Close implements Stream.
func (s *memStream) Close() {
	s.resetBoth(ErrNotConnected)
	s.release()
}

// OpenStream implements RPC.
func (m *MemTransport) OpenStream(ctx context.Context, peer membership.NodeID, protocol string) (Stream, error) {
	fail := func(k error, cause error, detail string) (Stream, error) {
		return nil, newErr(peer, protocol, k, cause, detail)
	}
	if err := validProtocol(protocol); err != nil {
		return fail(ErrRefused, err, "")
	}
	m.net.mu.Lock()
	closed, known, link := m.closed, m.snap.Contains(peer), m.links[peer]
	var remote *MemTransport
	var rlink *memLink
	if link != nil {
		remote = m.net.nodes[peer]
		rlink = remote.links[m.id]
	}
	m.net.mu.Unlock()
	switch {
	case closed:
		return fail(ErrClosed, nil, "")
	case !known:
		return fail(ErrUnknownPeer, nil, "")
	case link == nil:
		return fail(ErrNotConnected, nil, "")
	}
	if err := ctx.Err(); err != nil {
		return fail(ErrCancelled, err, "")
	}
	// A stream credit on the remote side, held until its handler returns.
	select {
	case rlink.credits <- struct{}{}:
	case <-ctx.Done():
		return fail(ErrCancelled, ctx.Err(), "waiting for a stream credit")
	case <-link.ctx.Done():
		return fail(ErrNotConnected, errMemLinkDown, "")
	}
	release := func() { <-rlink.credits }
	rctr := remote.counter(m.id)
	remote.hmu.RLock()
	he := remote.handlers[protocol]
	remote.hmu.RUnlock()
	if he == nil || he.sh == nil {
		release()
		rctr.refused.Add(1)
		return fail(ErrRefused, errors.New("no stream handler for protocol"), "")
	}
	if !he.acquire(m.id) {
		release()
		rctr.refused.Add(1)
		return fail(ErrRefused, errors.New("protocol at its concurrency limit"), "")
	}

	toH, fromH := newMemDir(), newMemDir()
	opener := &memStream{cfg: m.cfg, peer: peer, protocol: protocol, connID: link.connID, in: fromH, out: toH, ctrs: m.counter(peer)}
	served := &memStream{cfg: remote.cfg, peer: m.id, protocol: protocol, connID: rlink.connID, in: toH, out: fromH, ctrs: rctr}
	down := func() { served.resetBoth(ErrNotConnected) }
	stops := []func() bool{
		context.AfterFunc(link.ctx, down),
		context.AfterFunc(m.ctx, down),
		context.AfterFunc(remote.ctx, down),
	}
	// The handler's context ends when the opener abandons the stream (its
	// Close resets the handler's sending side), the link goes down or the
	// remote transport closes.
	hctx, hcancel := context.WithCancel(WithConnID(link.ctx, rlink.connID))
	stops = append(stops, context.AfterFunc(fromH.ctx, hcancel), context.AfterFunc(remote.ctx, hcancel))
	remote.wg.Add(1)
	go func() {
		defer remote.wg.Done()
		defer release()
		defer he.release(m.id)
		defer hcancel()
		err := runMemStreamHandler(hctx, he.sh, m.id, served)
		served.release()
		if err != nil {
			served.resetBoth(ErrRemote)
		} else {
			if !served.finished {
				fromH.fin()
			}
			toH.reset(ErrNotConnected)
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
