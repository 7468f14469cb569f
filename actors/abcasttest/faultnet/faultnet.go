// Package faultnet is the test kit's one faulty network (abcasttest.Network
// is this Network): simulated UDP endpoints, or real sockets wrapped, joined
// by directed links with latency, loss, capacity, a bounded queue, cuts, a
// tap and counters. It depends on nothing of abcast, so the packages the kit
// is built on (the transport) can run their own tests on it.
package faultnet

import (
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go/testutils/simnet"
)

// Network is the kit's one faulty network: a set of directed links between
// UDP endpoints, each with a one-way latency, a loss probability, a
// capacity and a bounded queue, which a test can cut, heal and retune while
// traffic flows, plus a tap that sees (and may drop) every packet and
// counters of what happened to the packets.
//
// Endpoints come in two kinds, and the same faults apply to both:
//   - Listen attaches a simulated endpoint (a socket of quic-go's
//     testutils/simnet, with nothing of the host's network stack). Inside a
//     testing/synctest bubble its latency and capacity run in virtual time.
//   - Wrap puts a real socket (loopback UDP) behind the network: what it
//     sends passes through the links before it reaches the kernel, in real
//     time. Wrapping hides the *net.UDPConn from quic-go, which then sends
//     without segmentation offload: fine for fault tests, wrong for
//     benchmarks.
//
// Link model. A packet from a to b is dropped if the link is cut, by the
// loss dice, or by the tap, in that order. Otherwise it joins the directed
// link's FIFO queue: the link transmits one packet at a time, taking
// len(data)/capacity to put it on the wire (serialization delay; zero
// capacity means an infinitely fast link), and the packet arrives latency
// after its transmission ends. A packet that would find more than the
// queue limit in bytes waiting ahead of it is dropped at the tail, as a
// router's drop-tail queue would, so a sender above the capacity sees loss
// and a growing delay rather than unbounded buffering. Links never reorder
// or duplicate: a latency lowered while packets are queued does not let
// later packets overtake earlier ones.
//
// Links are named by the endpoints' addresses (host:port strings); every
// method is safe for concurrent use.
type Network struct {
	mu       sync.Mutex
	rng      *rand.Rand
	def      linkParams
	over     map[[2]string]linkOverride
	cut      map[[2]string]bool
	tap      func(Packet) bool
	queueLim int // 0: derived from the capacity, see SetQueueLimit
	links    map[[2]string]*link
	ends     map[string]*simnet.SimConn
	closed   bool
	wg       sync.WaitGroup
}

// Packet is one datagram on the network, as a Tap sees it. Data is the
// tap's own copy.
type Packet struct {
	From, To net.Addr
	Data     []byte
}

// Stats count what the network did with the packets sent on it (all
// links, or one directed link). Every packet sent ends in exactly one of
// the Dropped* counters or in Delivered, except those still queued.
type Stats struct {
	// Delivered packets and their bytes: handed to the receiving
	// endpoint (simulated) or to the kernel (wrapped socket).
	Delivered, DeliveredBytes uint64
	// DroppedCut: sent on a cut link. DroppedLoss: lost to the loss
	// dice. DroppedTap: refused by the tap. DroppedQueue: tail-dropped
	// because the link's queue was full (the sender exceeded the
	// capacity). DroppedNoRoute: addressed to no simulated endpoint, or
	// still queued when the endpoint or the network closed.
	DroppedCut, DroppedLoss, DroppedTap, DroppedQueue, DroppedNoRoute uint64
	// MaxQueueDelay is the longest time a packet waited for the link
	// (queueing plus its own serialization), a sign the capacity was
	// reached.
	MaxQueueDelay time.Duration
}

// Dropped is the sum of every Dropped* counter.
func (s Stats) Dropped() uint64 {
	return s.DroppedCut + s.DroppedLoss + s.DroppedTap + s.DroppedQueue + s.DroppedNoRoute
}

type linkParams struct {
	latency  time.Duration
	loss     float64
	capacity int64 // bytes per second; 0: unlimited
}

// linkOverride holds a link's own settings; nil fields follow the
// network's.
type linkOverride struct {
	latency  *time.Duration
	loss     *float64
	capacity *int64
}

// link is one direction between two endpoints: its queue and the time its
// transmitter is busy until.
type link struct {
	key       [2]string
	busyUntil time.Time // end of the last queued packet's transmission
	lastAt    time.Time // arrival time of the last queued packet (FIFO)
	queue     []queued
	running   bool // a goroutine is draining queue
	stats     Stats
	deliver   func(p simnet.Packet) bool // nil: to the simulated endpoint
}

