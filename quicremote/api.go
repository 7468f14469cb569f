package quicremote

import (
	"context"
	"sync/atomic"

	"github.com/abcast/abcast/membership"
)

// Handler serves one request. ctx ends when the caller cancels (its stream
// is reset), the connection dies, or the transport closes; a handler must
// return soon after, or it keeps holding one of the protocol's slots and
// one of the connection's stream credits (and Close waits for it). req is
// owned by the handler. The returned bytes are the Call response (ignored
// for Push); a non-nil error is sent back as text and surfaces as
// ErrRemote at the caller.
type Handler func(ctx context.Context, peer membership.NodeID, req []byte) ([]byte, error)

// RPC is what the layers above need from a transport: request/response and
// one-way messages per protocol name, and the identity of the current
// connection to each peer. *Transport (QUIC) and *MemTransport (in memory)
// implement it with the same semantics; the conformance suite checks both.
type RPC interface {
	// Handle registers h for protocol, at most limit invocations running at
	// once for each peer (limit <= 0 means Config.DefaultProtocolLimit); the
	// limit is per peer so that one peer saturating a protocol cannot get
	// another peer's requests refused. A request that arrives while its
	// peer is at the protocol's limit is refused at once: the
	// caller gets ErrRefused and may retry. A protocol can be registered
	// once; registering before peers connect avoids refusals at startup.
	Handle(protocol string, h Handler, limit int) error

	// Call sends req to peer's handler for protocol and returns its
	// response. It blocks until the response arrives, the request fails, or
	// ctx ends; ending ctx resets the request so the remote handler's ctx
	// ends as well. When the peer is slow (all its stream credits for us
	// taken by running handlers), Call waits for a credit until ctx ends
	// and then fails with ErrCancelled; when the protocol is at its limit
	// on the peer, Call fails at once with ErrRefused. Errors are *Error.
	Call(ctx context.Context, peer membership.NodeID, protocol string, req []byte) ([]byte, error)

	// Push is Call without a response payload: it returns nil once the
	// peer's handler has returned nil for msg. Waiting for the handler
	// (rather than only for delivery) gives the sender a definite answer
	// and keeps sequential pushes from one goroutine in order.
	Push(ctx context.Context, peer membership.NodeID, protocol string, msg []byte) error

	// ConnID returns the local id of the current connection to peer and
	// whether the peer is up. Ids grow strictly with every new connection,
	// so (ConnID, per-connection sequence) orders everything a peer sent.
	ConnID(peer membership.NodeID) (uint64, bool)

	// Peers returns the peers that are up right now, sorted.
	Peers() []membership.NodeID

	// Close stops the transport: connections are closed, handler contexts
	// cancelled, and Close returns once every goroutine it started ended.
	Close() error
}

// PeerEvent is PeerUp or PeerDown.
type PeerEvent interface{ peerEvent() }

// PeerUp: a connection to Peer completed its welcome exchange. ConnID is
// its local id, larger than any earlier connection's.
type PeerUp struct {
	Peer   membership.NodeID
	ConnID uint64
}

// PeerDown: the connection ConnID to Peer is gone. Err says why.
type PeerDown struct {
	Peer   membership.NodeID
	ConnID uint64
	Err    error
}

func (PeerUp) peerEvent()   {}
func (PeerDown) peerEvent() {}

// EventFunc receives peer events. Events about one peer arrive in order
// (a PeerDown for a connection always before the PeerUp of its successor)
// and never concurrently. The function runs on the transport's goroutines
// while event delivery is serialised: it must not block (hand the event to a
// channel or actor) but may call ConnID and Peers.
type EventFunc func(PeerEvent)

// PeerStats counts one peer's misbehaviour and our refusals.
type PeerStats struct {
	GarbageFrames   uint64 // undecodable headers/frames, trailing bytes, header timeouts
	OversizedFrames uint64 // frames above MaxFrameSize (either direction)
	RefusedStreams  uint64 // incoming streams refused: no handler or protocol busy
}

type peerCounters struct {
	garbage, oversized, refused atomic.Uint64
	// held is the request bytes of this peer in memory now (read, handler
	// not yet returned), bounded by Config.MaxRequestBytesPerPeer.
	held atomic.Int64
}

// hold reserves n bytes of the peer's request budget, or reports false.
func (c *peerCounters) hold(n, limit int) bool {
	if c.held.Add(int64(n)) > int64(limit) {
		c.held.Add(-int64(n))
		return false
	}
	return true
}

func (c *peerCounters) unhold(n int) { c.held.Add(-int64(n)) }

func (c *peerCounters) snapshot() PeerStats {
	return PeerStats{GarbageFrames: c.garbage.Load(), OversizedFrames: c.oversized.Load(), RefusedStreams: c.refused.Load()}
}
