package tests

import (
	"fmt"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/actors/abcasttest"
)

// Supervision: make each kind of actor panic in the middle of the flows;
// it is restarted, the flows resume, nothing published is lost and nothing
// is delivered twice.
func TestSupervisionEveryActorKindCrashesMidFlow(t *testing.T) {
	for _, kind := range []string{"sender", "link", "receiver", "fetch", "consumer"} {
		t.Run(kind, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var seen, crashes atomic.Int64
				cfg := actors.DefaultConfig()
				cfg.Hooks = &actors.Hooks{BeforeReceive: func(k, _ string, msg any) {
					// Crash on the 3rd, 10th and 25th message this kind sees.
					if k == kind {
						switch seen.Add(1) {
						case 3, 10, 25:
							crashes.Add(1)
							panic(fmt.Sprintf("test: %s crashes on %T", kind, msg))
						}
					}
				}}
				s := abcasttest.NewSubnet(t, 3, abcasttest.Options{Config: cfg, Latency: 10 * time.Millisecond, Seed: 5})
				s.StartAll()
				w := newWorkload(t, s, 5)
				for round := range 6 {
					for i := range 3 {
						w.publish(i)
					}
					if round%2 == 1 {
						w.abortRandom()
					}
					time.Sleep(200 * time.Millisecond)
				}
				w.converge(2 * time.Minute)
				restarts := s.Restarts()
				if crashes.Load() == 0 || restarts < uint64(crashes.Load()) {
					t.Fatalf("%d crashes injected, %d restarts counted", crashes.Load(), restarts)
				}
				t.Logf("%s: %d crashes, %d restarts, %d live artifacts delivered exactly once", kind, crashes.Load(), restarts, len(w.ch.Live()))
			})
		})
	}
}