type queued struct {
	p  simnet.Packet
	at time.Time
}

// New returns an empty network whose random loss decisions follow
// seed, with latency as the one-way delay and loss as the loss probability
// of every link; capacities are unlimited until SetCapacity.
func New(seed uint64, latency time.Duration, loss float64) *Network {
	return &Network{
		rng:   rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		def:   linkParams{latency: latency, loss: loss},
		over:  map[[2]string]linkOverride{},
		cut:   map[[2]string]bool{},
		links: map[[2]string]*link{},
		ends:  map[string]*simnet.SimConn{},
	}
}

// Listen attaches a new simulated endpoint at addr and returns its socket.
// An endpoint already at addr is replaced (packets for addr go to the new
// socket), which is what a restarted process binding the same port looks
// like.
func (n *Network) Listen(addr *net.UDPAddr) net.PacketConn {
	return simnet.NewBlockingSimConn(addr, (*router)(n))
}

// router is the Network as the simnet sockets see it.
type router Network

func (r *router) SendPacket(p simnet.Packet) error {
	(*Network)(r).send(p, nil)
	return nil
}

func (r *router) AddNode(addr net.Addr, recv simnet.PacketReceiver) {
	n := (*Network)(r)
	conn, ok := recv.(*simnet.SimConn)
	if !ok {
		panic("faultnet: a Network endpoint must be a simnet.SimConn") // our own bug
	}
	n.mu.Lock()
	n.ends[addr.String()] = conn
	n.mu.Unlock()
}

// Wrap returns pc (a real UDP socket) with this network's links between it
// and every address it writes to: cuts, loss, tap, latency and capacity
// apply to what it sends, in real time. Use it outside synctest bubbles.
// Closing the result closes pc.
func (n *Network) Wrap(pc net.PacketConn) net.PacketConn {
	return &wrapped{PacketConn: pc, n: n}
}

type wrapped struct {
	net.PacketConn
	n *Network
}

func (w *wrapped) WriteTo(b []byte, addr net.Addr) (int, error) {
	// b is only borrowed: send copies it if it has to queue it.
	w.n.send(simnet.Packet{From: w.LocalAddr(), To: addr, Data: b}, func(p simnet.Packet) bool {
		_, err := w.PacketConn.WriteTo(p.Data, p.To)
		return err == nil
	})
	return len(b), nil
}

// SetReadBuffer and SetWriteBuffer reach the real socket, so quic-go can
// size its buffers as on an unwrapped one.
func (w *wrapped) SetReadBuffer(bytes int) error {
	if c, ok := w.PacketConn.(interface{ SetReadBuffer(int) error }); ok {
		return c.SetReadBuffer(bytes)
	}
	return nil
}

func (w *wrapped) SetWriteBuffer(bytes int) error {
	if c, ok := w.PacketConn.(interface{ SetWriteBuffer(int) error }); ok {
		return c.SetWriteBuffer(bytes)
	}
	return nil
}

// send routes p: it is dropped, or queued on its link for delivery (by
// deliver, or to the simulated endpoint when deliver is nil). With a
// deliver function p.Data is borrowed from the writer for the call only.
func (n *Network) send(p simnet.Packet, deliver func(simnet.Packet) bool) {
	k := [2]string{p.From.String(), p.To.String()}
	n.mu.Lock()
	l := n.links[k]
	if l == nil {
		l = &link{key: k}
		n.links[k] = l
	}
	l.deliver = deliver
	par := n.paramsLocked(k)
	var why *uint64
	switch {
	case n.closed:
		why = &l.stats.DroppedNoRoute
	case n.cut[k]:
		why = &l.stats.DroppedCut
	case par.loss > 0 && n.rng.Float64() < par.loss:
		why = &l.stats.DroppedLoss
	}
	tap := n.tap
	if why != nil {
		*why++
		n.mu.Unlock()
		return
	}
	n.mu.Unlock()
	if tap != nil && !tap(Packet{From: p.From, To: p.To, Data: append([]byte(nil), p.Data...)}) {
		n.mu.Lock()
		l.stats.DroppedTap++
		n.mu.Unlock()
		return
	}

	n.mu.Lock()
	defer n.mu.Unlock()
	now := time.Now()
	start := now
	if l.busyUntil.After(now) {
		start = l.busyUntil
	}
	var tx time.Duration
	if par.capacity > 0 {
		tx = time.Duration(int64(len(p.Data)) * int64(time.Second) / par.capacity)
		// Bytes still ahead of this packet: what the transmitter has
		// not sent by now.
		ahead := int64(start.Sub(now)) * par.capacity / int64(time.Second)
		if ahead+int64(len(p.Data)) > int64(n.queueLimitLocked(par)) {
			l.stats.DroppedQueue++
			return
		}
	}
	l.busyUntil = start.Add(tx)
	if w := l.busyUntil.Sub(now); w > l.stats.MaxQueueDelay {
		l.stats.MaxQueueDelay = w
	}
	at := l.busyUntil.Add(par.latency)
	if at.Before(l.lastAt) {
		at = l.lastAt
	}
	l.lastAt = at
	if deliver != nil && !at.After(now) && !l.running {
		// A wrapped socket on a link with nothing to wait for: send now,
		// in order, without a goroutine hand-off.
		if deliver(p) {
			l.stats.Delivered++
			l.stats.DeliveredBytes += uint64(len(p.Data))
		} else {
			l.stats.DroppedNoRoute++
		}
		return
	}
	if deliver != nil {
		p.Data = append([]byte(nil), p.Data...) // the writer's buffer was only lent
	}
	l.queue = append(l.queue, queued{p: p, at: at})
	if !l.running {
		l.running = true
		n.wg.Add(1)
		go n.drain(l)
	}
}

