package tests

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/rs/zerolog"

	"github.com/abcast/abcast/actors/abcasttest"
	"github.com/abcast/abcast/membership"
	"github.com/abcast/abcast/quicremote/transport"
)

// Attacks on the QUIC transport by a peer that speaks the wire protocol by
// hand over quic-go (a member's real key and TLS, or no handshake at all),
// against real transports on quic-go's simulated network inside
// testing/synctest, so timeouts pass in virtual time.

// attackNet is a simulated network of n endpoints, each with an identity;
// identities are sorted by NodeID, so endpoint 0 dials everyone (the lower
// id dials) and the highest is the natural victim. All n are members.
type attackNet struct {
	t     *testing.T
	net   *abcasttest.Network
	ids   []*membership.Identity
	addrs []string
	pcs   []net.PacketConn
	srcs  []*membership.StaticSource
}

func newAttackNet(t *testing.T, n int) *attackNet {
	t.Helper()
	a := &attackNet{t: t, net: abcasttest.NewNetwork(1, 2*time.Millisecond, 0)}
	for range n {
		id, err := membership.GenerateIdentity(rand.Reader)
		must(t, err)
		a.ids = append(a.ids, id)
	}
	slices.SortFunc(a.ids, func(x, y *membership.Identity) int { return x.ID.Compare(y.ID) })
	var ms []membership.Member
	for i := range n {
		udp := &net.UDPAddr{IP: net.IPv4(10, 7, 0, byte(i+1)), Port: 4000}
		a.addrs = append(a.addrs, udp.String())
		a.pcs = append(a.pcs, a.net.Listen(udp))
		ms = append(ms, a.ids[i].Member(udp.String()))
	}
	snap, err := membership.NewSnapshot(1, ms...)
	must(t, err)
	for range n {
		src, err := membership.NewStaticSource(snap)
		must(t, err)
		a.srcs = append(a.srcs, src)
	}
	t.Cleanup(func() {
		for _, pc := range a.pcs {
			pc.Close()
		}
		a.net.Close()
	})
	return a
}

// start runs a transport for endpoint i; it is closed when the test ends.
func (a *attackNet) start(i int, cfg transport.Config) *transport.Transport {
	a.t.Helper()
	tr, err := transport.New(cfg, a.ids[i], a.srcs[i], a.pcs[i], zerolog.Nop(), nil)
	must(a.t, err)
	a.t.Cleanup(func() { tr.Close() })
	return tr
}

// waitUp waits (virtual time) until tr sees peer up.
func waitUp(t *testing.T, tr *transport.Transport, peer membership.NodeID) {
	t.Helper()
	must(t, abcasttest.Eventually(time.Minute, func() error {
		if _, up := tr.ConnID(peer); !up {
			return fmt.Errorf("peer %s not up", peer.Short())
		}
		return nil
	}))
}

// rawMember dials endpoint to from endpoint from (which must have the lower
// NodeID) with from's real key, without a transport: a member that speaks
// the protocol by hand. It performs the welcome exchange, so the victim
// counts it as up, and returns the connection.
func (a *attackNet) rawMember(from, to int, qconf *quic.Config) *quic.Conn {
	a.t.Helper()
	qt := &quic.Transport{Conn: a.pcs[from]}
	a.t.Cleanup(func() { qt.Close() })
	raddr, err := net.ResolveUDPAddr("udp", a.addrs[to])
	must(a.t, err)
	tlsConf := membership.ClientTLSConfig(a.ids[from], membership.LatestMembers(a.srcs[from]), a.ids[to].ID, []string{transport.ALPN})
	conn, err := qt.Dial(a.t.Context(), raddr, tlsConf, qconf)
	must(a.t, err)
	a.t.Cleanup(func() { conn.CloseWithError(0, "") })
	str, err := conn.OpenStreamSync(a.t.Context())
	must(a.t, err)
	_, err = str.Write(rawWelcome(a.ids[from].ID))
	must(a.t, err)
	must(a.t, str.Close())
	got, err := io.ReadAll(str)
	must(a.t, err)
	if want := rawWelcome(a.ids[to].ID); string(got) != string(want) {
		a.t.Fatalf("victim's welcome %q, want %q", got, want)
	}
	return conn
}

// The wire format, written out by hand as an attacker would (see
// quicremote/transport/wire.go).
const (
	wireVersion = 1
	kindCall    = 1
	kindPush    = 2
	statusOK    = 0
	statusError = 1
)

func rawWelcome(id membership.NodeID) []byte {
	return append([]byte("abcast/1 welcome"), id[:]...)
}

// rawRequestFrame is a whole request: header, length and payload.
func rawRequestFrame(kind byte, protocol string, payload []byte) []byte {
	b := []byte{wireVersion, kind, byte(len(protocol))}
	b = append(b, protocol...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...)
}

// rawResponseHeader is a response's status and length.
func rawResponseHeader(status byte, n int) []byte {
	return binary.BigEndian.AppendUint32([]byte{status}, uint32(n))
}

