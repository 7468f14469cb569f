package transport

import (
	"context"
	"sync"
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
	// on the peer, Call fails at once with ErrRefused. A response above
	// the call's limit (MaxResponse, else Config.MaxFrameSize) fails with
	// ErrTooLarge before its payload is read; one that does not fit the
	// peer's memory budget on either side (MaxBytesPerPeer) fails with
	// ErrRefused although the handler ran. A handler's error text is cut
	// to our MaxErrorText. Errors are *Error.
	Call(ctx context.Context, peer membership.NodeID, protocol string, req []byte, opts ...CallOption) ([]byte, error)

	// Push is Call without a response payload: it returns nil once the
	// peer's handler has returned nil for msg. Waiting for the handler
	// (rather than only for delivery) gives the sender a definite answer
	// and keeps sequential pushes from one goroutine in order. An answer
	// that carries a payload breaks the protocol: Push fails with
	// ErrProtocol without reading it, and counts it as a garbage frame.
	Push(ctx context.Context, peer membership.NodeID, protocol string, msg []byte) error

	// HandleStream registers h for protocol's long-lived streams, at most
	// limit of them open at once for each peer (limit <= 0 means
	// Config.DefaultProtocolLimit). Protocol names are shared with Handle:
	// a name is either a request protocol or a stream protocol, and opening
	// a stream on a request protocol (or calling a stream protocol) is
	// refused with ErrRefused.
	HandleStream(protocol string, h StreamHandler, limit int) error

	// OpenStream opens a stream to peer's handler for protocol and returns
	// once the peer admitted it. Like Call it waits for a stream credit
	// while the peer is slow and fails with ErrCancelled when ctx ends
	// first, and with ErrRefused when the peer has no such stream protocol
	// or the protocol is at its limit for us. ctx only bounds the opening.
	OpenStream(ctx context.Context, peer membership.NodeID, protocol string) (Stream, error)

	// ConnID returns the local id of the current connection to peer and
	// whether the peer is up. Ids grow strictly with every new connection,
	// so (ConnID, per-connection sequence) orders everything a peer sent.
	ConnID(peer membership.NodeID) (uint64, bool)

	// Peers returns the peers that are up right now, sorted.
	Peers() []membership.NodeID

	// Reserve charges n bytes to peer's memory budget
	// (Config.MaxBytesPerPeer), the budget that also bounds the
	// transport's own frames held for that peer. Layers above charge here
	// what a peer makes them hold beyond a frame (decoded copies, queued
	// messages, responses being written), so that one figure bounds a
	// peer's cost. It returns false, charging nothing, when the budget
	// cannot take n more bytes (or peer is not a member we track).
	Reserve(peer membership.NodeID, n int) bool

	// Release returns n bytes reserved with Reserve.
	Release(peer membership.NodeID, n int)

	// Close stops the transport: connections are closed, handler contexts
	// cancelled, and Close returns once every goroutine it started ended.
	Close() error
}

// Stream is one long-lived, ordered, flow-controlled exchange of frames
// with a peer, in both directions, riding on the current connection: it
// ends with that connection. It suits traffic that would otherwise be a
// stream per message (the actor remote's batches): no stream set-up, no
// handler start and no response per frame.
//
// Send and CloseSend must not be called concurrently with each other, nor
// Recv with Recv; Send and Recv may run at the same time on two
// goroutines, and Close may be called at any time from any goroutine.
type Stream interface {
	// Send writes frame as one message. Frames arrive in the order sent.
	// Send blocks while the peer's receive window is full (the peer reads
	// slower than we write): that is the stream's pushback. When ctx ends
	// first it fails with ErrCancelled and the stream is reset, because a
	// frame may have been written in part. A frame above MaxFrameSize fails
	// with ErrTooLarge and leaves the stream usable. Any other error means
	// the stream is gone (*Error, ErrNotConnected, ErrRemote when the
	// peer's handler failed, ErrClosed). frame may be reused once Send
	// returns.
	Send(ctx context.Context, frame []byte) error

	// Recv returns the next frame, or io.EOF once the peer has closed its
	// sending side and every frame before that was returned. A frame
	// returned by Recv counts against the peer's MaxBytesPerPeer until the
	// next Recv or Close; one that would exceed it, or exceeds the
	// stream's receive limit (SetRecvLimit), resets the stream
	// (ErrRefused, ErrTooLarge) before its payload is read. A frame whose
	// payload stops arriving for ProgressTimeout resets it too
	// (ErrProtocol). Errors other than io.EOF are *Error. Close unblocks a
	// waiting Recv.
	Recv() ([]byte, error)

	// SetRecvLimit bounds the frames Recv accepts from now on, in bytes:
	// a larger one is refused as described under Recv and counted as an
	// oversized frame. n <= 0, or above MaxFrameSize, means MaxFrameSize
	// (the default). A protocol that knows what a direction can carry
	// (acknowledgements of a few bytes, batches of at most its own size
	// limit) sets it so that a peer cannot make it hold MaxFrameSize there.
	// Call it before Recv or on Recv's goroutine.
	SetRecvLimit(n int)

	// CloseSend ends our direction after the frames already sent; the peer
	// sees io.EOF once it has read them. Recv keeps working.
	CloseSend() error

	// Close abandons the stream in both directions at once: unsent data is
	// discarded and the peer's Send and Recv fail. It is idempotent.
	Close()

	// ConnID is the local id of the connection the stream rides on.
	ConnID() uint64
}

