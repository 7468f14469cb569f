package transport

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/abcast/abcast/actors/abcasttest/faultnet"
	"github.com/abcast/abcast/membership"
)

// eventLog records peer events and lets a test wait for a condition on
// them without sleeping.
type eventLog struct {
	mu      sync.Mutex
	evs     []PeerEvent
	changed chan struct{}
}

func newEventLog() *eventLog { return &eventLog{changed: make(chan struct{})} }

func (l *eventLog) add(ev PeerEvent) {
	l.mu.Lock()
	l.evs = append(l.evs, ev)
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
}

func (l *eventLog) all() []PeerEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.evs)
}

// waitFor blocks until cond holds on the events or timeout passes (virtual
// time inside synctest).
func (l *eventLog) waitFor(t *testing.T, timeout time.Duration, what string, cond func([]PeerEvent) bool) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		ok := cond(l.evs)
		ch := l.changed
		l.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s; events: %v", timeout, what, l.all())
		}
	}
}

// lastUp returns the connID of the latest PeerUp for peer that is not
// followed by a PeerDown for the same connection.
func lastUp(evs []PeerEvent, peer membership.NodeID) (uint64, bool) {
	var id uint64
	up := false
	for _, e := range evs {
		switch e := e.(type) {
		case PeerUp:
			if e.Peer == peer {
				id, up = e.ConnID, true
			}
		case PeerDown:
			if e.Peer == peer && e.ConnID == id {
				up = false
			}
		}
	}
	return id, up
}

// waitUp waits until peer is up with a connID greater than after.
func (l *eventLog) waitUp(t *testing.T, peer membership.NodeID, after uint64, timeout time.Duration) uint64 {
	t.Helper()
	var got uint64
	l.waitFor(t, timeout, fmt.Sprintf("PeerUp %s after conn %d", peer.Short(), after), func(evs []PeerEvent) bool {
		id, up := lastUp(evs, peer)
		got = id
		return up && id > after
	})
	return got
}

// waitDown waits until peer is not up.
func (l *eventLog) waitDown(t *testing.T, peer membership.NodeID, timeout time.Duration) {
	t.Helper()
	l.waitFor(t, timeout, "PeerDown "+peer.Short(), func(evs []PeerEvent) bool {
		_, up := lastUp(evs, peer)
		return !up
	})
}

// tnode is one node of a test cluster.
type tnode struct {
	id     *membership.Identity
	addr   string
	src    *membership.StaticSource
	rpc    RPC
	events *eventLog
	// QUIC only
	pc net.PacketConn
}

// cluster is what the conformance suite needs from a backend.
type cluster struct {
	t     *testing.T
	cfg   Config
	nodes []*tnode
	// partition and heal cut or restore the link between two nodes.
	partition func(i, j int)
	heal      func(i, j int)
	// linkTimeout is how long a partitioned link takes to be noticed, plus
	// slack (QUIC: the idle timeout; memory: immediate).
	linkTimeout time.Duration
	// build starts node i's transport from its source.
	build   func(i int) RPC
	cleanup []func()

	// simnet backend only
	net   *faultnet.Network
	spare *tnode // an extra endpoint and identity, not a member
}

// newIdentities returns n identities sorted by NodeID, so node 0 is the
// lowest (it dials everyone).
func newIdentities(t *testing.T, n int) []*membership.Identity {
	t.Helper()
	ids := make([]*membership.Identity, n)
	for i := range ids {
		id, err := membership.GenerateIdentity(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = id
	}
	slices.SortFunc(ids, func(a, b *membership.Identity) int { return a.ID.Compare(b.ID) })
	return ids
}

// snapshot builds a snapshot of the given nodes.
func (c *cluster) snapshot(version uint64, idx ...int) *membership.Snapshot {
	c.t.Helper()
	var ms []membership.Member
	for _, i := range idx {
		ms = append(ms, c.nodes[i].id.Member(c.nodes[i].addr))
	}
	s, err := membership.NewSnapshot(version, ms...)
	if err != nil {
		c.t.Fatal(err)
	}
	return s
}

// setMembers installs a snapshot of members on the sources of the nodes in on.
func (c *cluster) setMembers(version uint64, members []int, on ...int) {
	c.t.Helper()
	s := c.snapshot(version, members...)
	for _, i := range on {
		if err := c.nodes[i].src.Update(s); err != nil {
			c.t.Fatal(err)
		}
	}
}

func (c *cluster) start(i int) {
	c.nodes[i].rpc = c.build(i)
}

func (c *cluster) close() {
	for _, n := range c.nodes {
		if n.rpc != nil {
			if err := n.rpc.Close(); err != nil {
				c.t.Errorf("close: %v", err)
			}
		}
	}
	for i := len(c.cleanup) - 1; i >= 0; i-- {
		c.cleanup[i]()
	}
}

// waitMesh waits until every started pair of member nodes is up.
func (c *cluster) waitMesh(idx ...int) {
	c.t.Helper()
	for _, i := range idx {
		for _, j := range idx {
			if i != j {
				c.nodes[i].events.waitUp(c.t, c.nodes[j].id.ID, 0, 30*time.Second)
			}
		}
	}
}

func testLogger(t *testing.T) zerolog.Logger {
	if os.Getenv("QUICREMOTE_DEBUG") != "" {
		return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel)
	}
	return zerolog.Nop()
}

