// Package testnet builds subnets of abcast nodes for tests: identities, a
// registry, and nodes on the in-memory transport or on real QUIC over
// loopback UDP, plus consumers that record what they saw and helpers that
// wait for conditions with a deadline.
package testnet

import (
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go/testutils/simnet"
	"github.com/rs/zerolog"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/membership"
	"github.com/abcast/abcast/quicremote/transport"
)

// Cluster is a subnet under test.
type Cluster struct {
	t            testing.TB
	Cfg          actors.Config
	TCfg         transport.Config
	IDs          []*membership.Identity
	Addrs        []string
	Source       *membership.StaticSource
	Mem          *transport.MemNetwork // nil for QUIC clusters
	Nodes        []*actors.Node        // nil entries are stopped nodes
	conns        []net.PacketConn
	Log          zerolog.Logger
	faults       []*FaultConn // per node, QUIC clusters with faults
	faultLoss    float64
	faultLatency time.Duration
	faultSeed    uint64
	simLinks     []*simnet.SimulatedLink
	simLatency   time.Duration
	router       *Router
}

// NewMem builds n identities and a registry for an in-memory subnet; no
// node runs yet (see StartAll).
func NewMem(t testing.TB, n int, cfg actors.Config) *Cluster {
	c := newCluster(t, n, cfg)
	c.Mem = transport.NewMemNetwork()
	c.makeRegistry()
	return c
}

// NewQUIC builds n identities on loopback UDP sockets and a registry.
func NewQUIC(t testing.TB, n int, cfg actors.Config) *Cluster {
	c := newCluster(t, n, cfg)
	for i := range n {
		pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		c.conns[i] = pc
		c.Addrs[i] = pc.LocalAddr().String()
	}
	c.makeRegistry()
	return c
}

