package abcasttest_test

import (
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/abcast/abcast/actors/abcasttest"
	"github.com/abcast/abcast/broadcast"
)

// Link capacity reaches the nodes: a 4 MiB artifact over 1 MiB/s links
// takes at least four seconds to arrive, while unlimited links deliver it
// within one.
func TestSubnetCapacityCostsTime(t *testing.T) {
	for _, capacity := range []int64{0, 1 << 20} {
		t.Run(fmt.Sprintf("capacity=%d", capacity), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				s := abcasttest.NewSubnet(t, 2, abcasttest.Options{Latency: 10 * time.Millisecond, Capacity: capacity})
				s.StartAll()
				ch := s.OpenChannel("blocks", abcasttest.ChannelOptions{})
				// Measure the transfer, not the handshake.
				if err := abcasttest.Eventually(time.Minute, func() error {
					if _, up := s.Node(0).Transport().ConnID(s.ID(1)); !up {
						return fmt.Errorf("not connected")
					}
					return nil
				}); err != nil {
					t.Fatal(err)
				}
				start := time.Now()
				if err := ch.Publish(0, broadcast.Artifact{ID: "big", Payload: make([]byte, 4<<20)}); err != nil {
					t.Fatal(err)
				}
				ch.AssertDelivered(t, time.Minute)
				at, _ := ch.Recorder(1).DeliveredAt("big")
				took := at.Sub(start)
				st := s.Network().Stats()
				t.Logf("4 MiB delivered after %v; network %+v", took, st)
				if capacity == 0 && took > time.Second {
					t.Fatalf("unlimited links took %v", took)
				}
				if capacity > 0 && (took < 4*time.Second || st.MaxQueueDelay == 0) {
					t.Fatalf("1 MiB/s links delivered 4 MiB after %v (max queue delay %v)", took, st.MaxQueueDelay)
				}
				m := s.Memory(0)
				if m.Published != 4<<20 || s.Memory(1).Held != 4<<20 || m.Live != 1 || m.ProcessHeap == 0 {
					t.Fatalf("memory figures: node 0 %+v, node 1 %+v", m, s.Memory(1))
				}
			})
		})
	}
}

// The same scenario passes on every backend: delivery, a cut that heals,
// a crash (Kill) and a restart.
func TestSubnetBackends(t *testing.T) {
	run := func(t *testing.T, b abcasttest.Backend) {
		s := abcasttest.NewSubnet(t, 3, abcasttest.Options{Backend: b})
		s.StartAll()
		ch := s.OpenChannel("blocks", abcasttest.ChannelOptions{})
		for i := range 3 {
			if err := ch.Publish(i, broadcast.Artifact{ID: broadcast.ArtifactID(fmt.Sprint("a", i)), Payload: make([]byte, 1000*(i+1))}); err != nil {
				t.Fatal(err)
			}
		}
		ch.AssertDelivered(t, time.Minute)
		s.Cut(0, 1)
		if err := ch.Publish(0, broadcast.Artifact{ID: "during-cut", Payload: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		if err := abcasttest.Eventually(time.Second, func() error {
			if _, ok := ch.Recorder(1).Holds("during-cut"); ok {
				return nil
			}
			return fmt.Errorf("not yet")
		}); err == nil {
			t.Fatal("an artifact crossed a cut link")
		}
		s.Heal(0, 1)
		ch.AssertDelivered(t, time.Minute)
		s.Kill(2)
		s.Start(2)
		ch.AssertDelivered(t, time.Minute)
		if lives := ch.Recorder(2).PerLife(); len(lives) != 2 || lives[1] != 3 {
			t.Fatalf("node 2's deliveries per life %v, want the other nodes' 3 artifacts again in its second life", lives)
		}
	}
	t.Run("simulated", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) { run(t, abcasttest.Simulated) })
	})
	t.Run("memory", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) { run(t, abcasttest.Memory) })
	})
	t.Run("loopback-quic", func(t *testing.T) { run(t, abcasttest.LoopbackQUIC) })
}
