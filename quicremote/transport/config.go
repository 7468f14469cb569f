package transport

import (
	"errors"
	"fmt"
	"time"
)

// ALPN is the TLS application protocol both ends must offer. A peer that
// speaks anything else fails the handshake.
const ALPN = "abcast/1"

// Config holds the transport's limits and timers. Start from DefaultConfig
// and change what you need; New calls Validate.
type Config struct {
	// MaxFrameSize is the largest request or response payload, in bytes.
	// Default 128 MiB, the reference's maximum artifact size. A frame is
	// held in memory whole; MaxBytesPerPeer bounds how many a peer may have
	// us hold at once. Must be in 1..2^32-1 (the length prefix is 32 bits).
	MaxFrameSize int

	// MaxBytesPerPeer bounds everything one peer can make us hold in
	// memory at once, in bytes. Charged to it, each for as long as it is
	// held:
	//   - a request frame it sent, from its length prefix until its handler
	//     returned;
	//   - a frame on a long-lived stream, from Recv until the next Recv;
	//   - a response we write to it, until the last byte was taken by QUIC
	//     (or the stream was reset);
	//   - a response we read from it, while Call reads it;
	//   - whatever the layers above charge with RPC.Reserve (decoded
	//     copies, queued messages).
	// What does not fit is refused without waiting: a request before its
	// payload is read, a response before it is written or read (the caller
	// sees ErrRefused and may retry), a stream frame by resetting the
	// stream. Without it a peer could make us hold MaxIncomingStreams ×
	// MaxFrameSize (12.8 GiB with the defaults) in requests alone, and as
	// much again in responses it never reads. Must be at least
	// MaxFrameSize. Default 256 MiB: two frames of the largest size, so one
	// large transfer each way fits beside small traffic.
	MaxBytesPerPeer int

	// MaxIncomingStreams bounds the streams a peer may have open towards us
	// at once on one connection, counting streams whose handler is still
	// running. This is the caller pushback: once it is reached the peer's
	// next Call/Push waits in stream opening until one of our handlers
	// finishes (credit is released only then), or until its context ends.
	// Default 100: measured on loopback, ~100 in flight gives the best
	// request rate, while 1,000 (the reference's value) lowers it.
	MaxIncomingStreams int

	// DefaultProtocolLimit is the handler concurrency used when Handle is
	// given limit <= 0. Default 32, well below MaxIncomingStreams so that
	// one stuck protocol cannot take every stream of a connection.
	DefaultProtocolLimit int

	// KeepAlive is how often an idle connection sends a ping. Default 1 s
	// (the reference's value): with IdleTimeout it makes a silent peer
	// noticed within seconds.
	KeepAlive time.Duration

	// IdleTimeout closes a connection after this long without any packet
	// from the peer. Default 5 s. Must exceed KeepAlive.
	IdleTimeout time.Duration

	// HandshakeTimeout bounds a dial: QUIC and TLS handshake together.
	// Default 5 s.
	HandshakeTimeout time.Duration

	// WelcomeTimeout bounds the application-level welcome exchange that
	// follows the handshake (a peer is only reported up after it). Default
	// 5 s.
	WelcomeTimeout time.Duration

	// HeaderTimeout is how long an incoming stream may take to deliver its
	// header (protocol name and, for a request, the frame length) before it
	// is reset and counted as garbage. It stops a peer from holding stream
	// slots without saying what it wants. Default 5 s.
	HeaderTimeout time.Duration

	// ProgressTimeout is the period in which a frame in transit must move
	// at least 1 KiB (or reach its end): a request or response payload we
	// read (or the end of a request), a stream frame once its length
	// arrived, and a request or response we write. A write that stalls
	// means the peer stopped reading (its flow control holds us); a read
	// that stalls means it stopped sending part way. Either way the stream
	// is reset, what it held of the peer's budget is given back, and it is
	// counted (StalledWrites, or GarbageFrames for reads). Not applied to
	// writes on long-lived streams, where a reader that falls behind is
	// the intended pushback (Stream.Send takes a context instead), nor to
	// the wait for a handler's answer. Default 10 s, so the floor is
	// 100 B/s per stream: a link at 20% loss and 150 ms one-way shared by
	// a dozen fetches moves each faster than that, and only a peer that
	// stopped reading (or sending) is cut off, within one to three
	// periods. What a slow peer holds meanwhile is bounded by
	// MaxBytesPerPeer, not by this timeout.
	ProgressTimeout time.Duration

	// MaxPendingHandshakes bounds incoming QUIC handshakes in progress
	// (from the client's first packet until we accept the connection). A
	// handshake costs state before the client has proved anything, not
	// even its address: about 25 KB of heap and four goroutines in quic-go
	// (measured on v0.65), for up to 2 × AcceptHandshakeTimeout. One
	// beyond the bound is refused at once (CONNECTION_REFUSED, counted in
	// Handshakes().Refused and logged at most once a second). So the
	// unauthenticated world can cost us at most MaxPendingHandshakes ×
	// (25 KB + 4 goroutines): 6.4 MB and 1,024 goroutines with the
	// default. Default 256, far above what honest members need (one
	// handshake per lower-id member reconnecting, all at once after a
	// restart of ours).
	MaxPendingHandshakes int

	// RetryHandshakesAbove is the number of handshakes in progress above
	// which a new one must first prove its source address with a QUIC Retry
	// (one extra round trip; quic-go's Transport.VerifySourceAddress).
	// Spoofed packets never complete a Retry, so a flood from forged or
	// silent addresses holds at most this many handshakes; only clients
	// that really receive at their address can take the rest of
	// MaxPendingHandshakes. Default 32: a node reconnecting to a few dozen
	// peers pays no extra round trip, a flood does. Must be in
	// 0..MaxPendingHandshakes: 0 validates every handshake,
	// MaxPendingHandshakes none (the cap alone then refuses the excess,
	// also from spoofed addresses, so honest newcomers are refused while a
	// flood lasts).
	RetryHandshakesAbove int

	// AcceptHandshakeTimeout is the handshake idle timeout of incoming
	// connections (quic-go's HandshakeIdleTimeout on the listener): a client
	// silent this long is dropped, and any handshake is dropped after twice
	// this. It bounds how long a silent handshake holds one of
	// MaxPendingHandshakes. Default 1 s: an honest client retransmits well
	// within that (quic-go's first retransmission timeouts are a few
	// hundred milliseconds on our paths); one unlucky enough to lose three
	// in a row redials after ReconnectBackoffMin. Dials keep
	// HandshakeTimeout.
	AcceptHandshakeTimeout time.Duration

	// ReconnectBackoffMin and ReconnectBackoffMax bound the delay between
	// dial attempts to a peer: it starts at Min, doubles after each failure
	// up to Max, and returns to Min once a connection was up. Defaults
	// 250 ms and 3 s (the reference redials every 3 s). Max stays short
	// because only one side of a pair dials: when the other side refuses
	// us because its registry does not list us yet, it cannot call back
	// once it does, so our next attempt must come soon.
	ReconnectBackoffMin time.Duration
	ReconnectBackoffMax time.Duration

	// Stream and connection flow-control windows, in bytes. Every stream
	// is read promptly (a frame goes straight into memory for its handler,
	// or the stream is reset), so the windows limit what the kernel and
	// quic-go buffer, not what a stuck handler pins. The connection window
	// is three stream windows so that one large transfer never starves the
	// small requests multiplexed beside it. Defaults: stream 512 KiB
	// growing to 8 MiB, connection 1.5 MiB growing to 24 MiB.
	InitialStreamWindow     uint64
	MaxStreamWindow         uint64
	InitialConnectionWindow uint64
	MaxConnectionWindow     uint64

	// MaxErrorText truncates a handler's error text sent back to the
	// caller, in bytes. Default 1 KiB.
	MaxErrorText int
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		MaxFrameSize:            128 << 20,
		MaxBytesPerPeer:         256 << 20,
		MaxIncomingStreams:      100,
		DefaultProtocolLimit:    32,
		KeepAlive:               time.Second,
		IdleTimeout:             5 * time.Second,
		HandshakeTimeout:        5 * time.Second,
		WelcomeTimeout:          5 * time.Second,
		HeaderTimeout:           5 * time.Second,
		ProgressTimeout:         10 * time.Second,
		MaxPendingHandshakes:    256,
		RetryHandshakesAbove:    32,
		AcceptHandshakeTimeout:  time.Second,
		ReconnectBackoffMin:     250 * time.Millisecond,
		ReconnectBackoffMax:     3 * time.Second,
		InitialStreamWindow:     512 << 10,
		MaxStreamWindow:         8 << 20,
		InitialConnectionWindow: 1536 << 10,
		MaxConnectionWindow:     24 << 20,
		MaxErrorText:            1 << 10,
	}
}

