package tests

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/rs/zerolog"

	"github.com/abcast/abcast/actors/abcasttest"
	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/membership"
	"github.com/abcast/abcast/quicremote/transport"
)

// G5 against whole nodes (DESIGN §1 G5): only current members connect.
// Each attack is tried against a running subnet for longer than the
// reconnect and idle timers, and must be refused: the attacker never shows
// up as a peer, nothing it sends reaches a channel, and the honest nodes
// keep delivering to each other.

// attacker starts a bare transport for id at addr on the subnet's network,
// with its own view of the registry (members plus itself), and returns
// it with a function that tries to push an advert to node i.
func attacker(t *testing.T, s *abcasttest.Subnet, id *membership.Identity, addr string) (*transport.Transport, func(i int) error) {
	t.Helper()
	udp, err := net.ResolveUDPAddr("udp", addr)
	must(t, err)
	cur := s.Registry().Current()
	snap := cur // an impostor claims a member's id: the registry as it is
	if !cur.Contains(id.ID) {
		ms := []membership.Member{id.Member(addr)}
		for _, mid := range cur.IDs() {
			m, _ := cur.Member(mid)
			ms = append(ms, m)
		}
		snap, err = membership.NewSnapshot(cur.Version, ms...)
		must(t, err)
	}
	src, err := membership.NewStaticSource(snap)
	must(t, err)
	tr, err := transport.New(transport.DefaultConfig(), id, src, s.Network().Listen(udp), zerolog.Nop(), nil)
	must(t, err)
	t.Cleanup(func() { tr.Close() })
	push := func(i int) error {
		msg, _ := abcasttest.EncodeSlotUpdate(broadcast.SlotUpdate{Commit: 1, Slot: 0, Kind: broadcast.KindPush,
			Artifact: broadcast.Artifact{ID: "intruder", Payload: []byte("x")}})
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return tr.Push(ctx, s.ID(i), abcasttest.UpdateProtocol("consensus"), msg)
	}
	return tr, push
}

// expectRefused watches the honest nodes for d: none may ever see victim
// up (unless allowUp), the attacker's pushes must all fail, and nothing
// named "intruder" may be delivered.
func expectRefused(t *testing.T, s *abcasttest.Subnet, ch *abcasttest.Channel, honest []int, victim membership.NodeID, push func(int) error, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	tries := 0
	for time.Now().Before(deadline) {
		for _, i := range honest {
			if _, up := s.Node(i).Transport().ConnID(victim); up {
				t.Fatalf("node %d sees %s up", i, victim.Short())
			}
			if _, ok := ch.Recorder(i).Holds("intruder"); ok {
				t.Fatalf("node %d delivered the intruder's artifact", i)
			}
			if push != nil {
				tries++
				if err := push(i); err == nil {
					t.Fatalf("attacker's push to node %d succeeded", i)
				}
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("refused for %v (%d pushes tried, all failed)", d, tries)
}

// identityBelow returns a fresh identity whose NodeID sorts below every
// member's, so its transport dials them (the lower NodeID dials).
func identityBelow(t *testing.T, s *abcasttest.Subnet) *membership.Identity {
	for {
		id, err := membership.GenerateIdentity(rand.Reader)
		must(t, err)
		low := true
		for i := range s.N() {
			low = low && id.ID.Less(s.ID(i))
		}
		if low {
			return id
		}
	}
}

// honestTraffic publishes one artifact per running honest node and checks
// they reach each other.
func honestTraffic(t *testing.T, ch *abcasttest.Channel, nodes []int, tag string) {
	t.Helper()
	for _, i := range nodes {
		must(t, ch.Publish(i, broadcast.Artifact{ID: broadcast.ArtifactID(fmt.Sprintf("%s-%d", tag, i)), Payload: make([]byte, 3000)}))
	}
	ch.AssertDelivered(t, time.Minute)
}

func TestSecurityNonMemberRefused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := abcasttest.NewSubnet(t, 3, abcasttest.Options{Latency: 5 * time.Millisecond})
		s.StartAll()
		ch := s.OpenChannel("consensus", abcasttest.ChannelOptions{})
		outsider := identityBelow(t, s)
		_, push := attacker(t, s, outsider, "10.9.9.9:4000")
		expectRefused(t, s, ch, []int{0, 1, 2}, outsider.ID, push, 20*time.Second)
		honestTraffic(t, ch, []int{0, 1, 2}, "after")
	})
}

