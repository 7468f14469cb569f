package transport_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/abcast/abcast/quicremote/transport"
	"github.com/abcast/abcast/quicremote/transport/transportbench"
)

// BenchmarkCall measures Call over real loopback UDP: 64 concurrent callers
// at three payload sizes, and one caller with 100 B (round-trip latency),
// next to bare quic-go streams doing the same work.
//
//	go test -run XXX -bench Call ./quicremote/transport/
func BenchmarkCall(b *testing.B) {
	impls := []struct {
		name string
		new  func() (transportbench.Pair, error)
	}{
		{"quicremote", func() (transportbench.Pair, error) {
			return transportbench.NewTransportPair(transport.DefaultConfig())
		}},
		{"rawquic", func() (transportbench.Pair, error) { return transportbench.NewRawPair(100) }},
	}
	shapes := []struct {
		payload, concurrency int
	}{{100, 64}, {64 << 10, 64}, {1 << 20, 64}, {100, 1}}
	for _, im := range impls {
		for _, sh := range shapes {
			b.Run(fmt.Sprintf("%s/c%d/%dB", im.name, sh.concurrency, sh.payload), func(b *testing.B) {
				p, err := im.new()
				if err != nil {
					b.Fatal(err)
				}
				defer p.Close()
				b.SetBytes(int64(sh.payload))
				b.ResetTimer()
				start := time.Now()
				r, err := transportbench.Run(p, im.name, sh.payload, sh.concurrency, b.N)
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
				b.ReportMetric(float64(r.P50.Microseconds()), "p50-µs")
				b.ReportMetric(float64(r.P99.Microseconds()), "p99-µs")
			})
		}
	}
}