// Validate reports the first field that is out of range.
func (c Config) Validate() error {
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	check(c.MaxFrameSize > 0 && uint64(c.MaxFrameSize) <= 1<<32-1, "MaxFrameSize %d out of 1..2^32-1", c.MaxFrameSize)
	check(c.MaxBytesPerPeer >= c.MaxFrameSize, "MaxBytesPerPeer %d below MaxFrameSize %d", c.MaxBytesPerPeer, c.MaxFrameSize)
	check(c.MaxIncomingStreams > 0, "MaxIncomingStreams %d must be positive", c.MaxIncomingStreams)
	check(c.DefaultProtocolLimit > 0 && c.DefaultProtocolLimit <= c.MaxIncomingStreams,
		"DefaultProtocolLimit %d out of 1..MaxIncomingStreams", c.DefaultProtocolLimit)
	check(c.KeepAlive > 0, "KeepAlive %v must be positive", c.KeepAlive)
	check(c.IdleTimeout > c.KeepAlive, "IdleTimeout %v must exceed KeepAlive %v", c.IdleTimeout, c.KeepAlive)
	check(c.HandshakeTimeout > 0, "HandshakeTimeout %v must be positive", c.HandshakeTimeout)
	check(c.WelcomeTimeout > 0, "WelcomeTimeout %v must be positive", c.WelcomeTimeout)
	check(c.HeaderTimeout > 0, "HeaderTimeout %v must be positive", c.HeaderTimeout)
	check(c.ProgressTimeout > 0, "ProgressTimeout %v must be positive", c.ProgressTimeout)
	check(c.MaxPendingHandshakes > 0, "MaxPendingHandshakes %d must be positive", c.MaxPendingHandshakes)
	check(c.RetryHandshakesAbove >= 0 && c.RetryHandshakesAbove <= c.MaxPendingHandshakes,
		"RetryHandshakesAbove %d out of 0..MaxPendingHandshakes", c.RetryHandshakesAbove)
	check(c.AcceptHandshakeTimeout > 0, "AcceptHandshakeTimeout %v must be positive", c.AcceptHandshakeTimeout)
	check(c.ReconnectBackoffMin > 0 && c.ReconnectBackoffMax >= c.ReconnectBackoffMin,
		"reconnect backoff %v..%v invalid", c.ReconnectBackoffMin, c.ReconnectBackoffMax)
	check(c.InitialStreamWindow > 0 && c.MaxStreamWindow >= c.InitialStreamWindow,
		"stream window %d..%d invalid", c.InitialStreamWindow, c.MaxStreamWindow)
	check(c.InitialConnectionWindow >= c.InitialStreamWindow && c.MaxConnectionWindow >= c.InitialConnectionWindow,
		"connection window %d..%d invalid (must be at least the stream window)", c.InitialConnectionWindow, c.MaxConnectionWindow)
	check(c.MaxErrorText >= 0, "MaxErrorText %d must not be negative", c.MaxErrorText)
	if len(errs) > 0 {
		return fmt.Errorf("quicremote: invalid config: %w", errors.Join(errs...))
	}
	return nil
}
