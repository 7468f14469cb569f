package abcasttest_test

import (
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/actors/abcasttest"
	"github.com/abcast/abcast/broadcast"
)

// A replica's test: four nodes on a lossy simulated network; one is cut
// off for 30 s while artifacts are published, and its consumer actor
// crashes once; after the heal everything is delivered everywhere exactly
// once and every node is within its bounds. t would be the *testing.T of a
// TestXxx function. (Examples have no t, so this one is compiled
// but not run; TestExampleScenario runs the same code.)
func Example() {
	var t *testing.T // inside func TestMyReplica(t *testing.T)
	synctest.Test(t, func(t *testing.T) {
		s := abcasttest.NewSubnet(t, 4, abcasttest.Options{Latency: 50 * time.Millisecond, Loss: 0.01, Seed: 1})
		s.StartAll()
		var delivered [4]int
		ch := s.OpenChannel("blocks", abcasttest.ChannelOptions{
			// Your replica's consumer; the subnet records every event too.
			Consume: func(node int) func(actors.Event) {
				return func(ev actors.Event) {
					if _, ok := ev.(*actors.Delivered); ok {
						delivered[node]++
					}
				}
			},
		})
		s.Isolate(3)
		s.Crash(3, "consumer", "blocks")
		for i := range 3 {
			if err := ch.Publish(i, broadcast.Artifact{ID: broadcast.ArtifactID(fmt.Sprint("block-", i)), Payload: make([]byte, 5000)}); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(30 * time.Second) // virtual time
		s.HealAll()
		ch.AssertDelivered(t, time.Minute)
		s.AssertBounds(t, abcasttest.Bounds{})
	})
}
