package faultnet_test

import (
	"fmt"
	"net"
	"testing"
	"testing/synctest"
	"time"

	"github.com/abcast/abcast/actors/abcasttest/faultnet"
	"github.com/abcast/abcast/internal/poll"
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
		n := faultnet.New(1, 30*time.Millisecond, 0)
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
		n := faultnet.New(7, time.Millisecond, 0)
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
		n.SetTap(func(p faultnet.Packet) bool { return string(p.Data) != "x" })
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
	n := faultnet.New(1, 20*time.Millisecond, 0)
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
	// The link counts the delivery once the kernel took the packet, which
	// may be after the reader saw it.
	if err := poll.Eventually(5*time.Second, func() error {
		if st := n.Stats(); st.DroppedCut != 1 || st.Delivered != 1 {
			return fmt.Errorf("stats %+v", st)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
