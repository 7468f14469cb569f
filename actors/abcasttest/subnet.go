package abcasttest

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/membership"
	"github.com/abcast/abcast/quicremote/transport"
)

// Options describe a subnet. The zero value is a valid choice for every
// field.
type Options struct {
	// Config is every node's actor configuration; zero means
	// actors.DefaultConfig(). Its Hooks, if any, still run: the subnet
	// chains its crash injection after them.
	Config actors.Config
	// Transport is every node's QUIC configuration; zero means
	// transport.DefaultConfig().
	Transport transport.Config
	// Backend chooses what the nodes run on: the simulated network (the
	// zero value), real QUIC on loopback UDP, or the in-memory transport.
	Backend Backend
	// Latency is the one-way delay of every link, Loss the probability a
	// packet is dropped, Capacity every link's capacity in bytes per
	// second and per direction (0: unlimited; see Network for the queue),
	// Seed the source of the loss decisions (and of nothing else). All
	// can change later through Network. The memory backend has no packets:
	// it refuses non-zero values.
	Latency  time.Duration
	Loss     float64
	Capacity int64
	Seed     uint64
	// BareSockets, with LoopbackQUIC, hands the nodes their UDP sockets
	// as they are instead of behind the Network, so quic-go can use
	// segmentation offload as in production: for tests that move a lot of
	// data and inject no fault. Cut, Kill, loss, latency and capacity then
	// fail the test.
	BareSockets bool
	// Log receives the nodes' logs; nil means warnings and errors to the
	// test log (everything when ABCAST_DEBUG is set).
	Log *zerolog.Logger
	// OnStart, if set, runs every time node i starts (the first time and
	// after each Restart), once its actor system and remote exist and
	// before its channels open and it dials: spawn your actors on
	// node.System() here so they are there again after a restart.
	OnStart func(i int, node *actors.Node)
}

// Backend is what a subnet's nodes run on.
type Backend int

const (
	// Simulated runs real QUIC and TLS over the kit's simulated network
	// (Network.Listen): every fault control applies, and inside a
	// testing/synctest bubble everything runs in virtual time. The default.
	Simulated Backend = iota
	// LoopbackQUIC runs real QUIC over real UDP sockets on 127.0.0.1,
	// each behind the same Network (Network.Wrap), so cuts, loss, latency
	// and capacity apply in real time. Not inside a synctest bubble: a
	// goroutine waiting on a socket is not durably blocked, so virtual
	// time would never advance.
	LoopbackQUIC
	// Memory runs the nodes on transport.MemNetwork: no packets, no TLS,
	// the fastest. Cut and Heal disconnect and reconnect pairs; loss,
	// latency and capacity are refused. Works inside a bubble or not.
	Memory
)

func (b Backend) String() string {
	switch b {
	case Simulated:
		return "simulated"
	case LoopbackQUIC:
		return "loopback-quic"
	case Memory:
		return "memory"
	}
	return fmt.Sprintf("Backend(%d)", int(b))
}

// Subnet is an in-process subnet of abcast nodes: real actors, and real
// QUIC and TLS on a simulated network unless Options.Backend says
// otherwise. Create a simulated subnet inside a testing/synctest bubble
// (synctest.Test) so timeouts, backoffs and latency run in virtual time;
// it also works outside one, in real time.
//
// Nodes are numbered 0..N-1. Every node is a member of the registry from
// the start; NewSubnet does not start them (see StartAll). The subnet
// closes what is still running when the test ends.
type Subnet struct {
	t       testing.TB
	onStart func(int, *actors.Node)
	cfg     actors.Config
	tcfg    transport.Config
	log     zerolog.Logger
	backend Backend
	bare    bool // LoopbackQUIC with unwrapped sockets
	net     *Network
	mem     *transport.MemNetwork // Memory backend only
	ids     []*membership.Identity
	addrs   []*net.UDPAddr
	source  *membership.StaticSource

	mu      sync.Mutex
	nodes   []*actors.Node
	raws    []transport.RPC
	socks   []net.PacketConn // LoopbackQUIC: sockets bound by NewSubnet, not yet used
	chans   []*Channel
	crash   []crashRule
	removed map[int]bool
	closed  bool
}

