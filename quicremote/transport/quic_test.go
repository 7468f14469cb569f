package transport

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/abcast/abcast/actors/abcasttest/faultnet"
	"github.com/abcast/abcast/internal/poll"
	"github.com/abcast/abcast/membership"
)

// Tests of behaviour that belongs to QUIC itself: restarts and stateless
// resets, TLS admission, raw garbage, real sockets, large messages.

func simTest(t *testing.T, n int, cfg Config, f func(t *testing.T, c *cluster)) {
	synctest.Test(t, func(t *testing.T) {
		c := newSimnetCluster(t, cfg, n)
		defer c.close()
		f(t, c)
	})
}

func hasPeerUp(evs []PeerEvent) bool {
	for _, e := range evs {
		if _, ok := e.(PeerUp); ok {
			return true
		}
	}
	return false
}

// A peer that restarts (without a chance to say goodbye) is reachable
// again on a newer connection id, and the survivor notices the restart
// from the stateless reset, long before its idle timeout.
func TestRestartNoticedByStatelessReset(t *testing.T) {
	for _, who := range []int{0, 1} { // 0 dials, 1 accepts
		t.Run(fmt.Sprintf("restart-node-%d", who), func(t *testing.T) {
			simTest(t, 2, DefaultConfig(), func(t *testing.T, c *cluster) {
				startAll(c)
				for _, n := range c.nodes {
					mustHandle(t, n.rpc, "echo", echo, 0)
				}
				c.waitMesh(0, 1)
				other := 1 - who
				survivor := c.nodes[other]
				before, _ := survivor.rpc.ConnID(c.nodes[who].id.ID)

				// Crash: the dying node's goodbye packets are lost.
				c.net.SetTap(func(p faultnet.Packet) bool { return p.From.String() != c.nodes[who].addr })
				if err := c.nodes[who].rpc.Close(); err != nil {
					t.Fatal(err)
				}
				c.net.SetTap(nil)
				crashed := time.Now()
				c.nodes[who].events = newEventLog()
				c.start(who)
				mustHandle(t, c.nodes[who].rpc, "echo", echo, 0)

				if who == 0 {
					// The restarted dialler redials at once; the acceptor
					// replaces the dead connection with the new one.
					after := survivor.events.waitUp(t, c.nodes[who].id.ID, before, 2*time.Second)
					t.Logf("restarted dialler back after %v (virtual); conn id %d -> %d", time.Since(crashed), before, after)
				}
				if who == 1 {
					survivor.events.waitDown(t, c.nodes[who].id.ID, c.cfg.IdleTimeout)
				}
				noticed := time.Since(crashed)
				if who == 1 {
					// The survivor dials; its old connection dies by the
					// new process's stateless reset in most runs. In a few,
					// quic-go reports the same event as a lost connection
					// (the reset arrives while it probes the path); what
					// matters is that it is noticed before the idle
					// timeout, checked below.
					var sr *quic.StatelessResetError
					if err := lastDownErr(survivor.events.all()); !errors.As(err, &sr) {
						t.Logf("old connection ended by %v rather than a stateless reset", err)
					}
				}
				if noticed >= c.cfg.IdleTimeout {
					t.Fatalf("restart noticed after %v, not before the idle timeout", noticed)
				}
				after := survivor.events.waitUp(t, c.nodes[who].id.ID, before, 10*time.Second)
				t.Logf("restart noticed after %v (virtual); conn id %d -> %d", noticed, before, after)
				if resp, err := survivor.rpc.Call(t.Context(), c.nodes[who].id.ID, "echo", []byte("again")); err != nil || string(resp) != "again" {
					t.Fatalf("call after restart: %q %v", resp, err)
				}
			})
		})
	}
}

func lastDownErr(evs []PeerEvent) error {
	var err error
	for _, e := range evs {
		if d, ok := e.(PeerDown); ok {
			err = d.Err
		}
	}
	return err
}

// The acceptor does not know the dialler yet: the handshake is refused
// (and the dialler reports nothing up, although quic-go's dial succeeded),
// then the acceptor learns of it and the next redial succeeds.
func TestTransientTLSRefusalThenSuccess(t *testing.T) {
	simTest(t, 2, DefaultConfig(), func(t *testing.T, c *cluster) {
		c.setMembers(2, []int{1}, 1) // node 1 does not know node 0
		startAll(c)
		time.Sleep(3 * time.Second) // several refused dials (virtual time)
		if hasPeerUp(c.nodes[0].events.all()) || hasPeerUp(c.nodes[1].events.all()) {
			t.Fatalf("peer reported up despite TLS refusal: %v / %v", c.nodes[0].events.all(), c.nodes[1].events.all())
		}
		c.setMembers(3, []int{0, 1}, 1)
		c.waitMesh(0, 1)
	})
}

