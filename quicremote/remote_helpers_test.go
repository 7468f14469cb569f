package quicremote_test

import (
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/abcast/abcast/actors/actorkit"
	"github.com/abcast/abcast/internal/poll"
	"github.com/abcast/abcast/quicremote/transport"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/abcast/abcast/membership"
	"github.com/abcast/abcast/quicremote"
)

// Shared set-up for the remote's tests: n actor systems, each with a remote
// on a real QUIC transport over loopback UDP (or the in-memory transport).

type rnode struct {
	id     *membership.Identity
	src    *membership.StaticSource
	pc     *net.UDPConn
	rpc    transport.RPC
	sys    *actor.ActorSystem
	remote *quicremote.Remote
	dead   bool
}

type rcluster struct {
	t       testing.TB
	nodes   []*rnode
	phantom []*membership.Identity // members that never run
	mem     *transport.MemNetwork
	bubble  bool
}

type rclusterOpts struct {
	mem      bool // in-memory transport instead of QUIC
	phantoms int  // extra members with an address nobody answers on
	remote   func(i int, c *quicremote.Config)
	tcfg     func(c *transport.Config)
	// wrap, if set, wraps node i's transport as its remote sees it.
	wrap func(i int, rpc transport.RPC) transport.RPC
	// bubble: the cluster runs in a testing/synctest bubble (see bubble).
	bubble bool
}

// bubble runs f with an n-node cluster on the in-memory transport inside a
// testing/synctest bubble: time is virtual, so timeouts and grace periods
// pass at once and exactly, and synctest.Wait says when every node has
// done all it can.
func bubble(t *testing.T, n int, o rclusterOpts, f func(t *testing.T, c *rcluster)) {
	t.Helper()
	synctest.Test(t, func(t *testing.T) {
		o.mem, o.bubble = true, true
		f(t, newRCluster(t, n, o))
	})
}

// testMessages are the protobuf types the tests send between nodes.
var testMessages = []proto.Message{
	&wrapperspb.StringValue{}, &wrapperspb.Int64Value{}, &wrapperspb.UInt64Value{}, &wrapperspb.Int32Value{},
	&wrapperspb.BoolValue{}, &wrapperspb.BytesValue{}, &wrapperspb.DoubleValue{}, &wrapperspb.FloatValue{},
}

func remoteLogger(t testing.TB) zerolog.Logger {
	if os.Getenv("QUICREMOTE_DEBUG") != "" {
		return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel)
	}
	return zerolog.Nop()
}

