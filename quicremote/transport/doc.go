// Package transport moves bytes between the members of a subnet over QUIC
// (quic-go), with member-only mutual TLS, one connection per member pair,
// request/response RPC multiplexed by protocol name, and caller pushback.
// MemTransport is its in-memory twin with the same contract (the RPC
// interface); the conformance suite in this package runs against both.
//
// # Connections
//
// The transport follows a membership.Source. Of two members the one with
// the lower NodeID dials, the other only accepts; a connection from a peer
// that should have waited is refused. A TLS handshake succeeds only if the
// peer's key belongs to a member of the source's latest snapshot and, when
// dialling, hashes to the NodeID we meant to reach. Because quic-go reports
// a dial as successful before the server has checked our certificate, a
// connection only counts once an application-level welcome has been
// exchanged on its first stream; only then is PeerUp{Peer, ConnID}
// delivered. ConnIDs are local, start at 1 and grow with every new
// connection (to any peer). When a connection dies the dialler redials
// after ReconnectBackoffMin, doubling the delay after each failure up to
// ReconnectBackoffMax; the acceptor waits. A newer connection from the
// same peer replaces the older one (PeerDown for the old, then PeerUp).
//
// Snapshot changes take effect at once: a new member is dialled (if we are
// the lower id), a removed member's connection is closed and its next
// handshakes refused, a member whose address changed is redialled.
//
// Liveness: QUIC keep-alives every KeepAlive and an IdleTimeout notice a
// silent peer. In addition a 64-byte heartbeat datagram is sent every
// KeepAlive, because quic-go answers only packets above 42 bytes with a
// stateless reset. With the stateless-reset key derived from the node key
// (StatelessResetKey), a peer that restarted answers our next heartbeat
// with a reset we can verify, so its restart is noticed within about one
// KeepAlive instead of one IdleTimeout.
//
// # Requests
//
// Call and Push each open a bidirectional stream: version, kind and
// protocol name, then one length-prefixed frame; the answer is a status
// byte and one length-prefixed frame (the response, or the handler's error
// text). Push waits for the handler to return but carries no response: an
// answer with a payload is a protocol violation. Cancelling the caller's
// context resets the stream; the handler's context ends. Frames above
// MaxFrameSize are refused on either side, and a Call refuses a response
// above its MaxResponse from the length alone.
//
// Bytes in transit must keep moving. An incoming stream has HeaderTimeout
// to deliver its header and frame length; after that a payload we read
// (request, response, stream frame) or a request or response we write
// must move at least 1 KiB (or to its end) in every period of
// ProgressTimeout, or the stream is reset and counted: a stalled read as
// a garbage frame, a stalled write (the peer stopped reading) in
// StalledWrites. A peer that stops is cut off within one to three periods
// (the period in which its windows filled still moved bytes). The floor
// is low on purpose: on a lossy link shared by many streams each moves
// slowly, and slow is not stalled. Only the wait for a handler and writes
// on long-lived streams are exempt.
//
// # Streams
//
// OpenStream/HandleStream give a long-lived stream per use instead of one
// per request: the same header with kind "stream", an admission byte from
// the receiver, then length-prefixed frames both ways until each side's
// FIN. It saves the stream set-up, handler start and response of every
// request where a sender has a steady flow (the actor remote's batches).
// A stream holds one of the peer's stream credits and one slot of its
// protocol's per-peer limit for as long as it lives; each frame is bounded
// by the receiver's limit (MaxFrameSize, or less with SetRecvLimit) and,
// while the receiver holds it (until its next Recv), charged to
// MaxBytesPerPeer; QUIC's stream flow control makes a writer whose reader
// is slow block in Send.
//
// # What a caller sees when the peer is slow
//
//   - A connection admits at most MaxIncomingStreams concurrent requests
//     from the peer, and a request's stream credit is handed back only when
//     its handler has returned and its response has been sent (quic-go's
//     RequireStreamCreditRelease). When they are all taken, the next
//     Call/Push blocks while opening its stream and fails with ErrCancelled
//     when its context ends. Nothing is queued on the receiver beyond that
//     bound.
//   - Each protocol has its own concurrency limit (Handle's limit), counted
//     per peer, so a peer that saturates a protocol never gets another
//     peer's requests refused. A request whose peer is at the protocol's
//     limit is refused at once (stream reset with a
//     "busy" code, its data discarded unread): the caller gets ErrRefused and
//     may back off and retry. The header is read as soon as a stream arrives,
//     and every admitted request is read completely into memory before its
//     handler runs, so a slow protocol never leaves bytes unread on the
//     connection and never stalls another protocol. Keep each protocol's
//     limit below MaxIncomingStreams (and their sum, for protocols that may
//     stall together) so that stuck handlers cannot take every credit.
//
// # Memory bounds
//
// Per peer, what it can make us hold is bounded by MaxBytesPerPeer: its
// requests from their length prefix until their handler returns, the
// stream frames it sent until the next Recv, the responses we write to it
// until sent, the responses we read from it while reading, and what the
// layers above Reserve for it. What does not fit is refused without
// waiting (ErrRefused for requests and responses; the stream reset for
// stream frames). On top of that come the connection's flow-control
// windows (MaxConnectionWindow) and quic-go's own per-connection state.
//
// Before a peer is known at all, incoming handshakes are bounded by
// MaxPendingHandshakes: about 25 KB of heap and four goroutines each
// (quic-go v0.65, measured), for at most 2 × AcceptHandshakeTimeout. Above
// RetryHandshakesAbove in progress, a new handshake must first prove its
// address with a QUIC Retry, so a flood of spoofed or silent first packets
// holds at most RetryHandshakesAbove of them; above MaxPendingHandshakes
// new handshakes are refused. Handshakes counts all of this; refusals and
// failed handshakes (TLS refusals of non-members among them) are logged at
// most once a second with the number left out. Connections already up are
// not affected by either limit.
//
// # Errors and counters
//
// Every Call/Push error is an *Error naming the peer and protocol, matching
// one of ErrUnknownPeer, ErrNotConnected, ErrCancelled, ErrTooLarge,
// ErrRefused, ErrRemote, ErrProtocol or ErrClosed with errors.Is and
// unwrapping to its cause. Undecodable, stalled or oversized frames,
// refusals and stalled writes are counted per peer (Stats); non-QUIC
// datagrams per transport (GarbageDatagrams), and incoming handshakes in
// Handshakes. Peer input never panics the node; a panicking handler is
// reported to the caller as ErrRemote.
//
// # Sockets
//
// New takes any net.PacketConn and leaves closing it to the caller; tests
// run the full stack over quic-go's testutils/simnet inside testing/synctest.
// In production hand it the raw *net.UDPConn: a wrapper disables UDP
// segmentation offload, which roughly halves bulk throughput.
package transport