// lowerIdentity returns a fresh identity whose NodeID is below than.
func lowerIdentity(t *testing.T, than membership.NodeID) *membership.Identity {
	for {
		id := newIdentities(t, 1)[0]
		if id.ID.Less(than) {
			return id
		}
	}
}

// A node outside the member set dials a member: the handshake fails on the
// member's side, and neither reports the other up.
func TestNonMemberHandshakeFails(t *testing.T) {
	simTest(t, 1, DefaultConfig(), func(t *testing.T, c *cluster) {
		member := c.nodes[0]
		log, logged := countingLogger("incoming handshake failed")
		mtr, err := New(c.cfg, member.id, member.src, member.pc, log, member.events.add)
		if err != nil {
			t.Fatal(err)
		}
		member.rpc = mtr
		outsider := lowerIdentity(t, member.id.ID) // lower, so it dials
		snap, err := membership.NewSnapshot(1, outsider.Member(c.spare.addr), member.id.Member(member.addr))
		if err != nil {
			t.Fatal(err)
		}
		src, _ := membership.NewStaticSource(snap)
		evs := newEventLog()
		tr, err := New(c.cfg, outsider, src, c.spare.pc, testLogger(t), evs.add)
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		time.Sleep(20 * time.Second)
		if hasPeerUp(evs.all()) || hasPeerUp(member.events.all()) {
			t.Fatalf("non-member got in: outsider %v, member %v", evs.all(), member.events.all())
		}
		if _, err := tr.Call(t.Context(), member.id.ID, "echo", nil); !errors.Is(err, ErrNotConnected) {
			t.Fatalf("outsider call: %v", err)
		}
		// Each refused handshake is counted, and logged at most once a
		// second.
		hs := mtr.Handshakes()
		if hs.Failed < 2 || hs.Completed != 0 || hs.InProgress != 0 {
			t.Fatalf("member's handshake counters after 20 s of refused dials: %+v", hs)
		}
		if n := logged.Load(); n == 0 || n > 21 {
			t.Fatalf("%d log lines for %d failed handshakes in 20 s", n, hs.Failed)
		}
		t.Logf("%d failed handshakes, %d log lines", hs.Failed, logged.Load())
	})
}

// Node 0 believes member X lives at node 1's address; node 1 answers with
// its own key, which does not hash to X, so node 0 refuses it.
func TestWrongKeyForDialledNodeFails(t *testing.T) {
	simTest(t, 2, DefaultConfig(), func(t *testing.T, c *cluster) {
		a, b := c.nodes[0], c.nodes[1]
		var x *membership.Identity
		for x == nil || !a.id.ID.Less(x.ID) {
			x = newIdentities(t, 1)[0]
		}
		snap, err := membership.NewSnapshot(2, a.id.Member(a.addr), x.Member(b.addr))
		if err != nil {
			t.Fatal(err)
		}
		if err := a.src.Update(snap); err != nil {
			t.Fatal(err)
		}
		startAll(c)
		time.Sleep(20 * time.Second)
		if hasPeerUp(a.events.all()) || hasPeerUp(b.events.all()) {
			t.Fatalf("impostor accepted: %v / %v", a.events.all(), b.events.all())
		}
	})
}

// Datagrams that are not QUIC are counted and do no harm.
func TestGarbageDatagramsCountedAndSurvived(t *testing.T) {
	simTest(t, 2, DefaultConfig(), func(t *testing.T, c *cluster) {
		startAll(c)
		mustHandle(t, c.nodes[1].rpc, "echo", echo, 0)
		c.waitMesh(0, 1)
		target, _ := net.ResolveUDPAddr("udp", c.nodes[1].addr)
		const nonQUIC = 20
		buf := make([]byte, 200)
		for i := range 2 * nonQUIC {
			rand.Read(buf)
			if i%2 == 0 {
				buf[0] &= 0x3f // no QUIC fixed bit: quic-go hands it to us
			} else {
				buf[0] |= 0xc0 // looks like a long header: quic-go drops it
			}
			if _, err := c.spare.pc.WriteTo(buf, target); err != nil {
				t.Fatal(err)
			}
		}
		tr := c.nodes[1].rpc.(*Transport)
		_ = poll.Eventually(5*time.Second, func() error {
			if tr.GarbageDatagrams() < nonQUIC {
				return errors.New("not all counted yet")
			}
			return nil
		})
		if got := tr.GarbageDatagrams(); got != nonQUIC {
			t.Fatalf("counted %d garbage datagrams, want %d", got, nonQUIC)
		}
		if resp, err := c.nodes[0].rpc.Call(t.Context(), c.nodes[1].id.ID, "echo", []byte("ok")); err != nil || string(resp) != "ok" {
			t.Fatalf("call after garbage: %q %v", resp, err)
		}
	})
}