// streamResetBy reports whether str's receive side was reset by the peer,
// without consuming more than one byte: a reset stream fails its next Read
// at once, whatever data was still buffered.
func streamResetBy(str *quic.Stream) (bool, error) {
	_ = str.SetReadDeadline(time.Now().Add(time.Millisecond))
	var b [1]byte
	n, err := str.Read(b[:])
	var se *quic.StreamError
	switch {
	case errors.As(err, &se) && se.Remote:
		return true, nil
	case n > 0 || errors.Is(err, os.ErrDeadlineExceeded):
		return false, nil
	default:
		return false, fmt.Errorf("read: %w", err)
	}
}

// retainedHeap is the live heap after a collection, in bytes: what the
// process holds, without garbage not yet collected.
func retainedHeap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// peakTracker keeps the highest value seen.
type peakTracker struct{ v atomic.Uint64 }

func (p *peakTracker) see(x uint64) {
	for {
		cur := p.v.Load()
		if x <= cur || p.v.CompareAndSwap(cur, x) {
			return
		}
	}
}

func (p *peakTracker) get() uint64 { return p.v.Load() }

// callWithin runs a Call bounded by d of virtual time.
func callWithin(tr *transport.Transport, d time.Duration, peer membership.NodeID, protocol string, req []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return tr.Call(ctx, peer, protocol, req)
}

// honestCalls is an honest peer calling the victim's "echo" every 50 ms
// of virtual time while an attack runs: what the attack leaves of honest
// service.
type honestCalls struct {
	honest     *transport.Transport
	victim     membership.NodeID
	ok, failed atomic.Int64
	worst      atomic.Int64 // nanoseconds
	start      time.Time
	stop, done chan struct{}
}

// startHonestCalls registers "echo" on victim (unless registered) and
// starts calling it from honest.
func startHonestCalls(t *testing.T, honest, victim *transport.Transport, victimID membership.NodeID, register bool) *honestCalls {
	t.Helper()
	if register {
		must(t, victim.Handle("echo", func(_ context.Context, _ membership.NodeID, req []byte) ([]byte, error) { return req, nil }, 0))
	}
	h := &honestCalls{honest: honest, victim: victimID, start: time.Now(), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(h.done)
		for i := 0; ; i++ {
			select {
			case <-h.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			h.call(i)
		}
	}()
	t.Cleanup(h.halt)
	return h
}

func (h *honestCalls) call(i int) {
	t0 := time.Now()
	want := fmt.Sprintf("honest %d", i)
	resp, err := callWithin(h.honest, 5*time.Second, h.victim, "echo", []byte(want))
	if err != nil || string(resp) != want {
		h.failed.Add(1)
		return
	}
	h.ok.Add(1)
	if d := int64(time.Since(t0)); d > h.worst.Load() {
		h.worst.Store(d)
	}
}

func (h *honestCalls) halt() {
	select {
	case <-h.stop:
	default:
		close(h.stop)
	}
	<-h.done
}

// finish stops the calls, fails the test if any failed, and describes them.
func (h *honestCalls) finish(t *testing.T) string {
	t.Helper()
	h.halt()
	h.call(-1) // one more, now: the attack may have lasted less than a period
	w := time.Since(h.start)
	if h.failed.Load() > 0 || h.ok.Load() == 0 {
		t.Errorf("honest calls during the attack: %d answered, %d failed", h.ok.Load(), h.failed.Load())
	}
	return fmt.Sprintf("honest calls: %d answered in %.1f s (%.1f/s), %d failed, slowest %v",
		h.ok.Load(), w.Seconds(), float64(h.ok.Load())/w.Seconds(), h.failed.Load(), time.Duration(h.worst.Load()))
}

// hugeAnswers is a hostile peer that answers every request it is sent on
// conn with statusOK and a body of size bytes, counting the requests it
// answered, the body bytes the victim's QUIC stack took, and the writes
// the victim stopped with a stream reset. Close conn, then Wait.
type hugeAnswers struct {
	answered, written, stopped atomic.Int64
	serving                    sync.WaitGroup
}

func answerHuge(conn *quic.Conn, size int) *hugeAnswers {
	h := &hugeAnswers{}
	h.serving.Go(func() {
		for {
			str, err := conn.AcceptStream(context.Background())
			if err != nil {
				return
			}
			h.serving.Go(func() {
				if _, err := io.ReadAll(str); err != nil {
					return
				}
				h.answered.Add(1)
				if _, err := str.Write(rawResponseHeader(statusOK, size)); err != nil {
					return
				}
				chunk := make([]byte, 256<<10)
				_ = str.SetWriteDeadline(time.Now().Add(20 * time.Second))
				for sent := 0; sent < size; sent += len(chunk) {
					n, err := str.Write(chunk)
					h.written.Add(int64(n))
					if err != nil {
						var se *quic.StreamError
						if errors.As(err, &se) {
							h.stopped.Add(1)
						}
						return
					}
				}
				str.Close()
			})
		}
	})
	return h
}

// Wait waits for every answer to end (after conn was closed).
func (h *hugeAnswers) Wait() { h.serving.Wait() }