// NewSubnet builds identities, addresses and a registry for n nodes.
func NewSubnet(t testing.TB, n int, opt Options) *Subnet {
	t.Helper()
	s := &Subnet{t: t, cfg: opt.Config, tcfg: opt.Transport, onStart: opt.OnStart, backend: opt.Backend, bare: opt.BareSockets,
		net:   NewNetwork(opt.Seed, opt.Latency, opt.Loss),
		nodes: make([]*actors.Node, n), raws: make([]transport.RPC, n), socks: make([]net.PacketConn, n), removed: map[int]bool{}}
	s.net.SetCapacity(opt.Capacity)
	if opt.BareSockets && (opt.Backend != LoopbackQUIC || opt.Latency != 0 || opt.Loss != 0 || opt.Capacity != 0) {
		t.Fatalf("abcasttest: BareSockets is for LoopbackQUIC without latency, loss or capacity")
	}
	switch opt.Backend {
	case Simulated, LoopbackQUIC:
	case Memory:
		if opt.Latency != 0 || opt.Loss != 0 || opt.Capacity != 0 {
			t.Fatalf("abcasttest: the memory backend has no latency, loss or capacity")
		}
		s.mem = transport.NewMemNetwork()
	default:
		t.Fatalf("abcasttest: unknown backend %v", opt.Backend)
	}
	if s.cfg.MailboxCapacity == 0 {
		s.cfg = actors.DefaultConfig()
	}
	if s.tcfg.MaxFrameSize == 0 {
		s.tcfg = transport.DefaultConfig()
	}
	if opt.Log != nil {
		s.log = *opt.Log
	} else {
		lvl := zerolog.WarnLevel
		if os.Getenv("ABCAST_DEBUG") != "" {
			lvl = zerolog.DebugLevel
		}
		s.log = zerolog.New(zerolog.NewTestWriter(t)).Level(lvl)
	}
	var members []membership.Member
	for i := range n {
		id, err := membership.GenerateIdentity(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		addr := &net.UDPAddr{IP: net.IPv4(10, 0, byte(i>>8), byte(i+1)), Port: 4000}
		if opt.Backend == LoopbackQUIC {
			// Bound now so the registry can name the port; the node
			// takes the socket at its first Start.
			pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			s.socks[i], addr = pc, pc.LocalAddr().(*net.UDPAddr)
		}
		s.ids = append(s.ids, id)
		s.addrs = append(s.addrs, addr)
		members = append(members, id.Member(addr.String()))
	}
	snap, err := membership.NewSnapshot(1, members...)
	if err != nil {
		t.Fatal(err)
	}
	if s.source, err = membership.NewStaticSource(snap); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// N returns the number of nodes.
func (s *Subnet) N() int { return len(s.ids) }

// Network returns the network, for finer control of faults and for its
// counters; nil on the Memory backend and with bare sockets.
func (s *Subnet) Network() *Network {
	if s.backend == Memory || s.bare {
		return nil
	}
	return s.net
}

// Backend returns what the nodes run on.
func (s *Subnet) Backend() Backend { return s.backend }

// Identity returns node i's identity (its key and NodeID).
func (s *Subnet) Identity(i int) *membership.Identity { return s.ids[i] }

// ID returns node i's NodeID.
func (s *Subnet) ID(i int) membership.NodeID { return s.ids[i].ID }

// Addr returns node i's address (in the registry, and on the network).
func (s *Subnet) Addr(i int) string { return s.addrs[i].String() }

// Registry returns the subnet's registry; Update it to change membership.
func (s *Subnet) Registry() *membership.StaticSource { return s.source }

// Node returns node i, or nil if it is not running.
func (s *Subnet) Node(i int) *actors.Node {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nodes[i]
}

// Start starts node i with fresh state (again, after Stop) and opens on it
// every channel opened with OpenChannel, republishing the artifacts its
// application had live, as a replica restoring its pool would.
func (s *Subnet) Start(i int) *actors.Node {
	s.t.Helper()
	s.mu.Lock()
	if s.nodes[i] != nil || s.raws[i] != nil {
		s.mu.Unlock()
		s.t.Fatalf("abcasttest: node %d is already running", i)
	}
	chans := append([]*Channel(nil), s.chans...)
	s.mu.Unlock()
	cfg := s.cfg
	cfg.Hooks = s.hooks(i)
	cfg.Transport = s.tcfg
	var node *actors.Node
	var err error
	if s.backend == Memory {
		node, err = actors.NewNode(cfg, s.ids[i], s.source, nil, s.log, actors.WithTransport(
			func(src membership.Source, ev transport.EventFunc) (transport.RPC, error) {
				return s.mem.NewTransport(s.tcfg, s.ids[i].ID, src, ev)
			}))
	} else {
		node, err = actors.NewNode(cfg, s.ids[i], s.source, s.socket(i), s.log)
	}
	if err != nil {
		s.t.Fatalf("abcasttest: start node %d: %v", i, err)
	}
	s.mu.Lock()
	s.nodes[i] = node
	s.mu.Unlock()
	if s.onStart != nil {
		s.onStart(i, node)
	}
	for _, c := range chans {
		c.open(i)
	}
	if err := node.Start(); err != nil {
		s.t.Fatalf("abcasttest: start node %d: %v", i, err)
	}
	return node
}

// StartAll starts every node that is not running.
func (s *Subnet) StartAll() {
	s.t.Helper()
	for i := range s.ids {
		if s.Node(i) == nil {
			s.Start(i)
		}
	}
}

// Stop closes node i, as a clean shutdown: its peers are told at once.
// Its channels' recorders keep what they saw. A Close error fails the
// test.
func (s *Subnet) Stop(i int) {
	s.t.Helper()
	s.mu.Lock()
	node := s.nodes[i]
	s.nodes[i] = nil
	s.mu.Unlock()
	if node == nil {
		return
	}
	if err := node.Close(); err != nil {
		s.t.Errorf("abcasttest: close node %d: %v", i, err)
	}
}

// Kill stops node i as a crash would: nothing it sends on the way out
// reaches anyone, so its peers notice only when their idle timeout
// expires (or when it comes back, by stateless reset). On the Memory
// backend, which has no idle timeout, peers see the links drop at once,
// as with Stop.
func (s *Subnet) Kill(i int) {
	s.t.Helper()
	for j := range s.ids {
		if j != i {
			s.Cut(i, j)
		}
	}
	s.Stop(i)
	for j := range s.ids {
		if j != i {
			s.Heal(i, j)
		}
	}
}

// Restart stops node i and starts it again with fresh state (see Start).
func (s *Subnet) Restart(i int) *actors.Node {
	s.t.Helper()
	s.Stop(i)
	return s.Start(i)
}

// Cut breaks the link between nodes i and j; Heal restores it. On the
// Memory backend the pair is disconnected (each side sees the other go
// down at once) rather than silently losing packets.
func (s *Subnet) Cut(i, j int) {
	if s.mem != nil {
		s.mem.Disconnect(s.ids[i].ID, s.ids[j].ID)
		return
	}
	s.packets("Cut").Cut(s.Addr(i), s.Addr(j))
}

// Heal restores the link between nodes i and j.
func (s *Subnet) Heal(i, j int) {
	if s.mem != nil {
		s.mem.Connect(s.ids[i].ID, s.ids[j].ID)
		return
	}
	s.packets("Heal").Heal(s.Addr(i), s.Addr(j))
}

// Isolate cuts every link between the nodes in group and the others.
func (s *Subnet) Isolate(group ...int) {
	in := map[int]bool{}
	for _, g := range group {
		in[g] = true
	}
	for i := range s.ids {
		for j := range s.ids {
			if in[i] && !in[j] {
				s.Cut(i, j)
			}
		}
	}
}

// HealAll restores every cut link.
func (s *Subnet) HealAll() {
	if s.mem != nil {
		for i := range s.ids {
			for j := i + 1; j < len(s.ids); j++ {
				s.Heal(i, j)
			}
		}
		return
	}
	s.net.HealAll()
}

// SetLoss sets the loss probability of every link.
func (s *Subnet) SetLoss(p float64) { s.packets("SetLoss").SetLoss(p) }

// SetLatency sets the one-way delay of every link.
func (s *Subnet) SetLatency(d time.Duration) { s.packets("SetLatency").SetLatency(d) }

// SetCapacity sets every link's capacity in bytes per second and per
// direction (0: unlimited).
func (s *Subnet) SetCapacity(bytesPerSecond int64) {
	s.packets("SetCapacity").SetCapacity(bytesPerSecond)
}

// packets returns the network for a control that needs packets, failing
// the test on the Memory backend and with bare sockets.
func (s *Subnet) packets(what string) *Network {
	s.t.Helper()
	if s.mem != nil {
		s.t.Fatalf("abcasttest: %s needs packets; the memory backend has none", what)
	}
	if s.bare {
		s.t.Fatalf("abcasttest: %s needs the Network; this subnet's sockets are bare", what)
	}
	return s.net
}

// socket returns the socket node or raw member i binds.
func (s *Subnet) socket(i int) net.PacketConn {
	s.t.Helper()
	if s.backend == Simulated {
		return s.net.Listen(s.addrs[i])
	}
	s.mu.Lock()
	pc := s.socks[i]
	s.socks[i] = nil
	s.mu.Unlock()
	if pc == nil {
		// A restart binds the same port again.
		var err error
		if pc, err = net.ListenUDP("udp", s.addrs[i]); err != nil {
			s.t.Fatalf("abcasttest: rebind %s for node %d: %v", s.addrs[i], i, err)
		}
	}
	if s.bare {
		return pc
	}
	return s.net.Wrap(pc)
}

// Remove takes node i out of the registry (a new snapshot version): the
// others disconnect it and drop its state. From then on the assertions
// neither expect its artifacts elsewhere nor check what it holds.
func (s *Subnet) Remove(i int) {
	s.t.Helper()
	s.mu.Lock()
	s.removed[i] = true
	s.mu.Unlock()
	cur := s.source.Current()
	var ms []membership.Member
	for _, id := range cur.IDs() {
		if id != s.ids[i].ID {
			m, _ := cur.Member(id)
			ms = append(ms, m)
		}
	}
	snap, err := membership.NewSnapshot(cur.Version+1, ms...)
	if err != nil {
		s.t.Fatal(err)
	}
	if err := s.source.Update(snap); err != nil {
		s.t.Fatal(err)
	}
}

// active reports whether node i is running and a member.
func (s *Subnet) active(i int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nodes[i] != nil && !s.removed[i]
}

// Raw starts a bare transport as member i instead of a node (i must not be
// running), so a test can speak the wire protocol directly: a hostile or
// broken peer. It closes when the test ends or with Close.
//
// On the Simulated and LoopbackQUIC backends the result is a
// *transport.Transport, on Memory a *transport.MemTransport.
func (s *Subnet) Raw(i int, cfg transport.Config) transport.RPC {
	s.t.Helper()
	if s.Node(i) != nil {
		s.t.Fatalf("abcasttest: node %d is running; Stop it before Raw", i)
	}
	var tr transport.RPC
	var err error
	if s.mem != nil {
		tr, err = s.mem.NewTransport(cfg, s.ids[i].ID, s.source, nil)
	} else {
		tr, err = transport.New(cfg, s.ids[i], s.source, s.socket(i), s.log, nil)
	}
	if err != nil {
		s.t.Fatalf("abcasttest: raw transport %d: %v", i, err)
	}
	s.mu.Lock()
	s.raws[i] = tr
	s.mu.Unlock()
	return tr
}

// CloseRaw closes the raw transport of member i, so it can Start again.
func (s *Subnet) CloseRaw(i int) {
	s.mu.Lock()
	tr := s.raws[i]
	s.raws[i] = nil
	s.mu.Unlock()
	if tr != nil {
		tr.Close()
	}
}

// Restarts sums the actor restarts counted by every running node.
func (s *Subnet) Restarts() uint64 {
	var n uint64
	for i := range s.ids {
		if node := s.Node(i); node != nil {
			n += node.Stats().Restarts
		}
	}
	return n
}

// Close stops every node and raw transport. Inside a synctest bubble it
// then lets virtual time pass protoactor-go's dead-letter log throttle (a
// goroutine with a 1 s timer), so the bubble can end with no goroutine
// left. The test's cleanup calls it; calling it earlier is fine.
func (s *Subnet) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.mu.Unlock()
	for i := range s.ids {
		s.Stop(i)
		s.CloseRaw(i)
	}
	s.mu.Lock()
	for i, pc := range s.socks {
		if pc != nil {
			pc.Close()
			s.socks[i] = nil
		}
	}
	s.mu.Unlock()
	s.net.Close()
	if inBubble() {
		time.Sleep(2 * time.Second) // virtual; no event to wait for
	}
}

// inBubble reports whether the caller runs inside a testing/synctest
// bubble, whose fake clock starts at midnight UTC, 2000-01-01 (as the
// package documents); a subnet outside one need not wait for
// protoactor's throttle goroutine to end.
func inBubble() bool { return time.Now().Before(time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC)) }