// drain delivers l's queue in order, each packet at its time, and ends
// when the queue is empty (the next packet starts it again), so an idle
// network has no goroutines.
func (n *Network) drain(l *link) {
	defer n.wg.Done()
	for {
		n.mu.Lock()
		if len(l.queue) == 0 || n.closed {
			l.stats.DroppedNoRoute += uint64(len(l.queue))
			l.queue, l.running = nil, false
			n.mu.Unlock()
			return
		}
		q := l.queue[0]
		n.mu.Unlock()
		if d := time.Until(q.at); d > 0 {
			time.Sleep(d) // the packet is in flight: this is the link's delay
		}
		n.mu.Lock()
		l.queue[0] = queued{}
		l.queue = l.queue[1:]
		deliver := l.deliver
		end := n.ends[q.p.To.String()]
		n.mu.Unlock()
		ok := false
		switch {
		case deliver != nil:
			ok = deliver(q.p)
		case end != nil:
			// Blocks while the receiver's socket buffer is full, as
			// simnet's blocking sockets do; returns if it is closed.
			end.RecvPacket(q.p)
			ok = true
		}
		n.mu.Lock()
		if ok {
			l.stats.Delivered++
			l.stats.DeliveredBytes += uint64(len(q.p.Data))
		} else {
			l.stats.DroppedNoRoute++
		}
		n.mu.Unlock()
	}
}

// paramsLocked returns the settings in force on directed link k.
func (n *Network) paramsLocked(k [2]string) linkParams {
	p := n.def
	o := n.over[k]
	if o.latency != nil {
		p.latency = *o.latency
	}
	if o.loss != nil {
		p.loss = max(p.loss, *o.loss)
	}
	if o.capacity != nil {
		p.capacity = *o.capacity
	}
	return p
}

// queueLimitLocked is the queue bound of a link with the given settings.
func (n *Network) queueLimitLocked(p linkParams) int {
	if n.queueLim > 0 {
		return n.queueLim
	}
	return DefaultQueueLimit(p.capacity)
}

// DefaultQueueLimit is the queue bound of a link of the given capacity
// (bytes/s) unless SetQueueLimit chose another: 200 ms worth of its
// capacity, at least 64 KiB, so a congestion controller sees loss before
// the delay it adds grows past a few round trips.
func DefaultQueueLimit(capacity int64) int {
	return int(max(64<<10, capacity/5))
}

// Close stops delivering: packets still queued are dropped (and counted
// in DroppedNoRoute) and the links' goroutines end before it returns.
// Close the endpoints first: a link may be blocked handing a packet to a
// socket nobody reads. A Subnet closes its network itself.
func (n *Network) Close() {
	n.mu.Lock()
	n.closed = true
	n.mu.Unlock()
	n.wg.Wait()
}

// Inject puts a datagram straight into the simulated endpoint at to, as if
// from had sent it (source addresses are not authenticated on a real
// network either), bypassing the links' faults and delays.
func (n *Network) Inject(from, to net.Addr, data []byte) {
	n.mu.Lock()
	end := n.ends[to.String()]
	n.mu.Unlock()
	if end != nil {
		end.RecvPacket(simnet.Packet{From: from, To: to, Data: append([]byte(nil), data...)})
	}
}

