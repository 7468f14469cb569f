package demo

import (
	"net"
	"sync"
	"sync/atomic"
)

// cuttableConn is a UDP socket whose outgoing packets to chosen addresses
// are dropped: a link between two nodes is cut by cutting it on both ends.
// The wrapper hides the *net.UDPConn from quic-go, which then cannot use
// segmentation offload; fine for a demo, not for production (hand quic-go
// the raw socket there).
type cuttableConn struct {
	net.PacketConn
	mu      sync.RWMutex
	cut     map[string]bool
	dropped atomic.Uint64
}

func newCuttableConn(pc net.PacketConn) *cuttableConn {
	return &cuttableConn{PacketConn: pc, cut: map[string]bool{}}
}

func (c *cuttableConn) setCut(addr string, cut bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cut {
		c.cut[addr] = true
	} else {
		delete(c.cut, addr)
	}
}

// WriteTo drops packets for a cut address and reports them as sent, as a
// lossy network would.
func (c *cuttableConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	c.mu.RLock()
	drop := c.cut[addr.String()]
	c.mu.RUnlock()
	if drop {
		c.dropped.Add(1)
		return len(p), nil
	}
	return c.PacketConn.WriteTo(p, addr)
}
