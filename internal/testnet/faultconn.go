package testnet

import (
	"math/rand/v2"
	"net"
	"sync"
	"time"
)

// FaultConn wraps a real UDP socket with loss, latency and cut links in
// user space (the kernel here has no netem). Wrapping disables quic-go's
// segmentation offload, so use it for fault tests, never for benchmarks.
type FaultConn struct {
	net.PacketConn
	mu      sync.Mutex
	rng     *rand.Rand
	loss    float64
	latency time.Duration
	cut     map[string]bool
	closed  bool
	pending sync.WaitGroup
}

// NewFaultConn wraps pc.
func NewFaultConn(pc net.PacketConn, loss float64, latency time.Duration, seed uint64) *FaultConn {
	return &FaultConn{PacketConn: pc, rng: rand.New(rand.NewPCG(seed, seed^0x5bd1e995)), loss: loss, latency: latency, cut: map[string]bool{}}
}

// SetCut drops (or stops dropping) everything sent to addr.
func (f *FaultConn) SetCut(addr string, cut bool) {
	f.mu.Lock()
	f.cut[addr] = cut
	f.mu.Unlock()
}

// WriteTo sends p after the latency unless the packet is lost or its link cut.
func (f *FaultConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	f.mu.Lock()
	drop := f.cut[addr.String()] || (f.loss > 0 && f.rng.Float64() < f.loss)
	closed := f.closed
	f.mu.Unlock()
	if drop || closed {
		return len(p), nil
	}
	if f.latency <= 0 {
		return f.PacketConn.WriteTo(p, addr)
	}
	buf := append([]byte(nil), p...)
	f.pending.Add(1)
	time.AfterFunc(f.latency, func() {
		defer f.pending.Done()
		f.PacketConn.WriteTo(buf, addr)
	})
	return len(p), nil
}

// Close closes the socket once delayed packets have gone out.
func (f *FaultConn) Close() error {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	f.pending.Wait()
	return f.PacketConn.Close()
}

// NewQUICFaulty is NewQUIC with every socket wrapped in a FaultConn.
func NewQUICFaulty(t interface {
	Fatal(...any)
	Helper()
}, c *Cluster, loss float64, latency time.Duration, seed uint64) {
	for i, pc := range c.conns {
		if pc != nil {
			c.conns[i] = NewFaultConn(pc, loss, latency, seed+uint64(i))
		}
	}
	c.faultLoss, c.faultLatency, c.faultSeed = loss, latency, seed
}
