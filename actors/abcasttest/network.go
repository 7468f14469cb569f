package abcasttest

import (
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go/testutils/simnet"
)

// Network is a simulated UDP network (quic-go's testutils/simnet) with
// faults the test controls while it runs: global and per-link loss and
// latency, cut links, and a tap that sees (and may drop) every packet.
// Inside a testing/synctest bubble its latency runs in virtual time.
//
// Links are identified by the endpoints' addresses; every method is safe
// for concurrent use.
type Network struct {
	router simnet.PerfectRouter

	mu          sync.Mutex
	rng         *rand.Rand
	loss        float64
	latency     time.Duration
	linkLoss    map[[2]string]float64
	linkLatency map[[2]string]time.Duration
	cut         map[[2]string]bool
	tap         func(Packet) bool
	links       map[string]*simnet.SimulatedLink

	dropped, delivered atomic.Uint64
}

// Packet is one datagram on the network, as a Tap sees it. Data is the
// tap's own copy.
type Packet struct {
	From, To net.Addr
	Data     []byte
}

// NewNetwork returns an empty network whose random loss decisions follow
// seed, with latency as the one-way delay of every link.
func NewNetwork(seed uint64, latency time.Duration, loss float64) *Network {
	return &Network{
		rng:         rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		loss:        loss,
		latency:     latency,
		linkLoss:    map[[2]string]float64{},
		linkLatency: map[[2]string]time.Duration{},
		cut:         map[[2]string]bool{},
		links:       map[string]*simnet.SimulatedLink{},
	}
}

// Listen attaches a new endpoint at addr and returns its socket. An
// endpoint already at addr is detached first (its socket stops receiving),
// which is what a restarted process binding the same port looks like.
func (n *Network) Listen(addr *net.UDPAddr) net.PacketConn {
	link := &simnet.SimulatedLink{UploadPacket: routerFunc(n.send), LatencyFunc: n.delay}
	conn := simnet.NewBlockingSimConn(addr, link)
	link.Start()
	n.mu.Lock()
	old := n.links[addr.String()]
	n.links[addr.String()] = link
	n.mu.Unlock()
	n.router.AddNode(addr, link)
	if old != nil {
		old.Close()
	}
	return conn
}

// close stops every link's goroutines.
func (n *Network) close() {
	n.mu.Lock()
	links := n.links
	n.links = map[string]*simnet.SimulatedLink{}
	n.mu.Unlock()
	for _, l := range links {
		l.Close()
	}
}

type routerFunc func(simnet.Packet) error

func (f routerFunc) SendPacket(p simnet.Packet) error        { return f(p) }
func (f routerFunc) AddNode(net.Addr, simnet.PacketReceiver) {}
func (n *Network) delay(p simnet.Packet) time.Duration       { return n.Latency(p.From, p.To) }
func key(a, b net.Addr) [2]string                            { return [2]string{a.String(), b.String()} }
func pair(a, b string) ([2]string, [2]string)                { return [2]string{a, b}, [2]string{b, a} }
func (n *Network) lossOf(k [2]string) float64                { return max(n.loss, n.linkLoss[k]) }
func (n *Network) setBoth(m map[[2]string]bool, a, b string, v bool) {
	k1, k2 := pair(a, b)
	m[k1], m[k2] = v, v
}

// send routes one packet: a cut link, the loss dice or the tap may drop it.
func (n *Network) send(p simnet.Packet) error {
	k := key(p.From, p.To)
	n.mu.Lock()
	drop := n.cut[k]
	if l := n.lossOf(k); !drop && l > 0 {
		drop = n.rng.Float64() < l
	}
	tap := n.tap
	n.mu.Unlock()
	if !drop && tap != nil {
		drop = !tap(Packet{From: p.From, To: p.To, Data: append([]byte(nil), p.Data...)})
	}
	if drop {
		n.dropped.Add(1)
		return nil
	}
	n.delivered.Add(1)
	return n.router.SendPacket(p)
}

// Inject puts a datagram on the network as if from had sent it (source
// addresses are not authenticated on a real network either).
func (n *Network) Inject(from, to net.Addr, data []byte) {
	_ = n.router.SendPacket(simnet.Packet{From: from, To: to, Data: append([]byte(nil), data...)})
}

// SetTap installs f, called for every packet that survived cuts and loss;
// returning false drops it. nil removes the tap. f runs on the network's
// goroutines: it must not block.
func (n *Network) SetTap(f func(Packet) bool) {
	n.mu.Lock()
	n.tap = f
	n.mu.Unlock()
}

// SetLoss sets the probability that any packet is dropped.
func (n *Network) SetLoss(p float64) {
	n.mu.Lock()
	n.loss = p
	n.mu.Unlock()
}

// SetLinkLoss sets the loss of the link between a and b (both
// directions), on top of the global loss (the larger applies).
func (n *Network) SetLinkLoss(a, b string, p float64) {
	n.mu.Lock()
	k1, k2 := pair(a, b)
	n.linkLoss[k1], n.linkLoss[k2] = p, p
	n.mu.Unlock()
}

// SetLatency sets the one-way delay of every link without its own.
func (n *Network) SetLatency(d time.Duration) {
	n.mu.Lock()
	n.latency = d
	n.mu.Unlock()
}

// SetLinkLatency sets the one-way delay between a and b (both directions).
func (n *Network) SetLinkLatency(a, b string, d time.Duration) {
	n.mu.Lock()
	k1, k2 := pair(a, b)
	n.linkLatency[k1], n.linkLatency[k2] = d, d
	n.mu.Unlock()
}

// Latency returns the one-way delay from a to b.
func (n *Network) Latency(a, b net.Addr) time.Duration {
	n.mu.Lock()
	defer n.mu.Unlock()
	if d, ok := n.linkLatency[key(a, b)]; ok {
		return d
	}
	return n.latency
}

// Cut drops everything between a and b; Heal restores it.
func (n *Network) Cut(a, b string) {
	n.mu.Lock()
	n.setBoth(n.cut, a, b, true)
	n.mu.Unlock()
}

// Heal restores the link between a and b.
func (n *Network) Heal(a, b string) {
	n.mu.Lock()
	n.setBoth(n.cut, a, b, false)
	n.mu.Unlock()
}

// HealAll restores every cut link.
func (n *Network) HealAll() {
	n.mu.Lock()
	clear(n.cut)
	n.mu.Unlock()
}

// Counts returns how many packets were delivered and dropped so far.
func (n *Network) Counts() (delivered, dropped uint64) {
	return n.delivered.Load(), n.dropped.Load()
}