// Impersonation: node 1 is down and an attacker takes its address,
// claiming its NodeID. With its own valid key (an outsider's, or member
// 2's stolen one) the honest nodes dialling node 1 find a key that does
// not hash to node 1's id; with node 1's certificate but without its
// private key the TLS handshake itself fails. Either way node 1 stays
// down everywhere.
func TestSecurityImpersonationRefused(t *testing.T) {
	for _, mode := range []string{"outsider-key", "member-2-key", "node-1-cert-without-key"} {
		t.Run(mode, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				s := abcasttest.NewSubnet(t, 4, abcasttest.Options{Latency: 5 * time.Millisecond})
				s.StartAll()
				ch := s.OpenChannel("consensus", abcasttest.ChannelOptions{})
				honestTraffic(t, ch, []int{0, 1, 2, 3}, "before")
				s.Stop(1)
				victim := s.Identity(1)
				must(t, abcasttest.Eventually(10*time.Second, func() error {
					for _, i := range []int{0, 2, 3} {
						if _, up := s.Node(i).Transport().ConnID(victim.ID); up {
							return fmt.Errorf("node %d has not noticed node 1 stopped", i)
						}
					}
					return nil
				}))
				var forged *membership.Identity
				switch mode {
				case "outsider-key":
					own, err := membership.GenerateIdentity(rand.Reader)
					must(t, err)
					forged = &membership.Identity{ID: victim.ID, PrivateKey: own.PrivateKey, Certificate: own.Certificate}
				case "member-2-key":
					m2 := s.Identity(2)
					forged = &membership.Identity{ID: victim.ID, PrivateKey: m2.PrivateKey, Certificate: m2.Certificate}
				default:
					own, err := membership.GenerateIdentity(rand.Reader)
					must(t, err)
					forged = &membership.Identity{ID: victim.ID, PrivateKey: own.PrivateKey,
						Certificate: tls.Certificate{Certificate: victim.Certificate.Certificate, PrivateKey: own.PrivateKey}}
				}
				_, push := attacker(t, s, forged, s.Addr(1))
				// Every honest node must keep node 1 down; the attacker's
				// pushes fail (it never gets a welcome as node 1).
				expectRefused(t, s, ch, []int{0, 2, 3}, victim.ID, push, 20*time.Second)
				honestTraffic(t, ch, []int{0, 2, 3}, "during")
			})
		})
	}
}

// A removed member is disconnected at once, its artifacts are withdrawn,
// and it cannot come back while it is out of the registry.
func TestSecurityRemovedMemberCutOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := abcasttest.NewSubnet(t, 4, abcasttest.Options{Latency: 5 * time.Millisecond})
		s.StartAll()
		ch := s.OpenChannel("consensus", abcasttest.ChannelOptions{})
		honestTraffic(t, ch, []int{0, 1, 2, 3}, "before")
		removed := s.ID(3)
		removedAt := time.Now()
		s.Remove(3)
		must(t, abcasttest.Eventually(10*time.Second, func() error {
			for i := range 3 {
				if _, up := s.Node(i).Transport().ConnID(removed); up {
					return fmt.Errorf("node %d still connected to the removed member", i)
				}
				if _, ok := ch.Recorder(i).Holds("before-3"); ok {
					return fmt.Errorf("node %d still holds the removed member's artifact", i)
				}
			}
			return nil
		}))
		t.Logf("removed member disconnected and its artifacts withdrawn within %v", time.Since(removedAt))
		// The removed node keeps running with the old registry it was
		// given... it shares the subnet's registry here, so give it a
		// stale view of its own: a bare transport that still believes in
		// the old membership and tries to reach everyone.
		s.Stop(3)
		old, err := membership.NewSnapshot(1, s.Identity(0).Member(s.Addr(0)), s.Identity(1).Member(s.Addr(1)),
			s.Identity(2).Member(s.Addr(2)), s.Identity(3).Member(s.Addr(3)))
		must(t, err)
		src, err := membership.NewStaticSource(old)
		must(t, err)
		udp, _ := net.ResolveUDPAddr("udp", s.Addr(3))
		tr, err := transport.New(transport.DefaultConfig(), s.Identity(3), src, s.Network().Listen(udp), zerolog.Nop(), nil)
		must(t, err)
		defer tr.Close()
		push := func(i int) error {
			msg, _ := abcasttest.EncodeSlotUpdate(broadcast.SlotUpdate{Commit: 9, Slot: 0, Kind: broadcast.KindPush,
				Artifact: broadcast.Artifact{ID: "intruder", Payload: []byte("x")}})
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			return tr.Push(ctx, s.ID(i), abcasttest.UpdateProtocol("consensus"), msg)
		}
		expectRefused(t, s, ch, []int{0, 1, 2}, removed, push, 20*time.Second)
		honestTraffic(t, ch, []int{0, 1, 2}, "after")
	})
}

