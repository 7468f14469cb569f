package transport

import (
	"errors"
	"fmt"

	"github.com/abcast/abcast/membership"
)

// Sentinel errors. Every error returned by Call and Push is an *Error whose
// Is matches exactly one of these, so callers branch with errors.Is. The
// underlying cause (a context error, a QUIC error) stays reachable through
// Unwrap, e.g. errors.Is(err, context.DeadlineExceeded).
var (
	// ErrUnknownPeer: the peer is not a member of the latest snapshot we
	// applied. Retrying is pointless until membership changes.
	ErrUnknownPeer = errors.New("unknown peer")
	// ErrNotConnected: the peer is a member but no welcomed connection to it
	// exists right now, or the connection died during the request. The
	// request may or may not have reached the peer's handler.
	ErrNotConnected = errors.New("not connected")
	// ErrCancelled: the caller's context ended first (cancelled or deadline).
	// The stream was reset, so the peer's handler context ends too.
	ErrCancelled = errors.New("cancelled")
	// ErrTooLarge: a request or response exceeded Config.MaxFrameSize, on
	// our side or on the peer's, a response exceeded the Call's
	// MaxResponse, or a stream frame exceeded the receiver's limit.
	ErrTooLarge = errors.New("frame too large")
	// ErrRefused: the peer declined the stream before running a handler (no
	// handler for the protocol, the protocol is at its concurrency limit,
	// its memory budget for us is spent, or it is shutting down: nothing
	// was processed), or a Call's response did not fit the memory budget
	// of the side that had to hold it (the handler did run). Retry later.
	ErrRefused = errors.New("refused")
	// ErrRemote: the peer's handler returned an error; its text is in the
	// message.
	ErrRemote = errors.New("remote handler error")
	// ErrProtocol: the peer sent bytes that do not follow the wire format,
	// or stopped sending in the middle of a frame for ProgressTimeout. The
	// stream was reset and the peer's garbage counter incremented.
	ErrProtocol = errors.New("protocol violation")
	// ErrClosed: this transport has been closed.
	ErrClosed = errors.New("transport closed")
)

// Error is the error type of Call and Push. It names the peer and the
// protocol, matches its Kind with errors.Is and unwraps to its Cause.
type Error struct {
	Peer     membership.NodeID
	Protocol string
	Kind     error  // one of the sentinels above
	Detail   string // extra text, e.g. the remote handler's message
	Cause    error  // underlying error, may be nil
}

func (e *Error) Error() string {
	s := fmt.Sprintf("quicremote: %q to peer %s: %v", e.Protocol, e.Peer.Short(), e.Kind)
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	if e.Cause != nil {
		s += ": " + e.Cause.Error()
	}
	return s
}

// Is reports whether target is this error's kind.
func (e *Error) Is(target error) bool { return target == e.Kind }

// Unwrap returns the underlying cause.
func (e *Error) Unwrap() error { return e.Cause }

func newErr(peer membership.NodeID, protocol string, kind error, cause error, detail string) *Error {
	return &Error{Peer: peer, Protocol: protocol, Kind: kind, Cause: cause, Detail: detail}
}
