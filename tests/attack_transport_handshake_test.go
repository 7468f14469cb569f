package tests

import (
	"context"
	"crypto/rand"
	"net"
	"runtime"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/abcast/abcast/membership"
	"github.com/abcast/abcast/quicremote/transport"
)

// Issue 16, finding 6: a pre-authentication flood. The attacker sends only
// the first Initial packet of each handshake (captured from real quic-go
// dials, each with its own connection id) from one address and never
// answers, so every one of them would hold server state until the
// handshake idle timeout. The victim must keep its goroutines and heap
// within the bound its handshake limits imply, keep serving a connected
// honest peer, and still admit an honest member that connects during the
// flood (through address validation).
func TestAttackTransportHandshakeFlood(t *testing.T) {
	rate, dur := 2000, 2*time.Second // Initials per second, flood length
	if raceBuild {
		rate = 800 // the race detector allows 8,128 goroutines in all
	}
	synctest.Test(t, func(t *testing.T) {
		an := newAttackNet(t, 4) // 0 attacker, 1 honest, 2 joins mid-flood, 3 victim
		cfg := transport.DefaultConfig()
		victim := an.start(3, cfg)
		honest := an.start(1, cfg)
		must(t, victim.Handle("echo", func(_ context.Context, _ membership.NodeID, req []byte) ([]byte, error) { return req, nil }, 0))
		waitUp(t, honest, an.ids[3].ID)

		initials := captureInitials(t, rate*int(dur/time.Second))
		victimAddr, err := net.ResolveUDPAddr("udp", an.addrs[3])
		must(t, err)
		baseG := runtime.NumGoroutine()
		baseHeap := retainedHeap()

		var peakG, peakHeap peakTracker
		sample := func() {
			peakG.see(uint64(runtime.NumGoroutine()))
			peakHeap.see(retainedHeap())
		}
		var wg sync.WaitGroup
		wg.Go(func() {
			for i, p := range initials {
				if _, err := an.pcs[0].WriteTo(p, victimAddr); err != nil {
					t.Errorf("flood: %v", err)
					return
				}
				if (i+1)%(rate/1000+1) == 0 {
					time.Sleep(time.Millisecond)
				}
			}
		})
		var joiner *transport.Transport
		honestCalls := 0
		start := time.Now()
		for time.Since(start) < dur+time.Second {
			time.Sleep(100 * time.Millisecond)
			sample()
			resp, err := callWithin(honest, 5*time.Second, an.ids[3].ID, "echo", []byte("hi"))
			if err != nil || string(resp) != "hi" {
				t.Fatalf("honest call during the flood: %q %v", resp, err)
			}
			honestCalls++
			if joiner == nil && time.Since(start) > dur/2 {
				joiner = an.start(2, cfg)
			}
		}
		wg.Wait()
		waitUp(t, joiner, an.ids[3].ID)
		if resp, err := callWithin(joiner, 5*time.Second, an.ids[3].ID, "echo", []byte("late")); err != nil || string(resp) != "late" {
			t.Fatalf("call by the member that connected during the flood: %q %v", resp, err)
		}
		sample()

		// Bound: every handshake in progress costs quic-go three goroutines
		// and about 40 KB (measured; 64 KiB allowed), and the victim keeps
		// at most MaxPendingHandshakes of them; 50 goroutines and 8 MiB of
		// slack for the honest nodes' own work.
		maxG := uint64(baseG) + 3*uint64(cfg.MaxPendingHandshakes) + 50
		maxHeap := baseHeap + uint64(cfg.MaxPendingHandshakes)*64<<10 + 8<<20
		hs := victim.Handshakes()
		t.Logf("flood of %d Initials at %d/s: goroutines base %d peak %d (bound %d); retained heap base %.1f MiB peak %.1f MiB (bound %.1f MiB); %d honest calls; handshakes %+v",
			len(initials), rate, baseG, peakG.get(), maxG, mib(baseHeap), mib(peakHeap.get()), mib(maxHeap), honestCalls, hs)
		if peakG.get() > maxG {
			t.Errorf("goroutines peaked at %d, bound %d", peakG.get(), maxG)
		}
		if peakHeap.get() > maxHeap {
			t.Errorf("retained heap peaked at %.1f MiB, bound %.1f MiB", mib(peakHeap.get()), mib(maxHeap))
		}
		if hs.Retries == 0 {
			t.Error("the flood never triggered address validation")
		}
		// The flooded handshakes that got state end as abandoned.
		eventuallyWithin(t, time.Minute, "the unfinished handshakes to end", func() bool { return victim.Handshakes().InProgress == 0 })
		if hs := victim.Handshakes(); hs.Abandoned == 0 || hs.Abandoned > uint64(cfg.RetryHandshakesAbove+cfg.MaxPendingHandshakes) {
			t.Errorf("abandoned handshakes %d, want 1..%d", hs.Abandoned, cfg.RetryHandshakesAbove+cfg.MaxPendingHandshakes)
		}
	})
}