// rawMember speaks the wire protocol by hand as node 0 towards node 1.
func rawMember(t *testing.T, c *cluster) (*quic.Conn, func()) {
	return rawMemberWith(t, c, &quic.Config{MaxIdleTimeout: c.cfg.IdleTimeout, KeepAlivePeriod: c.cfg.KeepAlive})
}

// rawAgainstNode1 starts node 1 with an echo handler and connects to it as
// node 0 speaking the protocol by hand (rawMemberWith), once node 1 sees
// node 0 up.
func rawAgainstNode1(t *testing.T, c *cluster, qconf *quic.Config) (*tnode, *quic.Conn, func()) {
	c.start(1)
	b := c.nodes[1]
	mustHandle(t, b.rpc, "echo", echo, 0)
	if qconf == nil {
		qconf = &quic.Config{MaxIdleTimeout: c.cfg.IdleTimeout, KeepAlivePeriod: c.cfg.KeepAlive}
	}
	conn, closeRaw := rawMemberWith(t, c, qconf)
	b.events.waitUp(t, c.nodes[0].id.ID, 0, 5*time.Second)
	return b, conn, closeRaw
}

// rawMemberWith is rawMember with a QUIC config of the test's choosing.
func rawMemberWith(t *testing.T, c *cluster, qconf *quic.Config) (*quic.Conn, func()) {
	a, b := c.nodes[0], c.nodes[1]
	qt := &quic.Transport{Conn: a.pc}
	raddr, _ := net.ResolveUDPAddr("udp", b.addr)
	conn, err := qt.Dial(t.Context(), raddr,
		membership.ClientTLSConfig(a.id, membership.LatestMembers(a.src), b.id.ID, []string{ALPN}), qconf)
	if err != nil {
		t.Fatal(err)
	}
	str, err := conn.OpenStreamSync(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	str.Write(welcomeFor(a.id.ID))
	str.Close()
	if err := readWelcome(str, b.id.ID); err != nil {
		t.Fatal(err)
	}
	return conn, func() { conn.CloseWithError(0, ""); qt.Close() }
}

// rawRequest writes b on a new stream and returns how the peer answered.
func rawRequest(t *testing.T, conn *quic.Conn, b []byte, fin bool) (quic.StreamErrorCode, []byte) {
	str, err := conn.OpenStreamSync(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	str.Write(b)
	if fin {
		str.Close()
	}
	var out []byte
	buf := make([]byte, 1024)
	for {
		n, err := str.Read(buf)
		out = append(out, buf[:n]...)
		var se *quic.StreamError
		if errors.As(err, &se) {
			return se.ErrorCode, out
		}
		if err != nil {
			return 0, out
		}
	}
}

// A member that sends malformed streams gets them reset and counted, and
// its connection keeps working.
func TestGarbageStreamFramesCountedAndSurvived(t *testing.T) {
	simTest(t, 2, DefaultConfig(), func(t *testing.T, c *cluster) {
		b, conn, closeRaw := rawAgainstNode1(t, c, nil)
		defer closeRaw()

		req := func(kind byte, name string, payload []byte) []byte {
			return append(appendRequestHeader(nil, kind, name, len(payload)), payload...)
		}
		cases := []struct {
			name string
			b    []byte
			fin  bool
			code quic.StreamErrorCode
		}{
			{"bad version", append([]byte{9}, req(kindCall, "echo", nil)[1:]...), true, codeGarbage},
			{"bad kind", req(7, "echo", nil), true, codeGarbage},
			{"empty name", []byte{wireVersion, kindCall, 0, 0, 0, 0, 0}, true, codeGarbage},
			{"trailing bytes", append(req(kindCall, "echo", []byte("x")), "junk"...), true, codeGarbage},
			{"truncated frame", req(kindCall, "echo", []byte("0123456789"))[:12], true, codeGarbage},
			{"stalled header", []byte{wireVersion, kindCall}, false, codeGarbage},
			{"oversized", binary.BigEndian.AppendUint32(appendRequestHeader(nil, kindCall, "echo", 0)[:7], 1<<31), false, codeTooLarge},
			{"unknown protocol", req(kindCall, "nope", nil), true, codeNoHandler},
		}
		for _, tc := range cases {
			code, _ := rawRequest(t, conn, tc.b, tc.fin)
			if code != tc.code {
				t.Errorf("%s: reset code %#x, want %#x", tc.name, code, tc.code)
			}
		}
		code, out := rawRequest(t, conn, req(kindCall, "echo", []byte("fine")), true)
		if st, resp, err := decodeResponse(out, 100); code != 0 || err != nil || st != statusOK || string(resp) != "fine" {
			t.Fatalf("valid raw request: code %d, %v %q %v", code, st, resp, err)
		}
		got := b.rpc.(*Transport).Stats(c.nodes[0].id.ID)
		want := PeerStats{GarbageFrames: 6, OversizedFrames: 1, RefusedStreams: 1}
		if got != want {
			t.Fatalf("stats %+v, want %+v", got, want)
		}
		if _, up := lastUp(b.events.all(), c.nodes[0].id.ID); !up {
			t.Fatal("connection dropped after garbage")
		}
	})
}

// A protocol whose handler never returns: its callers fail by their
// deadline (refused while the protocol is full, then cancelled), the
// receiver's memory stays bounded, and another protocol on the same
// connection keeps answering.
func TestPushbackStuckHandler(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxIncomingStreams = 16
	cfg.DefaultProtocolLimit = 8
	simTest(t, 2, cfg, func(t *testing.T, c *cluster) {
		startAll(c)
		a, b := c.nodes[0], c.nodes[1]
		stuck := make(chan struct{})
		var entered atomic.Int32
		mustHandle(t, b.rpc, "stuck", func(context.Context, membership.NodeID, []byte) ([]byte, error) {
			entered.Add(1)
			<-stuck // ignores ctx on purpose
			return nil, nil
		}, 8)
		mustHandle(t, b.rpc, "echo", echo, 4)
		c.waitMesh(0, 1)

		runtime.GC()
		var base runtime.MemStats
		runtime.ReadMemStats(&base)

		payload := make([]byte, 1<<20)
		const callers = 64
		const deadline = 2 * time.Second
		var wg sync.WaitGroup
		var refused, cancelled, late atomic.Int32
		start := time.Now()
		for range callers {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(t.Context(), deadline)
				defer cancel()
				for {
					_, err := a.rpc.Call(ctx, b.id.ID, "stuck", payload)
					switch {
					case errors.Is(err, ErrRefused):
						refused.Add(1)
						select { // a real caller backs off
						case <-time.After(250 * time.Millisecond):
							continue
						case <-ctx.Done():
						}
						cancelled.Add(1)
					case errors.Is(err, ErrCancelled):
						cancelled.Add(1)
					default:
						t.Errorf("stuck call: %v", err)
					}
					if time.Since(start) > deadline+time.Second {
						late.Add(1)
					}
					return
				}
			})
		}
		// While the callers hammer, the other protocol answers.
		for i := range 20 {
			msg := []byte(fmt.Sprint(i))
			if resp, err := a.rpc.Call(t.Context(), b.id.ID, "echo", msg); err != nil || string(resp) != string(msg) {
				t.Fatalf("echo during pushback: %q %v", resp, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		var peak runtime.MemStats
		runtime.ReadMemStats(&peak)
		wg.Wait()
		if cancelled.Load() != callers || late.Load() != 0 {
			t.Fatalf("callers: %d ended by deadline, %d late", cancelled.Load(), late.Load())
		}
		if entered.Load() != 8 {
			t.Fatalf("%d stuck handlers entered, want the limit 8", entered.Load())
		}
		growth := int64(peak.HeapInuse) - int64(base.HeapInuse)
		t.Logf("pushback: %d callers × 1 MiB, %d refusals, heap in use grew by %.1f MiB (base %.1f MiB)",
			callers, refused.Load(), float64(growth)/(1<<20), float64(base.HeapInuse)/(1<<20))
		if growth > 64<<20 {
			t.Fatalf("heap grew by %d MiB under pushback", growth>>20)
		}
		if resp, err := a.rpc.Call(t.Context(), b.id.ID, "echo", []byte("after")); err != nil || string(resp) != "after" {
			t.Fatalf("echo after pushback: %q %v", resp, err)
		}
		close(stuck)
	})
}

// ---- real UDP on loopback ----

type udpNode struct {
	id  *membership.Identity
	pc  *net.UDPConn
	tr  *Transport
	evs *eventLog
}

func newLoopbackPair(t *testing.T, cfg Config) []*udpNode {
	ids := newIdentities(t, 2)
	nodes := make([]*udpNode, 2)
	var members []membership.Member
	for i := range nodes {
		pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		nodes[i] = &udpNode{id: ids[i], pc: pc, evs: newEventLog()}
		members = append(members, ids[i].Member(pc.LocalAddr().String()))
	}
	snap, err := membership.NewSnapshot(1, members...)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		src, _ := membership.NewStaticSource(snap)
		n.tr, err = New(cfg, n.id, src, n.pc, testLogger(t), n.evs.add)
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, n := range nodes {
			n.tr.Close()
			n.pc.Close()
		}
	})
	nodes[0].evs.waitUp(t, nodes[1].id.ID, 0, 10*time.Second)
	nodes[1].evs.waitUp(t, nodes[0].id.ID, 0, 10*time.Second)
	return nodes
}

// checkNoLeak fails if goroutines started during the test outlive it.
func checkNoLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		_ = poll.Eventually(5*time.Second, func() error {
			if runtime.NumGoroutine() > before {
				return errors.New("goroutines above the baseline")
			}
			return nil
		})
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<20)
			t.Errorf("%d goroutines leaked:\n%s", n-before, buf[:runtime.Stack(buf, true)])
		}
	})
}

