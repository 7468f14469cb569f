package transport

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/rs/zerolog"
)

// HandshakeStats counts incoming QUIC handshakes: the work the node does
// for anyone who can send it a packet, before TLS has said who they are.
type HandshakeStats struct {
	// InProgress is the number of incoming handshakes holding state now,
	// at most Config.MaxPendingHandshakes.
	InProgress int64
	// Completed handshakes were handed to the transport (which then runs
	// the welcome exchange; only members get that far).
	Completed uint64
	// Retries counts first packets answered with a QUIC Retry because
	// more than RetryHandshakesAbove handshakes were in progress. A client
	// that cannot receive at its claimed address never comes back.
	Retries uint64
	// Refused handshakes were turned away at their first packet because
	// MaxPendingHandshakes were in progress (logged, rate-limited).
	Refused uint64
	// Failed handshakes ended with an error: TLS refused the peer (not a
	// member, wrong key or ALPN) or it broke the protocol (logged,
	// rate-limited).
	Failed uint64
	// Abandoned handshakes timed out: the client went silent
	// (AcceptHandshakeTimeout).
	Abandoned uint64
}

// handshakeGate applies the limits on incoming handshakes through quic-go's
// hooks: VerifySourceAddress (Retry above a threshold) and ConnContext
// (count, refuse above the cap, learn how each ended).
type handshakeGate struct {
	max, retryAbove int64
	ctx             context.Context // the transport's: after it ends, endings are not logged
	log             zerolog.Logger

	inProgress                                     atomic.Int64
	completed, retries, refused, failed, abandoned atomic.Uint64

	refusedLog, failedLog rateLimitedLog
}

var errTooManyHandshakes = errors.New("too many handshakes in progress")

// pendingHandshake is the ConnContext value of a connection whose
// handshake is counted in inProgress until it ends one way or the other.
type pendingHandshake struct {
	once sync.Once
	stop func() bool
}

type pendingHandshakeKey struct{}

func newHandshakeGate(ctx context.Context, cfg Config, log zerolog.Logger) *handshakeGate {
	return &handshakeGate{
		max:        int64(cfg.MaxPendingHandshakes),
		retryAbove: int64(cfg.RetryHandshakesAbove),
		ctx:        ctx,
		log:        log,
	}
}

// install sets the gate's hooks on qt, which must not have its own.
func (g *handshakeGate) install(qt *quic.Transport) error {
	if qt.ConnContext != nil || qt.VerifySourceAddress != nil {
		return errors.New("quicremote: the quic.Transport's ConnContext and VerifySourceAddress must be nil: the transport sets them to bound incoming handshakes")
	}
	qt.VerifySourceAddress = g.verifySourceAddress
	qt.ConnContext = g.connContext
	return nil
}

// verifySourceAddress is asked by quic-go about each first packet that
// carries no valid address token. Validation set to start at the cap
// means no validation: the cap refuses instead.
func (g *handshakeGate) verifySourceAddress(net.Addr) bool {
	if g.retryAbove >= g.max || g.inProgress.Load() < g.retryAbove {
		return false
	}
	g.retries.Add(1)
	return true
}

// connContext runs when quic-go is about to create state for a new
// incoming connection; an error makes it refuse the connection instead.
func (g *handshakeGate) connContext(ctx context.Context, info *quic.ClientInfo) (context.Context, error) {
	if g.inProgress.Add(1) > g.max {
		g.inProgress.Add(-1)
		n := g.refused.Add(1)
		if ok, suppressed := g.refusedLog.allow(time.Now()); ok {
			g.log.Warn().Str("addr", info.RemoteAddr.String()).Bool("addr_verified", info.AddrVerified).
				Int64("limit", g.max).Uint64("refused_total", n).Int("suppressed", suppressed).
				Msg("incoming handshake refused: too many in progress")
		}
		return nil, errTooManyHandshakes
	}
	p := &pendingHandshake{}
	addr := info.RemoteAddr.String()
	p.stop = context.AfterFunc(ctx, func() { g.ended(p, addr, context.Cause(ctx)) })
	return context.WithValue(ctx, pendingHandshakeKey{}, p), nil
}

// completed marks conn's handshake done; the transport calls it for every
// connection it accepts.
func (g *handshakeGate) complete(conn *quic.Conn) {
	p, ok := conn.Context().Value(pendingHandshakeKey{}).(*pendingHandshake)
	if !ok {
		return
	}
	p.once.Do(func() {
		p.stop()
		g.inProgress.Add(-1)
		g.completed.Add(1)
	})
}

// ended accounts for a handshake whose connection ended before we accepted
// it.
func (g *handshakeGate) ended(p *pendingHandshake, addr string, cause error) {
	p.once.Do(func() {
		g.inProgress.Add(-1)
		var timeout interface{ Timeout() bool }
		if errors.As(cause, &timeout) && timeout.Timeout() {
			g.abandoned.Add(1)
			return
		}
		n := g.failed.Add(1)
		if g.ctx.Err() != nil {
			return // our own shutdown closed it
		}
		if ok, suppressed := g.failedLog.allow(time.Now()); ok {
			g.log.Warn().Str("addr", addr).AnErr("cause", cause).Uint64("failed_total", n).Int("suppressed", suppressed).
				Msg("incoming handshake failed")
		}
	})
}

func (g *handshakeGate) stats() HandshakeStats {
	return HandshakeStats{
		InProgress: g.inProgress.Load(),
		Completed:  g.completed.Load(),
		Retries:    g.retries.Load(),
		Refused:    g.refused.Load(),
		Failed:     g.failed.Load(),
		Abandoned:  g.abandoned.Load(),
	}
}

// rateLimitedLog lets one line through per second and counts the rest, so
// a flood is visible in the log without the log becoming the flood.
type rateLimitedLog struct {
	mu         sync.Mutex
	next       time.Time
	suppressed int
}

func (l *rateLimitedLog) allow(now time.Time) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Before(l.next) {
		l.suppressed++
		return false, 0
	}
	l.next = now.Add(time.Second)
	suppressed, l.suppressed = l.suppressed, 0
	return true, suppressed
}
