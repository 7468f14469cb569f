package testnet

import (
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go/testutils/simnet"

	"github.com/abcast/abcast/actors"
)

// SimOptions describe the simulated network.
type SimOptions struct {
	// Latency is the one-way delay of every link.
	Latency time.Duration
	// Loss is the probability that a packet is dropped.
	Loss float64
	// Seed drives the loss decisions.
	Seed uint64
}

// Router is a simnet router with loss, and links that can be cut.
type Router struct {
	simnet.PerfectRouter
	mu      sync.Mutex
	rng     *rand.Rand
	loss    float64
	blocked map[[2]string]bool
	Dropped uint64
}

// SendPacket drops the packet if its link is cut or the dice say so.
func (r *Router) SendPacket(p simnet.Packet) error {
	r.mu.Lock()
	drop := r.blocked[[2]string{p.From.String(), p.To.String()}] || (r.loss > 0 && r.rng.Float64() < r.loss)
	if drop {
		r.Dropped++
	}
	r.mu.Unlock()
	if drop {
		return nil
	}
	return r.PerfectRouter.SendPacket(p)
}

// SetLoss changes the loss probability.
func (r *Router) SetLoss(p float64) {
	r.mu.Lock()
	r.loss = p
	r.mu.Unlock()
}

func (r *Router) set(a, b string, cut bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.blocked == nil {
		r.blocked = make(map[[2]string]bool)
	}
	r.blocked[[2]string{a, b}] = cut
	r.blocked[[2]string{b, a}] = cut
}

// NewSim builds a subnet on quic-go's simulated network: real QUIC, real
// TLS, real actors, virtual links. Call it inside testing/synctest.Test so
// timeouts and latency run in virtual time.
func NewSim(t testing.TB, n int, cfg actors.Config, opt SimOptions) *Cluster {
	c := newCluster(t, n, cfg)
	router := &Router{rng: rand.New(rand.NewPCG(opt.Seed, opt.Seed+1)), loss: opt.Loss}
	c.router, c.simLatency = router, opt.Latency
	for i := range n {
		udp := &net.UDPAddr{IP: net.IPv4(10, 0, 0, byte(i+1)), Port: 4000}
		c.Addrs[i] = udp.String()
		c.conns[i] = c.simEndpoint(udp)
	}
	c.makeRegistry()
	t.Cleanup(func() {
		for _, l := range c.simLinks {
			l.Close()
		}
	})
	return c
}

// simEndpoint attaches a started link for addr to the router; unlike
// simnet.Simnet it can add endpoints after the network started, which a
// restarted node needs.
func (c *Cluster) simEndpoint(addr *net.UDPAddr) *simnet.SimConn {
	link := &simnet.SimulatedLink{Latency: c.simLatency, UploadPacket: c.router}
	conn := simnet.NewBlockingSimConn(addr, link)
	link.Start() // before the router can hand it packets
	c.router.AddNode(addr, link)
	c.simLinks = append(c.simLinks, link)
	return conn
}

// Router returns the simulated network's router (nil for other clusters).
func (c *Cluster) Router() *Router { return c.router }

// Cut and Heal break and restore the link between nodes i and j (both
// directions). On a simulated network packets are dropped; on the memory
// network the link is disconnected.
func (c *Cluster) Cut(i, j int) {
	switch {
	case c.router != nil:
		c.router.set(c.Addrs[i], c.Addrs[j], true)
	case c.Mem != nil:
		c.Mem.Disconnect(c.IDs[i].ID, c.IDs[j].ID)
	case c.faults != nil:
		c.setFaultCut(i, j, true)
	default:
		c.t.Fatal("testnet: Cut needs a simulated or memory network")
	}
}

// Heal restores the link between nodes i and j.
func (c *Cluster) Heal(i, j int) {
	switch {
	case c.router != nil:
		c.router.set(c.Addrs[i], c.Addrs[j], false)
	case c.Mem != nil:
		c.Mem.Connect(c.IDs[i].ID, c.IDs[j].ID)
	case c.faults != nil:
		c.setFaultCut(i, j, false)
	default:
		c.t.Fatal("testnet: Heal needs a simulated or memory network")
	}
}

func (c *Cluster) setFaultCut(i, j int, cut bool) {
	if f := c.faults[i]; f != nil {
		f.SetCut(c.Addrs[j], cut)
	}
	if f := c.faults[j]; f != nil {
		f.SetCut(c.Addrs[i], cut)
	}
}

// CloseInBubble stops every node of a cluster running inside a
// testing/synctest bubble, then lets virtual time pass protoactor-go's
// dead-letter log throttle (a 1 s timer goroutine it starts per burst), so
// the bubble ends with no goroutine left behind.
func (c *Cluster) CloseInBubble() {
	c.CloseAll()
	time.Sleep(2 * time.Second) // virtual time; no event to wait for
}
