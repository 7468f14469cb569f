package abcasttest_test

import (
	"fmt"
	"net"
	"testing"
	"testing/synctest"
	"time"

	"github.com/abcast/abcast/actors/abcasttest"
	"github.com/abcast/abcast/broadcast"
)

func udp(last byte) *net.UDPAddr { return &net.UDPAddr{IP: net.IPv4(10, 9, 0, last), Port: 1} }

// readAll reads datagrams from pc until none arrives for a second (virtual
// time), returning when each arrived, relative to start.
func readAll(t *testing.T, pc net.PacketConn, start time.Time) []time.Duration {
	t.Helper()
	var at []time.Duration
	buf := make([]byte, 2000)
	for {
		if err := pc.SetReadDeadline(time.Now().Add(time.Second)); err != nil {
			t.Fatal(err)
		}
		if _, _, err := pc.ReadFrom(buf); err != nil {
			return at
		}
		at = append(at, time.Since(start))
	}
}

// A link's capacity costs time (each packet waits for the ones ahead of
// it and for its own serialization), its queue is bounded (the tail is
// dropped and counted), and latency comes on top.
func TestNetworkCapacityQueueAndLatency(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := abcasttest.NewNetwork(1, 30*time.Millisecond, 0)
		a, b := n.Listen(udp(1)), n.Listen(udp(2))
		defer a.Close()
		defer b.Close()
		n.SetCapacity(100_000) // 1000-byte packets: 10 ms each
		n.SetQueueLimit(10_000)
		start := time.Now()
		for range 50 {
			if _, err := a.WriteTo(make([]byte, 1000), udp(2)); err != nil {
				t.Fatal(err)
			}
		}
		at := readAll(t, b, start)
		st := n.LinkStats(udp(1).String(), udp(2).String())
		if len(at) != 10 || st.Delivered != 10 || st.DroppedQueue != 40 {
			t.Fatalf("%d arrived, stats %+v; want 10 delivered and 40 tail-dropped (queue of 10 KB)", len(at), st)
		}
		for k, d := range at {
			if want := 30*time.Millisecond + time.Duration(k+1)*10*time.Millisecond; d != want {
				t.Fatalf("packet %d arrived after %v, want %v (latency + serialization of it and those ahead)", k, d, want)
			}
		}
		if st.MaxQueueDelay != 100*time.Millisecond {
			t.Fatalf("max queue delay %v, want 100ms", st.MaxQueueDelay)
		}
		// Without a capacity the same burst arrives whole, after the latency.
		n.SetCapacity(0)
		start = time.Now()
		for range 50 {
			a.WriteTo(make([]byte, 1000), udp(2))
		}
		at = readAll(t, b, start)
		if len(at) != 50 || at[49] != 30*time.Millisecond {
			t.Fatalf("unlimited link: %d arrived, last after %v", len(at), at[len(at)-1])
		}
	})
}

// Cuts, loss and the tap drop packets and say so in the counters, per
// link and in total; a per-link setting overrides the network's.
func TestNetworkFaultCounters(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := abcasttest.NewNetwork(7, time.Millisecond, 0)
		a, b, c := n.Listen(udp(1)), n.Listen(udp(2)), n.Listen(udp(3))
		for _, pc := range []net.PacketConn{a, b, c} {
			defer pc.Close()
		}
		send := func(to *net.UDPAddr, k int) {
			for range k {
				a.WriteTo([]byte("x"), to)
			}
		}
		n.Cut(udp(1).String(), udp(2).String())
		send(udp(2), 5)
		n.Heal(udp(1).String(), udp(2).String())
		n.SetLinkLoss(udp(1).String(), udp(3).String(), 1)
		send(udp(3), 7)
		n.SetLinkLoss(udp(1).String(), udp(3).String(), 0)
		n.SetTap(func(p abcasttest.Packet) bool { return string(p.Data) != "x" })
		send(udp(2), 3)
		n.SetTap(nil)
		send(udp(2), 2)
		if got := readAll(t, b, time.Now()); len(got) != 2 {
			t.Fatalf("%d packets arrived at b, want the 2 sent after the faults", len(got))
		}
		st := n.Stats()
		if st.DroppedCut != 5 || st.DroppedLoss != 7 || st.DroppedTap != 3 || st.Delivered != 2 || st.Dropped() != 15 {
			t.Fatalf("stats %+v", st)
		}
		if ls := n.LinkStats(udp(1).String(), udp(3).String()); ls.DroppedLoss != 7 || ls.DroppedCut != 0 {
			t.Fatalf("link 1->3 stats %+v", ls)
		}
	})
}