func TestLoopbackUDP(t *testing.T) {
	checkNoLeak(t)
	nodes := newLoopbackPair(t, DefaultConfig())
	for _, n := range nodes {
		mustHandle(t, n.tr, "echo", echo, 0)
		mustHandle(t, n.tr, "digest", func(_ context.Context, _ membership.NodeID, req []byte) ([]byte, error) {
			sum := sha256.Sum256(req)
			return sum[:], nil
		}, 0)
	}
	// A generous bound: this checks that a 100 MiB call completes intact,
	// not how fast (BenchmarkCall measures that); under the race detector
	// on a loaded 2-core machine it took more than 30 s.
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	t.Run("PingBothWays", func(t *testing.T) {
		for i, j := range []int{1, 0} {
			resp, err := nodes[i].tr.Call(ctx, nodes[j].id.ID, "echo", []byte("ping"))
			if err != nil || string(resp) != "ping" {
				t.Fatalf("%d->%d: %q %v", i, j, resp, err)
			}
		}
	})
	t.Run("100MB", func(t *testing.T) {
		msg := make([]byte, 100<<20)
		rand.Read(msg)
		start := time.Now()
		resp, err := nodes[0].tr.Call(ctx, nodes[1].id.ID, "digest", msg)
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(msg); string(resp) != string(sum[:]) {
			t.Fatal("digest mismatch")
		}
		d := time.Since(start)
		t.Logf("100 MiB call in %v (%.0f MB/s)", d, 100*1.048576/d.Seconds())
	})
}

