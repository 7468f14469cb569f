package transport

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/rs/zerolog"

	"github.com/abcast/abcast/membership"
)

// registerHandler adds a request handler (h) or a stream handler (sh) for
// protocol; the two kinds share one name space.
func registerHandler(mu *sync.RWMutex, handlers map[string]*handlerEntry, protocol string, h Handler, sh StreamHandler, limit, defaultLimit int) error {
	if err := validProtocol(protocol); err != nil {
		return fmt.Errorf("quicremote: Handle %q: %w", protocol, err)
	}
	if h == nil && sh == nil {
		return fmt.Errorf("quicremote: Handle %q: nil handler", protocol)
	}
	if limit <= 0 {
		limit = defaultLimit
	}
	mu.Lock()
	defer mu.Unlock()
	if _, dup := handlers[protocol]; dup {
		return fmt.Errorf("quicremote: Handle %q: already registered", protocol)
	}
	handlers[protocol] = &handlerEntry{h: h, sh: sh, limit: int64(limit)}
	return nil
}

// heldFrame is the size of the last frame a stream's Recv returned,
// charged to the peer's memory budget until the next Recv or Close.
type heldFrame struct {
	ctrs *peerCounters
	mu   sync.Mutex // Recv may race Close
	n    int
}

// take charges n bytes, or reports false when the budget is spent.
func (h *heldFrame) take(n, limit int) bool {
	if !h.ctrs.hold(n, limit) {
		return false
	}
	h.mu.Lock()
	h.n = n
	h.mu.Unlock()
	return true
}

// release hands the bytes back.
func (h *heldFrame) release() {
	h.mu.Lock()
	n := h.n
	h.n = 0
	h.mu.Unlock()
	if n > 0 {
		h.ctrs.unhold(n)
	}
}

// quicStream is one end of a long-lived stream over QUIC.
type quicStream struct {
	t        *Transport
	str      *quic.Stream
	peer     membership.NodeID
	protocol string
	connID   uint64
	ctrs     *peerCounters
	hdr      []byte // Send's scratch header
	// recvLimit is the largest frame Recv accepts (SetRecvLimit); only
	// Recv's goroutine touches it.
	recvLimit int

	held heldFrame
	// gone, on a handler's end, ends the handler's context when Recv sees
	// the stream or connection fail (quic-go's stream context no longer
	// tells once the handler closed its own sending side).
	gone func()
}

var _ Stream = (*quicStream)(nil)

func (s *quicStream) fail(kind, cause error, detail string) *Error {
	return newErr(s.peer, s.protocol, kind, cause, detail)
}

func (s *quicStream) ConnID() uint64 { return s.connID }

// Send implements Stream.
func (s *quicStream) Send(ctx context.Context, frame []byte) error {
	max := s.t.cfg.MaxFrameSize
	if len(frame) > max {
		return s.fail(ErrTooLarge, nil, fmt.Sprintf("frame of %d bytes exceeds %d", len(frame), max))
	}
	if err := ctx.Err(); err != nil {
		s.abort(codeCancelled)
		return s.fail(ErrCancelled, err, "")
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = s.str.SetWriteDeadline(dl)
	} else {
		_ = s.str.SetWriteDeadline(time.Time{})
	}
	var stop func() bool
	if ctx.Done() != nil {
		stop = context.AfterFunc(ctx, func() { s.str.CancelWrite(codeCancelled) })
	}
	s.hdr = binary.BigEndian.AppendUint32(s.hdr[:0], uint32(len(frame)))
	err := writeFrame(s.str, s.hdr, frame)
	if stop != nil && !stop() && err == nil {
		// ctx ended just after the write and its reset may have
		// discarded the frame: report the cancellation.
		s.abort(codeCancelled)
		return s.fail(ErrCancelled, ctx.Err(), "")
	}
	if err == nil {
		return nil
	}
	if ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded) {
		s.abort(codeCancelled)
		cause := ctx.Err()
		if cause == nil {
			cause = context.DeadlineExceeded
		}
		return s.fail(ErrCancelled, cause, "")
	}
	s.abort(codeCancelled)
	k, c := s.t.classifyStream(err)
	return s.fail(k, c, "")
}

// SetRecvLimit implements Stream.
func (s *quicStream) SetRecvLimit(n int) { s.recvLimit = recvLimit(n, s.t.cfg) }

// recvLimit is the frame limit SetRecvLimit(n) means under cfg.
func recvLimit(n int, cfg Config) int {
	if n <= 0 || n > cfg.MaxFrameSize {
		return cfg.MaxFrameSize
	}
	return n
}

// Recv implements Stream.
func (s *quicStream) Recv() ([]byte, error) {
	s.held.release()
	// The wait for a frame's length has no deadline (a stream may idle);
	// once it arrived, the payload moves under the progress rule.
	n, err := readFrameLen(s.str, recvLimit(s.recvLimit, s.t.cfg))
	if err == io.EOF {
		return nil, io.EOF
	}
	if errors.Is(err, errTooLarge) {
		s.ctrs.oversized.Add(1)
		s.abort(codeTooLarge)
		return nil, s.fail(ErrTooLarge, err, "incoming frame")
	}
	if err == nil {
		if !s.held.take(n, s.t.cfg.MaxBytesPerPeer) {
			s.ctrs.refused.Add(1)
			s.abort(codeOverBudget)
			return nil, s.fail(ErrRefused, nil, fmt.Sprintf("frame of %d bytes exceeds the peer's memory budget", n))
		}
	}
	var frame []byte
	if err == nil {
		pr := &progressReader{str: s.str, d: s.t.cfg.ProgressTimeout}
		frame, err = readPayload(pr, n)
		pr.done()
	}
	if err != nil {
		s.held.release()
		if s.gone != nil {
			s.gone()
		}
		if isStreamOrConnErr(err) {
			k, c := s.t.classifyStream(err)
			return nil, s.fail(k, c, "")
		}
		s.ctrs.garbage.Add(1)
		s.abort(codeGarbage)
		return nil, s.fail(ErrProtocol, err, "truncated or stalled frame")
	}
	return frame, nil
}