// Replay of a captured handshake: every datagram node 0 sent node 1 while
// they connected is recorded, then replayed to node 1 — from node 0's own
// address while the real connection lives, from another address, and
// from node 0's address after node 0 has stopped. No replay yields a
// connection: the live one keeps its id and keeps working, and a stopped
// node 0 stays down.
func TestSecurityHandshakeReplayRefused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := abcasttest.NewSubnet(t, 3, abcasttest.Options{Latency: 5 * time.Millisecond})
		from, to := s.Addr(0), s.Addr(1)
		var mu sync.Mutex
		var captured []abcasttest.Packet
		s.Network().SetTap(func(p abcasttest.Packet) bool {
			if p.From.String() == from && p.To.String() == to {
				mu.Lock()
				if len(captured) < 50 {
					captured = append(captured, p)
				}
				mu.Unlock()
			}
			return true
		})
		s.StartAll()
		ch := s.OpenChannel("consensus", abcasttest.ChannelOptions{})
		honestTraffic(t, ch, []int{0, 1, 2}, "before")
		s.Network().SetTap(nil)
		mu.Lock()
		pkts := append([]abcasttest.Packet(nil), captured...)
		mu.Unlock()
		if len(pkts) == 0 {
			t.Fatal("nothing captured")
		}
		t.Logf("captured %d datagrams of node 0's connection to node 1", len(pkts))
		n1 := s.Node(1).Transport()
		connBefore, up := n1.ConnID(s.ID(0))
		if !up {
			t.Fatal("0-1 not up")
		}
		replay := func(src net.Addr) {
			for range 3 {
				for _, p := range pkts {
					s.Network().Inject(src, p.To, p.Data)
				}
				time.Sleep(2 * time.Second)
			}
		}
		other, _ := net.ResolveUDPAddr("udp", "10.9.9.9:4000")
		s.Network().Listen(other) // the replayer's socket, so answers have somewhere to go
		for _, src := range []net.Addr{pkts[0].From, other} {
			replay(src)
			if now, up := n1.ConnID(s.ID(0)); !up || now != connBefore {
				t.Fatalf("replay from %v disturbed the live connection: id %d -> %d (up %v)", src, connBefore, now, up)
			}
		}
		honestTraffic(t, ch, []int{0, 1, 2}, "after-replay")
		if now, _ := n1.ConnID(s.ID(0)); now != connBefore {
			t.Fatalf("connection id changed %d -> %d", connBefore, now)
		}
		// Node 0 goes away; the replayed handshake must not bring it back.
		s.Stop(0)
		must(t, abcasttest.Eventually(10*time.Second, func() error {
			if _, up := n1.ConnID(s.ID(0)); up {
				return errors.New("node 0 still up at node 1")
			}
			return nil
		}))
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			for _, p := range pkts {
				s.Network().Inject(p.From, p.To, p.Data)
			}
			time.Sleep(time.Second)
			if _, up := n1.ConnID(s.ID(0)); up {
				t.Fatal("a replayed handshake brought the stopped node 0 up")
			}
		}
		honestTraffic(t, ch, []int{1, 2}, "after-stop")
	})
}