func newCluster(t testing.TB, n int, cfg actors.Config) *Cluster {
	c := &Cluster{t: t, Cfg: cfg, TCfg: transport.DefaultConfig(), IDs: make([]*membership.Identity, n), Addrs: make([]string, n),
		Nodes: make([]*actors.Node, n), conns: make([]net.PacketConn, n), Log: zerolog.New(zerolog.NewTestWriter(t)).Level(testLevel())}
	for i := range n {
		id, err := membership.GenerateIdentity(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		c.IDs[i] = id
		c.Addrs[i] = fmt.Sprintf("127.0.0.1:%d", 20000+i)
	}
	t.Cleanup(c.CloseAll)
	return c
}

func (c *Cluster) makeRegistry() {
	var ms []membership.Member
	for i, id := range c.IDs {
		ms = append(ms, id.Member(c.Addrs[i]))
	}
	snap, err := membership.NewSnapshot(1, ms...)
	if err != nil {
		c.t.Fatal(err)
	}
	if c.Source, err = membership.NewStaticSource(snap); err != nil {
		c.t.Fatal(err)
	}
}

// Start starts node i (again, after Stop: a restart with fresh state).
func (c *Cluster) Start(i int) *actors.Node {
	c.t.Helper()
	var n *actors.Node
	var err error
	if c.Mem != nil {
		cfg := c.Cfg
		cfg.Transport = c.TCfg
		n, err = actors.Start(cfg, c.IDs[i], c.Source, nil, c.Log, actors.WithTransport(func(src membership.Source, ev transport.EventFunc) (transport.RPC, error) {
			return c.Mem.NewTransport(c.TCfg, c.IDs[i].ID, src, ev)
		}))
	} else {
		if c.conns[i] == nil && c.router != nil {
			udp, _ := net.ResolveUDPAddr("udp", c.Addrs[i])
			c.conns[i] = c.simEndpoint(udp)
		}
		if c.conns[i] == nil {
			pc, lerr := net.ListenPacket("udp", c.Addrs[i])
			if lerr != nil {
				c.t.Fatalf("rebind %s: %v", c.Addrs[i], lerr)
			}
			c.conns[i] = pc
		}
		if c.faultLoss > 0 || c.faultLatency > 0 {
			if _, ok := c.conns[i].(*FaultConn); !ok {
				c.conns[i] = NewFaultConn(c.conns[i], c.faultLoss, c.faultLatency, c.faultSeed+uint64(i)*7919)
			}
		}
		if fc, ok := c.conns[i].(*FaultConn); ok {
			if c.faults == nil {
				c.faults = make([]*FaultConn, len(c.IDs))
			}
			c.faults[i] = fc
		}
		cfg := c.Cfg
		cfg.Transport = c.TCfg
		n, err = actors.Start(cfg, c.IDs[i], c.Source, c.conns[i], c.Log)
		c.conns[i] = nil // the node owns it now
	}
	if err != nil {
		c.t.Fatalf("start node %d: %v", i, err)
	}
	c.Nodes[i] = n
	return n
}

// StartAll starts every node.
func (c *Cluster) StartAll() {
	for i := range c.IDs {
		c.Start(i)
	}
}

// Stop closes node i and checks that it shut down cleanly.
func (c *Cluster) Stop(i int) {
	c.t.Helper()
	if c.Nodes[i] == nil {
		return
	}
	if err := c.Nodes[i].Close(); err != nil {
		c.t.Logf("close node %d: %v", i, err)
	}
	c.Nodes[i] = nil
}

// CloseAll stops every node.
func (c *Cluster) CloseAll() {
	for i := range c.Nodes {
		c.Stop(i)
	}
	for _, pc := range c.conns {
		if pc != nil {
			pc.Close()
		}
	}
}

// Remove takes node i out of the registry (a new snapshot version).
func (c *Cluster) Remove(i int) {
	c.t.Helper()
	cur := c.Source.Current()
	var ms []membership.Member
	for _, id := range cur.IDs() {
		if id != c.IDs[i].ID {
			m, _ := cur.Member(id)
			ms = append(ms, m)
		}
	}
	snap, err := membership.NewSnapshot(cur.Version+1, ms...)
	if err != nil {
		c.t.Fatal(err)
	}
	if err := c.Source.Update(snap); err != nil {
		c.t.Fatal(err)
	}
}

// Recorder is a consumer that remembers what it saw and flags duplicates.
type Recorder struct {
	mu         sync.Mutex
	held       map[broadcast.ArtifactID][]byte
	deliveries map[broadcast.ArtifactID]int
	withdrawn  map[broadcast.ArtifactID]int
	dups       []string
	// Delay, if set, makes every delivery take that long (a slow consumer).
	Delay time.Duration
}

// NewRecorder returns an empty recorder.
func NewRecorder() *Recorder {
	return &Recorder{held: map[broadcast.ArtifactID][]byte{}, deliveries: map[broadcast.ArtifactID]int{}, withdrawn: map[broadcast.ArtifactID]int{}}
}

// Consume is the channel's consumer function.
func (r *Recorder) Consume(ev actors.Event) {
	if r.Delay > 0 {
		time.Sleep(r.Delay) // simulates a consumer doing work, not a wait for an event
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	switch e := ev.(type) {
	case *actors.Delivered:
		if _, ok := r.held[e.Artifact.ID]; ok {
			r.dups = append(r.dups, fmt.Sprintf("%x delivered twice while advertised", []byte(e.Artifact.ID)))
		}
		r.held[e.Artifact.ID] = e.Artifact.Payload
		r.deliveries[e.Artifact.ID]++
	case *actors.Withdrawn:
		if _, ok := r.held[e.ID]; !ok {
			r.dups = append(r.dups, fmt.Sprintf("%x withdrawn but not held", []byte(e.ID)))
		}
		delete(r.held, e.ID)
		r.withdrawn[e.ID]++
	}
}

// Holds reports whether id is currently delivered, with its payload.
func (r *Recorder) Holds(id broadcast.ArtifactID) ([]byte, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, ok := r.held[id]
	return p, ok
}

// Held returns the ids currently delivered, sorted.
func (r *Recorder) Held() []broadcast.ArtifactID {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]broadcast.ArtifactID, 0, len(r.held))
	for id := range r.held {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

// Deliveries returns how often id was delivered in total.
func (r *Recorder) Deliveries(id broadcast.ArtifactID) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.deliveries[id]
}

// Problems returns duplicate deliveries and stray withdrawals seen.
func (r *Recorder) Problems() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.dups)
}

// Eventually polls cond every few milliseconds until it returns nil or the
// deadline passes, then fails the test with cond's last error.
func Eventually(t testing.TB, within time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %v", within, err)
		}
		<-tick.C
	}
}

// testLevel is warn, or debug when ABCAST_DEBUG is set.
func testLevel() zerolog.Level {
	if os.Getenv("ABCAST_DEBUG") != "" {
		return zerolog.DebugLevel
	}
	return zerolog.WarnLevel
}

// Raw starts a bare transport for member i instead of a node, so a test
// can speak the wire protocol directly (a hostile peer, say).
func (c *Cluster) Raw(i int) transport.RPC {
	c.t.Helper()
	var rpc transport.RPC
	var err error
	if c.Mem != nil {
		rpc, err = c.Mem.NewTransport(c.TCfg, c.IDs[i].ID, c.Source, nil)
	} else {
		if c.conns[i] == nil && c.router != nil {
			udp, _ := net.ResolveUDPAddr("udp", c.Addrs[i])
			c.conns[i] = c.simEndpoint(udp)
		}
		rpc, err = transport.New(c.TCfg, c.IDs[i], c.Source, c.conns[i], c.Log, nil)
	}
	if err != nil {
		c.t.Fatalf("raw transport %d: %v", i, err)
	}
	c.t.Cleanup(func() { rpc.Close() })
	return rpc
}