// CloseSend implements Stream.
func (s *quicStream) CloseSend() error {
	if err := s.str.Close(); err != nil {
		k, c := s.t.classifyStream(err)
		return s.fail(k, c, "")
	}
	return nil
}

// Close implements Stream.
func (s *quicStream) Close() {
	s.abort(codeCancelled)
	s.held.release()
}

func (s *quicStream) abort(code quic.StreamErrorCode) {
	s.str.CancelWrite(code)
	s.str.CancelRead(code)
}

// classifyStream maps errors of a long-lived stream: a local cancellation
// after Close reads as ErrClosed-like "not connected"; a handler error
// code as ErrRemote.
func (t *Transport) classifyStream(err error) (kind, cause error) {
	var se *quic.StreamError
	if errors.As(err, &se) && se.Remote && se.ErrorCode == codeHandlerError {
		return ErrRemote, errors.New("peer's stream handler failed")
	}
	if errors.As(err, &se) && se.Remote && se.ErrorCode == codeShutdown {
		return ErrNotConnected, errors.New("peer shutting down")
	}
	if t.ctx.Err() != nil {
		return ErrClosed, err
	}
	return classify(err)
}

// serveLongStream runs h on an admitted incoming stream (its protocol slot
// is held by the caller).
func (t *Transport) serveLongStream(connCtx context.Context, peer membership.NodeID, connID uint64, ctrs *peerCounters, str *quic.Stream, protocol string, h StreamHandler, log zerolog.Logger) {
	if _, err := str.Write([]byte{statusOK}); err != nil {
		str.CancelRead(codeCancelled)
		str.CancelWrite(codeCancelled)
		return
	}
	// The handler's context ends with the connection, the transport, or
	// the peer abandoning the stream. quic-go's stream context also ends
	// when we close our own sending side (cause ErrStreamClosed), which a
	// handler that is done sending but still reading must survive.
	ctx, cancel := context.WithCancel(WithConnID(connCtx, connID))
	defer cancel()
	stop := context.AfterFunc(t.ctx, cancel)
	defer stop()
	strCtx := str.Context()
	stopStr := context.AfterFunc(strCtx, func() {
		if !errors.Is(context.Cause(strCtx), quic.ErrStreamClosed) {
			cancel()
		}
	})
	defer stopStr()
	s := &quicStream{t: t, str: str, peer: peer, protocol: protocol, connID: connID, ctrs: ctrs, held: heldFrame{ctrs: ctrs}, gone: cancel}
	// The transport's shutdown must unblock a handler sitting in Recv.
	stopRead := context.AfterFunc(t.ctx, func() { s.abort(codeShutdown) })
	defer stopRead()
	err := t.runStreamHandler(ctx, h, peer, s)
	s.held.release()
	if err != nil {
		log.Debug().Err(err).Msg("stream handler failed")
		s.abort(codeHandlerError)
		return
	}
	_ = str.Close()
	str.CancelRead(codeCancelled)
}

func (t *Transport) runStreamHandler(ctx context.Context, h StreamHandler, peer membership.NodeID, s Stream) (err error) {
	defer func() {
		if r := recover(); r != nil {
			t.log.Error().Interface("panic", r).Str("peer", peer.Short()).Msg("stream handler panicked")
			err = fmt.Errorf("stream handler panicked: %v", r)
		}
	}()
	return h(ctx, peer, s)
}

// OpenStream implements RPC.
func (t *Transport) OpenStream(ctx context.Context, peer membership.NodeID, protocol string) (Stream, error) {
	fail := func(k error, cause error, detail string) (Stream, error) {
		return nil, newErr(peer, protocol, k, cause, detail)
	}
	if err := validProtocol(protocol); err != nil {
		return fail(ErrRefused, err, "")
	}
	str, connID, err := t.openQUICStream(ctx, peer, protocol)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() {
		str.CancelWrite(codeCancelled)
		str.CancelRead(codeCancelled)
	})
	hdr := append([]byte{wireVersion, kindStream, byte(len(protocol))}, protocol...)
	_, err = str.Write(hdr)
	if err == nil {
		var st byte
		if st, err = readStatus(str); err == nil && st != statusOK {
			err = fmt.Errorf("%w %d for a stream", errBadStatus, st)
		}
	}
	if !stop() || ctx.Err() != nil {
		str.CancelWrite(codeCancelled)
		str.CancelRead(codeCancelled)
		return fail(ErrCancelled, ctx.Err(), "")
	}
	if err != nil {
		str.CancelWrite(codeCancelled)
		str.CancelRead(codeCancelled)
		if isStreamOrConnErr(err) {
			k, c := classify(err)
			return fail(k, c, "")
		}
		t.counter(peer).garbage.Add(1)
		return fail(ErrProtocol, err, "bad stream admission")
	}
	ctrs := t.counter(peer)
	return &quicStream{t: t, str: str, peer: peer, protocol: protocol, connID: connID, ctrs: ctrs, held: heldFrame{ctrs: ctrs}}, nil
}

var (
	_ RPC = (*Transport)(nil)
	_ RPC = (*MemTransport)(nil)
)