// backend builds a cluster of n nodes, all members of snapshot version 1
// unless members says otherwise; nodes are not started.
type backend struct {
	name string
	new  func(t *testing.T, cfg Config, n int) *cluster
}

var backends = []backend{
	{"mem", newMemCluster},
	{"quic", newSimnetCluster},
}

func newMemCluster(t *testing.T, cfg Config, n int) *cluster {
	c := &cluster{t: t, cfg: cfg}
	net := NewMemNetwork()
	for i, id := range newIdentities(t, n) {
		c.nodes = append(c.nodes, &tnode{id: id, addr: fmt.Sprintf("10.0.0.%d:4000", i+1), events: newEventLog()})
	}
	all := make([]int, n)
	for i := range all {
		all[i] = i
	}
	for _, nd := range c.nodes {
		src, err := membership.NewStaticSource(c.snapshot(1, all...))
		if err != nil {
			t.Fatal(err)
		}
		nd.src = src
	}
	c.partition = func(i, j int) { net.Disconnect(c.nodes[i].id.ID, c.nodes[j].id.ID) }
	c.heal = func(i, j int) { net.Connect(c.nodes[i].id.ID, c.nodes[j].id.ID) }
	c.linkTimeout = time.Second
	c.build = func(i int) RPC {
		nd := c.nodes[i]
		m, err := net.NewTransport(cfg, nd.id.ID, nd.src, nd.events.add)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	return c
}

// newSimnetCluster runs real QUIC transports over the test kit's simulated
// network (faultnet, on quic-go's simnet sockets); use it inside
// synctest.Test.
func newSimnetCluster(t *testing.T, cfg Config, n int) *cluster {
	c := &cluster{t: t, cfg: cfg}
	sn := faultnet.New(1, 2*time.Millisecond, 0)
	for i, id := range newIdentities(t, n+1) {
		udp := &net.UDPAddr{IP: net.IPv4(1, 0, 0, byte(i+1)), Port: 9000}
		pc := sn.Listen(udp)
		c.nodes = append(c.nodes, &tnode{id: id, addr: udp.String(), pc: pc, events: newEventLog()})
	}
	// The extra endpoint is a spare for tests that need a raw sender.
	c.spare = c.nodes[n]
	c.nodes = c.nodes[:n:n]
	all := make([]int, n)
	for i := range all {
		all[i] = i
	}
	for _, nd := range c.nodes {
		src, err := membership.NewStaticSource(c.snapshot(1, all...))
		if err != nil {
			t.Fatal(err)
		}
		nd.src = src
	}
	c.partition = func(i, j int) { sn.Cut(c.nodes[i].addr, c.nodes[j].addr) }
	c.heal = func(i, j int) { sn.Heal(c.nodes[i].addr, c.nodes[j].addr) }
	c.linkTimeout = cfg.IdleTimeout + 5*time.Second
	c.build = func(i int) RPC {
		nd := c.nodes[i]
		tr, err := New(cfg, nd.id, nd.src, nd.pc, testLogger(t).With().Int("i", i).Logger(), nd.events.add)
		if err != nil {
			t.Fatal(err)
		}
		return tr
	}
	c.cleanup = append(c.cleanup, func() {
		for _, nd := range c.nodes {
			nd.pc.Close()
		}
		c.spare.pc.Close()
		sn.Close()
	})
	c.net = sn
	return c
}

// echo is a handler that returns its request.
func echo(_ context.Context, _ membership.NodeID, req []byte) ([]byte, error) { return req, nil }

func mustHandle(t *testing.T, r RPC, protocol string, h Handler, limit int) {
	t.Helper()
	if err := r.Handle(protocol, h, limit); err != nil {
		t.Fatal(err)
	}
}

// countingLogger returns a logger that counts the lines whose message is
// msg, for tests that check what is logged and how often.
func countingLogger(msg string) (zerolog.Logger, *atomic.Int64) {
	var n atomic.Int64
	log := zerolog.New(io.Discard).Hook(zerolog.HookFunc(func(_ *zerolog.Event, _ zerolog.Level, m string) {
		if m == msg {
			n.Add(1)
		}
	}))
	return log, &n
}