// StreamHandler serves one incoming stream for as long as it lives; ctx
// ends when the peer abandons the stream (Close), the connection dies or
// the transport closes. When the handler returns nil the stream's sending
// side is closed cleanly (the peer's Recv sees io.EOF) and the peer's
// further Sends fail with ErrNotConnected; a non-nil error resets the stream and the
// peer's Send and Recv fail with ErrRemote. The handler must not keep using
// s after it returns.
type StreamHandler func(ctx context.Context, peer membership.NodeID, s Stream) error

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

// CallOption adjusts one Call.
type CallOption func(*callOptions)

type callOptions struct {
	maxResponse int
}

// MaxResponse bounds the response a Call accepts to n bytes (n < 0 counts
// as 0). A larger one fails the Call with ErrTooLarge from its length
// alone, its payload unread, and is counted against the peer as an
// oversized frame. Without it a Call accepts up to Config.MaxFrameSize;
// give every Call the most its request can legitimately return (a fetch:
// the largest encoded artifact), so that a peer cannot make us read more.
func MaxResponse(n int) CallOption {
	return func(o *callOptions) { o.maxResponse = max(n, 0) }
}

// responseLimit is what a Call with opts accepts under cfg.
func responseLimit(cfg Config, opts []CallOption) int {
	o := callOptions{maxResponse: cfg.MaxFrameSize}
	for _, opt := range opts {
		opt(&o)
	}
	return min(o.maxResponse, cfg.MaxFrameSize)
}

// PeerStats counts one peer's misbehaviour and our refusals.
type PeerStats struct {
	// GarbageFrames: frames that break the wire protocol: undecodable
	// headers, frames or responses, trailing bytes, a Push answered with a
	// payload, and requests or stream frames that stalled part way
	// (HeaderTimeout, ProgressTimeout).
	GarbageFrames uint64
	// OversizedFrames: frames above MaxFrameSize (either direction), above
	// a stream's receive limit, or responses above a Call's MaxResponse.
	OversizedFrames uint64
	// RefusedStreams: incoming streams refused (no handler, protocol busy)
	// and requests, responses and stream frames refused because the peer's
	// memory budget (MaxBytesPerPeer) could not take them.
	RefusedStreams uint64
	// StalledWrites: requests or responses we were writing to the peer
	// that made no progress for ProgressTimeout (the peer stopped reading);
	// their streams were reset.
	StalledWrites uint64
}

type peerCounters struct {
	garbage, oversized, refused, stalled atomic.Uint64
	// held is what this peer makes us hold in memory now, in bytes,
	// bounded by Config.MaxBytesPerPeer (see there for what is charged).
	held atomic.Int64
}

// hold reserves n bytes of the peer's memory budget, or reports false.
func (c *peerCounters) hold(n, limit int) bool {
	if c.held.Add(int64(n)) > int64(limit) {
		c.held.Add(-int64(n))
		return false
	}
	return true
}

func (c *peerCounters) unhold(n int) { c.held.Add(-int64(n)) }

// counterTable holds the counters of every peer ever seen. Lookups take no
// lock: Reserve and Release, which the layers above call per decoded
// message or chunk, cost a map read and an atomic add.
type counterTable struct{ m sync.Map } // membership.NodeID -> *peerCounters

// get returns peer's counters, made on first use.
func (t *counterTable) get(peer membership.NodeID) *peerCounters {
	if v, ok := t.m.Load(peer); ok {
		return v.(*peerCounters)
	}
	v, _ := t.m.LoadOrStore(peer, &peerCounters{})
	return v.(*peerCounters)
}

// stats returns peer's counters (zero if never seen).
func (t *counterTable) stats(peer membership.NodeID) PeerStats {
	if v, ok := t.m.Load(peer); ok {
		return v.(*peerCounters).snapshot()
	}
	return PeerStats{}
}

func (c *peerCounters) snapshot() PeerStats {
	return PeerStats{GarbageFrames: c.garbage.Load(), OversizedFrames: c.oversized.Load(), RefusedStreams: c.refused.Load(), StalledWrites: c.stalled.Load()}
}
