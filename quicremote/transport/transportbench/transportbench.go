// Package transportbench measures request throughput and latency of the
// quicremote transport and, for comparison, of bare quic-go streams doing
// the same work (one bidirectional stream per request, same TLS, same
// loopback sockets). It backs both BenchmarkCall and the driver in
// examples/transportbench.
package transportbench

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/rs/zerolog"

	"github.com/abcast/abcast/membership"
	"github.com/abcast/abcast/quicremote/transport"
)

// Pair is a client and a server on loopback; Do sends one request of the
// given payload and waits for a 1-byte answer.
type Pair interface {
	Do(ctx context.Context, payload []byte) error
	Close()
}

// Result is one measurement.
type Result struct {
	Name        string
	Payload     int
	Concurrency int
	Requests    int
	Elapsed     time.Duration
	P50, P99    time.Duration
}

// ReqPerSec is the request rate.
func (r Result) ReqPerSec() float64 { return float64(r.Requests) / r.Elapsed.Seconds() }

// MBPerSec is the payload throughput in MB/s (10^6 bytes).
func (r Result) MBPerSec() float64 {
	return float64(r.Requests) * float64(r.Payload) / r.Elapsed.Seconds() / 1e6
}

func (r Result) String() string {
	return fmt.Sprintf("%-10s %8d B  x%-3d %8d req  %9.0f req/s  %8.1f MB/s  p50 %8v  p99 %8v",
		r.Name, r.Payload, r.Concurrency, r.Requests, r.ReqPerSec(), r.MBPerSec(), r.P50.Round(time.Microsecond), r.P99.Round(time.Microsecond))
}

// Run sends requests requests of payload bytes from concurrency goroutines.
func Run(p Pair, name string, payload, concurrency, requests int) (Result, error) {
	msg := make([]byte, payload)
	_, _ = rand.Read(msg)
	var next atomic.Int64
	lat := make([]time.Duration, requests)
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	for range concurrency {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(requests) {
					return
				}
				t0 := time.Now()
				if err := p.Do(context.Background(), msg); err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				lat[i] = time.Since(t0)
			}
		})
	}
	wg.Wait()
	r := Result{Name: name, Payload: payload, Concurrency: concurrency, Requests: requests, Elapsed: time.Since(start)}
	if firstErr != nil {
		return r, firstErr
	}
	slices.Sort(lat)
	r.P50 = lat[len(lat)/2]
	r.P99 = lat[len(lat)*99/100]
	return r, nil
}

func listen() (*net.UDPConn, error) {
	return net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
}

// loopbackPair makes two identities (the dialler first), a loopback socket
// for each and the snapshot naming both.
func loopbackPair() ([2]*membership.Identity, []net.PacketConn, *membership.Snapshot, error) {
	ids, err := identities()
	if err != nil {
		return ids, nil, nil, err
	}
	var pcs []net.PacketConn
	var members []membership.Member
	for _, id := range ids {
		pc, err := listen()
		if err != nil {
			for _, c := range pcs {
				c.Close()
			}
			return ids, nil, nil, err
		}
		pcs = append(pcs, pc)
		members = append(members, id.Member(pc.LocalAddr().String()))
	}
	snap, err := membership.NewSnapshot(1, members...)
	if err != nil {
		for _, c := range pcs {
			c.Close()
		}
		return ids, nil, nil, err
	}
	return ids, pcs, snap, nil
}

func identities() ([2]*membership.Identity, error) {
	var ids [2]*membership.Identity
	for i := range ids {
		id, err := membership.GenerateIdentity(rand.Reader)
		if err != nil {
			return ids, err
		}
		ids[i] = id
	}
	if ids[1].ID.Less(ids[0].ID) {
		ids[0], ids[1] = ids[1], ids[0]
	}
	return ids, nil
}

// ---- quicremote ----

type remotePair struct {
	client, server *transport.Transport
	pcs            []net.PacketConn
	peer           membership.NodeID
}