// captureInitials returns n first datagrams of real quic-go dials, each
// from a different dial (so each carries a fresh connection id). Nothing
// is sent anywhere: the dials write into a capturing socket and are
// abandoned once their first datagram was taken.
func captureInitials(t *testing.T, n int) [][]byte {
	t.Helper()
	cp := &capturePC{out: make(chan []byte, 256), closed: make(chan struct{})}
	qt := &quic.Transport{Conn: cp}
	defer qt.Close()
	defer close(cp.closed)
	id := an0Identity(t)
	tlsConf := membership.ClientTLSConfig(id, nil, id.ID, []string{transport.ALPN})
	to := &net.UDPAddr{IP: net.IPv4(10, 7, 0, 99), Port: 4000}
	seen := make(map[string]bool)
	var out [][]byte
	for len(out) < n {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			_, _ = qt.Dial(ctx, to, tlsConf, &quic.Config{})
		}()
		for got := false; !got; {
			p := <-cp.out
			dcid, ok := initialDCID(p)
			if ok && !seen[string(dcid)] {
				seen[string(dcid)] = true
				out = append(out, p)
				got = true
			}
		}
		cancel()
		<-done
	}
	return out
}

// an0Identity is a throwaway identity for the capturing dials; the victim
// never sees their handshakes get as far as a certificate.
func an0Identity(t *testing.T) *membership.Identity {
	id, err := membership.GenerateIdentity(rand.Reader)
	must(t, err)
	return id
}

// initialDCID returns the destination connection id of a QUIC long-header
// packet.
func initialDCID(p []byte) ([]byte, bool) {
	if len(p) < 6 || p[0]&0x80 == 0 {
		return nil, false
	}
	l := int(p[5])
	if len(p) < 6+l {
		return nil, false
	}
	return p[6 : 6+l], true
}

// capturePC is a PacketConn that hands every written datagram to out and
// never receives anything.
type capturePC struct {
	out    chan []byte
	closed chan struct{}
}

func (c *capturePC) WriteTo(p []byte, _ net.Addr) (int, error) {
	select {
	case c.out <- append([]byte(nil), p...):
	case <-c.closed:
	default: // retransmissions of abandoned dials
	}
	return len(p), nil
}

func (c *capturePC) ReadFrom([]byte) (int, net.Addr, error) {
	<-c.closed
	return 0, nil, net.ErrClosed
}

func (c *capturePC) Close() error                     { return nil }
func (c *capturePC) LocalAddr() net.Addr              { return &net.UDPAddr{IP: net.IPv4(10, 7, 0, 98), Port: 4000} }
func (c *capturePC) SetDeadline(time.Time) error      { return nil }
func (c *capturePC) SetReadDeadline(time.Time) error  { return nil }
func (c *capturePC) SetWriteDeadline(time.Time) error { return nil }