// SetTap installs f, called for every packet that survived cuts and loss;
// returning false drops it. nil removes the tap. f runs on the senders'
// goroutines: it must not block.
func (n *Network) SetTap(f func(Packet) bool) {
	n.mu.Lock()
	n.tap = f
	n.mu.Unlock()
}

// SetLoss sets the probability that a packet on any link is dropped.
func (n *Network) SetLoss(p float64) {
	n.mu.Lock()
	n.def.loss = p
	n.mu.Unlock()
}

// SetLatency sets the one-way delay of every link without its own.
func (n *Network) SetLatency(d time.Duration) {
	n.mu.Lock()
	n.def.latency = d
	n.mu.Unlock()
}

// SetCapacity sets the capacity, in bytes per second and per direction,
// of every link without its own; 0 removes the limit.
func (n *Network) SetCapacity(bytesPerSecond int64) {
	n.mu.Lock()
	n.def.capacity = bytesPerSecond
	n.mu.Unlock()
}

// SetQueueLimit bounds every link's queue, in bytes waiting for the
// transmitter; 0 restores DefaultQueueLimit. It matters only on links
// with a capacity.
func (n *Network) SetQueueLimit(bytes int) {
	n.mu.Lock()
	n.queueLim = bytes
	n.mu.Unlock()
}

// SetLinkLoss sets the loss of the link between a and b (both
// directions), on top of the global loss (the larger applies).
func (n *Network) SetLinkLoss(a, b string, p float64) {
	n.override(a, b, func(o *linkOverride) { o.loss = &p })
}

// SetLinkLatency sets the one-way delay between a and b (both directions).
func (n *Network) SetLinkLatency(a, b string, d time.Duration) {
	n.override(a, b, func(o *linkOverride) { o.latency = &d })
}

// SetLinkCapacity sets the capacity between a and b, in bytes per second
// in each direction; 0 makes that link unlimited whatever SetCapacity says.
func (n *Network) SetLinkCapacity(a, b string, bytesPerSecond int64) {
	n.override(a, b, func(o *linkOverride) { o.capacity = &bytesPerSecond })
}

func (n *Network) override(a, b string, set func(*linkOverride)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, k := range [][2]string{{a, b}, {b, a}} {
		o := n.over[k]
		set(&o)
		n.over[k] = o
	}
}

// Latency returns the one-way delay from a to b.
func (n *Network) Latency(a, b net.Addr) time.Duration {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.paramsLocked([2]string{a.String(), b.String()}).latency
}

// Cut drops everything between a and b; Heal restores it.
func (n *Network) Cut(a, b string) { n.setCut(a, b, true) }

// Heal restores the link between a and b.
func (n *Network) Heal(a, b string) { n.setCut(a, b, false) }

func (n *Network) setCut(a, b string, v bool) {
	n.mu.Lock()
	n.cut[[2]string{a, b}], n.cut[[2]string{b, a}] = v, v
	n.mu.Unlock()
}

// HealAll restores every cut link.
func (n *Network) HealAll() {
	n.mu.Lock()
	clear(n.cut)
	n.mu.Unlock()
}

// Stats returns the counters summed over every link.
func (n *Network) Stats() Stats {
	n.mu.Lock()
	defer n.mu.Unlock()
	var s Stats
	for _, l := range n.links {
		s.add(l.stats)
	}
	return s
}

// LinkStats returns the counters of the link from a to b (one direction).
func (n *Network) LinkStats(from, to string) Stats {
	n.mu.Lock()
	defer n.mu.Unlock()
	if l := n.links[[2]string{from, to}]; l != nil {
		return l.stats
	}
	return Stats{}
}

func (s *Stats) add(o Stats) {
	s.Delivered += o.Delivered
	s.DeliveredBytes += o.DeliveredBytes
	s.DroppedCut += o.DroppedCut
	s.DroppedLoss += o.DroppedLoss
	s.DroppedTap += o.DroppedTap
	s.DroppedQueue += o.DroppedQueue
	s.DroppedNoRoute += o.DroppedNoRoute
	s.MaxQueueDelay = max(s.MaxQueueDelay, o.MaxQueueDelay)
}

// Counts returns how many packets were delivered and dropped so far.
func (n *Network) Counts() (delivered, dropped uint64) {
	s := n.Stats()
	return s.Delivered, s.Dropped()
}
