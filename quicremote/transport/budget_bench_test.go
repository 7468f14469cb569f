package transport

import (
	"crypto/rand"
	"fmt"
	"net"
	"testing"

	"github.com/rs/zerolog"

	"github.com/abcast/abcast/membership"
)

// BenchmarkReserveRelease measures the per-peer budget's Reserve and
// Release from several goroutines at once, as the layers above call them
// per decoded message or fetched chunk.
//
//	go test -run XXX -bench ReserveRelease ./quicremote/transport/
func BenchmarkReserveRelease(b *testing.B) {
	ids := make([]*membership.Identity, 8)
	var ms []membership.Member
	for i := range ids {
		id, err := membership.GenerateIdentity(rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		ids[i] = id
		ms = append(ms, id.Member(fmt.Sprintf("127.0.0.1:%d", 1+i)))
	}
	snap, err := membership.NewSnapshot(1, ms...)
	if err != nil {
		b.Fatal(err)
	}
	src, err := membership.NewStaticSource(snap)
	if err != nil {
		b.Fatal(err)
	}
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	defer pc.Close()
	cfg := DefaultConfig()
	cfg.ReconnectBackoffMin = cfg.ReconnectBackoffMax // nobody answers: dial rarely
	tr, err := New(cfg, ids[0], src, pc, zerolog.Nop(), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			peer := ids[1+i%7].ID
			i++
			if !tr.Reserve(peer, 300) {
				b.Fatal("budget refused 300 bytes")
			}
			tr.Release(peer, 300)
		}
	})
}