// crashRule makes matching actors panic.
type crashRule struct {
	match func(node int, kind, channel string, msg any) bool
	left  int // < 0: forever
}

// PanicWhen makes an actor of node panic (as a bug would) at the start of
// a message whenever match returns true; its supervisor restarts it. kind
// is one of "sender", "link", "receiver", "fetch", "consumer" (see
// actors.Hooks). match runs on actor goroutines.
func (s *Subnet) PanicWhen(match func(node int, kind, channel string, msg any) bool) {
	s.mu.Lock()
	s.crash = append(s.crash, crashRule{match: match, left: -1})
	s.mu.Unlock()
}

// ClearPanics removes every PanicWhen and Crash rule.
func (s *Subnet) ClearPanics() {
	s.mu.Lock()
	s.crash = nil
	s.mu.Unlock()
}

// Crash makes the next message to an actor of the given kind on node (and
// channel, or any channel if empty) panic, once.
func (s *Subnet) Crash(node int, kind, channel string) {
	s.mu.Lock()
	s.crash = append(s.crash, crashRule{left: 1, match: func(n int, k, ch string, _ any) bool {
		return n == node && k == kind && (channel == "" || ch == channel)
	}})
	s.mu.Unlock()
}

// hooks returns node i's test hooks: the user's, then crash injection.
func (s *Subnet) hooks(i int) *actors.Hooks {
	user := s.cfg.Hooks
	return &actors.Hooks{BeforeReceive: func(kind, channel string, msg any) {
		if user != nil && user.BeforeReceive != nil {
			user.BeforeReceive(kind, channel, msg)
		}
		s.mu.Lock()
		fire := false
		for k := range s.crash {
			r := &s.crash[k]
			if r.left != 0 && r.match(i, kind, channel, msg) {
				if r.left > 0 {
					r.left--
				}
				fire = true
				break
			}
		}
		s.mu.Unlock()
		if fire {
			panic(fmt.Sprintf("abcasttest: injected crash of %s on node %d (%T)", kind, i, msg))
		}
	}}
}

// helloVersions numbers the announcements Announce sends: a peer applies
// only a version newer than the last it saw from the same connection.
var helloVersions atomic.Uint64

// Announce makes a raw transport (Raw) announce channels to peer, as a
// node does when it opens them: the peer accepts slot updates on a
// channel only from members that announced it on their connection.
func Announce(ctx context.Context, rpc transport.RPC, peer membership.NodeID, channels ...string) error {
	return rpc.Push(ctx, peer, HelloProtocol, EncodeHello(helloVersions.Add(1)+1, channels...))
}
