// Command transportbench prints request throughput and latency of the
// quicremote transport next to bare quic-go streams, on loopback UDP in
// one process.
//
//	go run ./examples/transportbench [-d 3s]
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/abcast/abcast/quicremote/transport"
	"github.com/abcast/abcast/quicremote/transport/transportbench"
)

func main() {
	dur := flag.Duration("d", 2*time.Second, "approximate duration of each measurement")
	streams := flag.Bool("streams", false, "also compare MaxIncomingStreams settings at high concurrency")
	flag.Parse()

	fmt.Printf("GOMAXPROCS=%d %s/%s %s\n", runtime.GOMAXPROCS(0), runtime.GOOS, runtime.GOARCH, runtime.Version())
	shapes := []struct{ payload, concurrency int }{{100, 64}, {64 << 10, 64}, {1 << 20, 64}, {100, 1}}
	impls := []struct {
		name string
		new  func() (transportbench.Pair, error)
	}{
		{"quicremote", func() (transportbench.Pair, error) {
			return transportbench.NewTransportPair(transport.DefaultConfig())
		}},
		{"rawquic", func() (transportbench.Pair, error) { return transportbench.NewRawPair(100) }},
	}
	for _, sh := range shapes {
		for _, im := range impls {
			r, err := measure(im.new, im.name, sh.payload, sh.concurrency, *dur)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			fmt.Println(r)
		}
	}
	if *streams {
		fmt.Println("\n100 B requests, 1000 concurrent callers, by MaxIncomingStreams:")
		for _, n := range []int{32, 100, 300, 1000} {
			cfg := transport.DefaultConfig()
			cfg.MaxIncomingStreams = n
			r, err := measure(func() (transportbench.Pair, error) { return transportbench.NewTransportPair(cfg) },
				fmt.Sprintf("max=%d", n), 100, 1000, *dur)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			fmt.Println(r)
		}
	}
}

// measure calibrates the request count on a short run, then measures for
// about d.
func measure(newPair func() (transportbench.Pair, error), name string, payload, concurrency int, d time.Duration) (transportbench.Result, error) {
	p, err := newPair()
	if err != nil {
		return transportbench.Result{}, err
	}
	defer p.Close()
	warm, err := transportbench.Run(p, name, payload, concurrency, max(concurrency*4, 200))
	if err != nil {
		return warm, err
	}
	n := int(warm.ReqPerSec() * d.Seconds())
	return transportbench.Run(p, name, payload, concurrency, max(n, concurrency*4))
}