// NewTransportPair starts two transports on loopback with cfg; the server
// registers a "sink" protocol (limit = cfg.MaxIncomingStreams) answering 1
// byte.
func NewTransportPair(cfg transport.Config) (Pair, error) {
	ids, pcs, snap, err := loopbackPair()
	if err != nil {
		return nil, err
	}
	up := make(chan struct{}, 2)
	events := func(ev transport.PeerEvent) {
		if _, ok := ev.(transport.PeerUp); ok {
			up <- struct{}{}
		}
	}
	p := &remotePair{pcs: pcs, peer: ids[1].ID}
	for i, id := range ids {
		src, err := membership.NewStaticSource(snap)
		if err != nil {
			return nil, err
		}
		tr, err := transport.New(cfg, id, src, pcs[i], zerolog.Nop(), events)
		if err != nil {
			return nil, err
		}
		if i == 0 {
			p.client = tr
		} else {
			p.server = tr
		}
	}
	ack := []byte{1}
	if err := p.server.Handle("sink", func(context.Context, membership.NodeID, []byte) ([]byte, error) { return ack, nil }, cfg.MaxIncomingStreams); err != nil {
		return nil, err
	}
	timeout := time.After(10 * time.Second)
	for range 2 {
		select {
		case <-up:
		case <-timeout:
			p.Close()
			return nil, errors.New("transportbench: peers did not connect")
		}
	}
	return p, nil
}

func (p *remotePair) Do(ctx context.Context, payload []byte) error {
	_, err := p.client.Call(ctx, p.peer, "sink", payload)
	return err
}

func (p *remotePair) Close() {
	if p.client != nil {
		p.client.Close()
	}
	if p.server != nil {
		p.server.Close()
	}
	for _, pc := range p.pcs {
		pc.Close()
	}
}

// ---- raw quic-go ----

type rawPair struct {
	conn   *quic.Conn
	cqt    *quic.Transport
	sqt    *quic.Transport
	ln     *quic.Listener
	pcs    []net.PacketConn
	wg     sync.WaitGroup
	cancel context.CancelFunc
}

// NewRawPair is the baseline: bare quic-go, default stream limits and
// windows, the same member-checked TLS, one stream per request; the server
// reads the request to EOF and answers one byte.
func NewRawPair(maxStreams int64) (Pair, error) {
	ids, pcs, snap, err := loopbackPair()
	if err != nil {
		return nil, err
	}
	src, err := membership.NewStaticSource(snap)
	if err != nil {
		return nil, err
	}
	alpn := []string{transport.ALPN}
	qconf := &quic.Config{MaxIncomingStreams: maxStreams}
	p := &rawPair{pcs: pcs, sqt: &quic.Transport{Conn: pcs[1]}, cqt: &quic.Transport{Conn: pcs[0]}}
	p.ln, err = p.sqt.Listen(membership.ServerTLSConfig(ids[1], membership.LatestMembers(src), alpn), qconf)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	p.wg.Go(func() {
		conn, err := p.ln.Accept(ctx)
		if err != nil {
			return
		}
		for {
			str, err := conn.AcceptStream(ctx)
			if err != nil {
				return
			}
			p.wg.Go(func() {
				if _, err := io.Copy(io.Discard, str); err != nil {
					str.CancelWrite(1)
					return
				}
				_, _ = str.Write([]byte{1})
				_ = str.Close()
			})
		}
	})
	p.conn, err = p.cqt.Dial(ctx, pcs[1].LocalAddr(), membership.ClientTLSConfig(ids[0], membership.LatestMembers(src), ids[1].ID, alpn), qconf)
	if err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

func (p *rawPair) Do(ctx context.Context, payload []byte) error {
	str, err := p.conn.OpenStreamSync(ctx)
	if err != nil {
		return err
	}
	if _, err := str.Write(payload); err != nil {
		return err
	}
	if err := str.Close(); err != nil {
		return err
	}
	var b [1]byte
	if _, err := io.ReadFull(str, b[:]); err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, str)
	return err
}

func (p *rawPair) Close() {
	p.cancel()
	if p.conn != nil {
		_ = p.conn.CloseWithError(0, "")
	}
	_ = p.ln.Close()
	p.wg.Wait()
	_ = p.cqt.Close()
	_ = p.sqt.Close()
	for _, pc := range p.pcs {
		_ = pc.Close()
	}
}