// A wrapped real socket gets the same faults in real time: a cut link
// delivers nothing, a healed one delivers after at least the latency.
func TestNetworkWrapsRealSockets(t *testing.T) {
	n := abcasttest.NewNetwork(1, 20*time.Millisecond, 0)
	rawA, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	a := n.Wrap(rawA)
	defer a.Close()
	b, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	n.Cut(a.LocalAddr().String(), b.LocalAddr().String())
	a.WriteTo([]byte("cut"), b.LocalAddr())
	n.Heal(a.LocalAddr().String(), b.LocalAddr().String())
	sent := time.Now()
	a.WriteTo([]byte("healed"), b.LocalAddr())
	buf := make([]byte, 100)
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	k, _, err := b.ReadFrom(buf)
	if err != nil || string(buf[:k]) != "healed" {
		t.Fatalf("read %q, %v; want only the packet sent after the heal", buf[:k], err)
	}
	if d := time.Since(sent); d < 20*time.Millisecond {
		t.Fatalf("arrived after %v, before the 20ms latency", d)
	}
	if st := n.Stats(); st.DroppedCut != 1 || st.Delivered != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// Link capacity reaches the nodes: a 4 MiB artifact over 1 MiB/s links
// takes at least four seconds to arrive, while unlimited links deliver it
// within one.
func TestSubnetCapacityCostsTime(t *testing.T) {
	for _, capacity := range []int64{0, 1 << 20} {
		t.Run(fmt.Sprintf("capacity=%d", capacity), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				s := abcasttest.NewSubnet(t, 2, abcasttest.Options{Latency: 10 * time.Millisecond, Capacity: capacity})
				s.StartAll()
				ch := s.OpenChannel("blocks", abcasttest.ChannelOptions{})
				// Measure the transfer, not the handshake.
				if err := abcasttest.Eventually(time.Minute, func() error {
					if _, up := s.Node(0).Transport().ConnID(s.ID(1)); !up {
						return fmt.Errorf("not connected")
					}
					return nil
				}); err != nil {
					t.Fatal(err)
				}
				start := time.Now()
				if err := ch.Publish(0, broadcast.Artifact{ID: "big", Payload: make([]byte, 4<<20)}); err != nil {
					t.Fatal(err)
				}
				ch.AssertDelivered(t, time.Minute)
				at, _ := ch.Recorder(1).DeliveredAt("big")
				took := at.Sub(start)
				st := s.Network().Stats()
				t.Logf("4 MiB delivered after %v; network %+v", took, st)
				if capacity == 0 && took > time.Second {
					t.Fatalf("unlimited links took %v", took)
				}
				if capacity > 0 && (took < 4*time.Second || st.MaxQueueDelay == 0) {
					t.Fatalf("1 MiB/s links delivered 4 MiB after %v (max queue delay %v)", took, st.MaxQueueDelay)
				}
				m := s.Memory(0)
				if m.Published != 4<<20 || s.Memory(1).Held != 4<<20 || m.Live != 1 || m.ProcessHeap == 0 {
					t.Fatalf("memory figures: node 0 %+v, node 1 %+v", m, s.Memory(1))
				}
			})
		})
	}
}

// The same scenario passes on every backend: delivery, a cut that heals,
// a crash (Kill) and a restart.
func TestSubnetBackends(t *testing.T) {
	run := func(t *testing.T, b abcasttest.Backend) {
		s := abcasttest.NewSubnet(t, 3, abcasttest.Options{Backend: b})
		s.StartAll()
		ch := s.OpenChannel("blocks", abcasttest.ChannelOptions{})
		for i := range 3 {
			if err := ch.Publish(i, broadcast.Artifact{ID: broadcast.ArtifactID(fmt.Sprint("a", i)), Payload: make([]byte, 1000*(i+1))}); err != nil {
				t.Fatal(err)
			}
		}
		ch.AssertDelivered(t, time.Minute)
		s.Cut(0, 1)
		if err := ch.Publish(0, broadcast.Artifact{ID: "during-cut", Payload: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		if err := abcasttest.Eventually(time.Second, func() error {
			if _, ok := ch.Recorder(1).Holds("during-cut"); ok {
				return nil
			}
			return fmt.Errorf("not yet")
		}); err == nil {
			t.Fatal("an artifact crossed a cut link")
		}
		s.Heal(0, 1)
		ch.AssertDelivered(t, time.Minute)
		s.Kill(2)
		s.Start(2)
		ch.AssertDelivered(t, time.Minute)
		if lives := ch.Recorder(2).PerLife(); len(lives) != 2 || lives[1] != 3 {
			t.Fatalf("node 2's deliveries per life %v, want the other nodes' 3 artifacts again in its second life", lives)
		}
	}
	t.Run("simulated", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) { run(t, abcasttest.Simulated) })
	})
	t.Run("memory", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) { run(t, abcasttest.Memory) })
	})
	t.Run("loopback-quic", func(t *testing.T) { run(t, abcasttest.LoopbackQUIC) })
}
