package quicremote_test

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The remote's per-message cost between two nodes in one process, on the
// in-memory transport (the remote's own code, without QUIC) and on QUIC
// over loopback. Besides ns/op (wall time, which depends on what else the
// machine runs) they report cpu-ns/op: the CPU time the process spent per
// message, user and system, which hardly does. examples/remotebench
// compares the remote with protoactor's gRPC remote across two processes.
//
//	go test -run '^$' -bench Remote -benchmem ./quicremote/

func BenchmarkRemoteOneWay(b *testing.B) {
	for _, mem := range []bool{true, false} {
		b.Run(transportName(mem), func(b *testing.B) {
			c, target := benchPair(b, mem)
			root := c.nodes[0].sys.Root
			msg := wrapperspb.Bytes(make([]byte, 98)) // 100 bytes encoded
			count := func() int64 {
				r, err := root.RequestFuture(target, wrapperspb.String("sync"), 60*time.Second).Result()
				if err != nil {
					b.Fatal(err)
				}
				return r.(*wrapperspb.Int64Value).Value
			}
			base := count()
			// Rounds of at most 10,000 messages, each closed by a request
			// answered after all of them: the queue (16,384) never fills.
			const round = 10000
			b.ResetTimer()
			cpu := cpuTime()
			for sent := 0; sent < b.N; {
				k := min(round, b.N-sent)
				for range k {
					root.Send(target, msg)
				}
				sent += k
				if got := count() - base; got != int64(sent) {
					b.Fatalf("sink counted %d of %d sent", got, sent)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N), "cpu-ns/op")
		})
	}
}

func BenchmarkRemoteRoundTrip(b *testing.B) {
	for _, mem := range []bool{true, false} {
		b.Run(transportName(mem), func(b *testing.B) {
			c, target := benchPair(b, mem)
			root := c.nodes[0].sys.Root
			ping := wrapperspb.String("ping")
			b.ResetTimer()
			cpu := cpuTime()
			for range b.N {
				if _, err := root.RequestFuture(target, ping, 10*time.Second).Result(); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N), "cpu-ns/op")
		})
	}
}

func transportName(mem bool) string {
	if mem {
		return "mem"
	}
	return "quic"
}

// benchPair starts two connected nodes; node 1 runs a sink that counts
// BytesValues and answers "sync" with the count, anything else with itself.
func benchPair(b *testing.B, mem bool) (*rcluster, *actor.PID) {
	c := newRCluster(b, 2, rclusterOpts{mem: mem})
	c.waitMesh()
	var count int64
	props := actor.PropsFromFunc(func(ctx actor.Context) {
		switch m := ctx.Message().(type) {
		case *wrapperspb.BytesValue:
			count++
		case *wrapperspb.StringValue:
			if m.Value == "sync" {
				ctx.Respond(wrapperspb.Int64(count))
				return
			}
			ctx.Respond(m)
		}
	})
	if _, err := c.nodes[1].sys.Root.SpawnNamed(props, "sink"); err != nil {
		b.Fatal(err)
	}
	target := c.nodes[0].remote.PID(c.nodes[1].id.ID, "sink")
	// Warm up: the stream is open and the first batches decoded.
	root := c.nodes[0].sys.Root
	for range 1000 {
		root.Send(target, wrapperspb.Bytes(nil))
	}
	if _, err := root.RequestFuture(target, wrapperspb.String("ping"), 30*time.Second).Result(); err != nil {
		b.Fatal(fmt.Errorf("warm-up: %w", err))
	}
	return c, target
}

// cpuTime is the CPU time (user and system) the process has used, in
// nanoseconds.
func cpuTime() int64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}