// A member whose address changes in the snapshot is redialled at the new
// address, on a newer connection id.
func TestAddressChangeRedials(t *testing.T) {
	simTest(t, 2, DefaultConfig(), func(t *testing.T, c *cluster) {
		startAll(c)
		c.waitMesh(0, 1)
		a, b := c.nodes[0], c.nodes[1]
		before, _ := a.rpc.ConnID(b.id.ID)
		old := b.rpc

		// The same identity comes up on a second socket (the spare endpoint).
		moved := &tnode{id: b.id, addr: c.spare.addr, pc: c.spare.pc, events: newEventLog()}
		snap, err := membership.NewSnapshot(2, a.id.Member(a.addr), b.id.Member(moved.addr))
		if err != nil {
			t.Fatal(err)
		}
		moved.src, _ = membership.NewStaticSource(snap)
		tr, err := New(c.cfg, moved.id, moved.src, moved.pc, testLogger(t), moved.events.add)
		if err != nil {
			t.Fatal(err)
		}
		mustHandle(t, tr, "echo", echo, 0)
		b.rpc = tr
		defer old.Close()

		if err := a.src.Update(snap); err != nil {
			t.Fatal(err)
		}
		after := a.events.waitUp(t, b.id.ID, before, 5*time.Second)
		moved.events.waitUp(t, a.id.ID, 0, 5*time.Second)
		if resp, err := a.rpc.Call(t.Context(), b.id.ID, "echo", []byte("moved")); err != nil || string(resp) != "moved" {
			t.Fatalf("call to moved peer: %q %v", resp, err)
		}
		t.Logf("conn id %d -> %d after the move", before, after)
	})
}
