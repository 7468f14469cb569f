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
	// held in memory whole; MaxRequestBytesPerPeer bounds how many a peer
	// may have us hold at once.
	// Must be in 1..2^32-1 (the length prefix is 32 bits).
	MaxFrameSize int

	// MaxRequestBytesPerPeer bounds the request bytes one peer may have
	// in our memory at once (read and not yet answered by their handlers).
	// A request that would exceed it is refused before its payload is read
	// (ErrRefused at the caller, who may retry). Without it a peer could make
	// us hold MaxIncomingStreams × MaxFrameSize (12.8 GiB with the
	// defaults). Must be at least MaxFrameSize. Default 256 MiB.
	MaxRequestBytesPerPeer int

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
	// header (protocol name) before it is reset and counted as garbage. It
	// stops a peer from holding stream slots without saying what it wants.
	// Default 5 s.
	HeaderTimeout time.Duration

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
		MaxRequestBytesPerPeer:  256 << 20,
		MaxIncomingStreams:      100,
		DefaultProtocolLimit:    32,
		KeepAlive:               time.Second,
		IdleTimeout:             5 * time.Second,
		HandshakeTimeout:        5 * time.Second,
		WelcomeTimeout:          5 * time.Second,
		HeaderTimeout:           5 * time.Second,
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
	check(c.MaxRequestBytesPerPeer >= c.MaxFrameSize, "MaxRequestBytesPerPeer %d below MaxFrameSize %d", c.MaxRequestBytesPerPeer, c.MaxFrameSize)
	check(c.MaxIncomingStreams > 0, "MaxIncomingStreams %d must be positive", c.MaxIncomingStreams)
	check(c.DefaultProtocolLimit > 0 && c.DefaultProtocolLimit <= c.MaxIncomingStreams,
		"DefaultProtocolLimit %d out of 1..MaxIncomingStreams", c.DefaultProtocolLimit)
	check(c.KeepAlive > 0, "KeepAlive %v must be positive", c.KeepAlive)
	check(c.IdleTimeout > c.KeepAlive, "IdleTimeout %v must exceed KeepAlive %v", c.IdleTimeout, c.KeepAlive)
	check(c.HandshakeTimeout > 0, "HandshakeTimeout %v must be positive", c.HandshakeTimeout)
	check(c.WelcomeTimeout > 0, "WelcomeTimeout %v must be positive", c.WelcomeTimeout)
	check(c.HeaderTimeout > 0, "HeaderTimeout %v must be positive", c.HeaderTimeout)
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