func newRCluster(t testing.TB, n int, o rclusterOpts) *rcluster {
	t.Helper()
	c := &rcluster{t: t, bubble: o.bubble}
	var members []membership.Member
	for i := 0; i < n; i++ {
		id, err := membership.GenerateIdentity(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		nd := &rnode{id: id}
		addr := fmt.Sprintf("10.0.0.%d:4000", i+1)
		if !o.mem {
			nd.pc, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			addr = nd.pc.LocalAddr().String()
		}
		members = append(members, id.Member(addr))
		c.nodes = append(c.nodes, nd)
	}
	for i := 0; i < o.phantoms; i++ {
		id, err := membership.GenerateIdentity(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		addr := fmt.Sprintf("10.0.1.%d:4000", i+1)
		if !o.mem {
			// A bound socket that never answers: dials to it time out.
			pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { pc.Close() })
			addr = pc.LocalAddr().String()
		}
		members = append(members, id.Member(addr))
		c.phantom = append(c.phantom, id)
	}
	snap, err := membership.NewSnapshot(1, members...)
	if err != nil {
		t.Fatal(err)
	}
	if o.mem {
		c.mem = transport.NewMemNetwork()
	}
	for i, nd := range c.nodes {
		nd.src, err = membership.NewStaticSource(snap)
		if err != nil {
			t.Fatal(err)
		}
		log := remoteLogger(t).With().Int("i", i).Logger()
		nd.sys = actorkit.NewActorSystem(log, nd.id.ID.String())
		rcfg := quicremote.DefaultConfig()
		rcfg.Messages = testMessages
		if o.remote != nil {
			o.remote(i, &rcfg)
		}
		nd.remote, err = quicremote.New(nd.sys, nd.id.ID, membership.LatestMembers(nd.src), rcfg, log)
		if err != nil {
			t.Fatal(err)
		}
		tcfg := transport.DefaultConfig()
		tcfg.MaxFrameSize = 16 << 20
		if o.tcfg != nil {
			o.tcfg(&tcfg)
		}
		if o.mem {
			nd.rpc, err = c.mem.NewTransport(tcfg, nd.id.ID, nd.src, nd.remote.PeerEvent)
		} else {
			nd.rpc, err = transport.New(tcfg, nd.id, nd.src, nd.pc, log, nd.remote.PeerEvent)
		}
		if err != nil {
			t.Fatal(err)
		}
		var seen transport.RPC = nd.rpc
		if o.wrap != nil {
			seen = o.wrap(i, nd.rpc)
		}
		if err := nd.remote.Start(seen); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(c.close)
	return c
}

func (c *rcluster) close() {
	for _, nd := range c.nodes {
		c.kill(nd)
	}
	if c.bubble {
		// protoactor's dead-letter log throttle keeps a goroutine for its
		// interval (1 s); the bubble ends only once it is gone.
		time.Sleep(2 * time.Second)
	}
}

// kill stops a node abruptly (remote, transport, socket); its actors
// become unreachable.
func (c *rcluster) kill(nd *rnode) {
	if nd.dead {
		return
	}
	nd.dead = true
	nd.remote.Close()
	nd.rpc.Close()
	if nd.pc != nil {
		nd.pc.Close()
	}
}

// waitMesh waits until every live node sees every other live node up.
func (c *rcluster) waitMesh() {
	c.t.Helper()
	c.eventually("mesh", func() bool {
		for _, a := range c.nodes {
			for _, b := range c.nodes {
				if a != b && !a.dead && !b.dead && !slices.Contains(a.rpc.Peers(), b.id.ID) {
					return false
				}
			}
		}
		return true
	})
}

// eventually checks that cond holds once the cluster has done all it can:
// in a bubble, when every goroutine is blocked (synctest.Wait); over QUIC,
// polling for up to 20 s.
func (c *rcluster) eventually(what string, cond func() bool) {
	c.t.Helper()
	if !c.bubble {
		poll.Until(c.t, 20*time.Second, what, cond)
		return
	}
	synctest.Wait()
	if !cond() {
		c.t.Fatalf("%s: not so once everything settled", what)
	}
}

// recv waits for one value from ch.
func recv[T any](t *testing.T, ch <-chan T, timeout time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(timeout):
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
		panic("unreachable")
	}
}

// isLifecycle reports protoactor's lifecycle messages, which test actors
// ignore.
func isLifecycle(m any) bool {
	switch m.(type) {
	case *actor.Started, *actor.Stopping, *actor.Stopped, *actor.Restarting:
		return true
	}
	return false
}

// collector is an actor that hands every message it receives to a channel.
type collector struct {
	pid *actor.PID
	ch  chan any
	mu  sync.Mutex
}

func spawnCollector(t *testing.T, sys *actor.ActorSystem, name string, buffer int) *collector {
	t.Helper()
	col := &collector{ch: make(chan any, buffer)}
	props := actor.PropsFromFunc(func(c actor.Context) {
		if !isLifecycle(c.Message()) {
			col.ch <- c.Message()
		}
	})
	pid, err := sys.Root.SpawnNamed(props, name)
	if err != nil {
		t.Fatal(err)
	}
	col.pid = pid
	return col
}

func newIdentity(t *testing.T) *membership.Identity {
	t.Helper()
	id, err := membership.GenerateIdentity(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return id
}
