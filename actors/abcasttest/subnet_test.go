package abcasttest_test

import (
	"fmt"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/actors/abcasttest"
	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/quicremote/transport"
)

// The package example, run.
func TestExampleScenario(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := abcasttest.NewSubnet(t, 4, abcasttest.Options{Latency: 50 * time.Millisecond, Loss: 0.01, Seed: 1})
		s.StartAll()
		var delivered [4]atomic.Int64
		ch := s.OpenChannel("blocks", abcasttest.ChannelOptions{
			Consume: func(node int) func(actors.Event) {
				return func(ev actors.Event) {
					if _, ok := ev.(*actors.Delivered); ok {
						delivered[node].Add(1)
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
		time.Sleep(30 * time.Second)
		if n := len(ch.Recorder(3).Held()); n != 0 {
			t.Fatalf("isolated node received %d artifacts", n)
		}
		s.HealAll()
		ch.AssertDelivered(t, time.Minute)
		s.AssertBounds(t, abcasttest.Bounds{})
		if got := delivered[3].Load(); got != 3 {
			t.Fatalf("user consumer on node 3 saw %d deliveries, want 3", got)
		}
		if s.Restarts() == 0 {
			t.Fatal("the injected consumer crash was not counted as a restart")
		}
	})
}

// The assertion catches what it should: an artifact that cannot arrive.
func TestCheckDeliveredReportsMissingArtifact(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := abcasttest.NewSubnet(t, 3, abcasttest.Options{Latency: 10 * time.Millisecond})
		s.StartAll()
		ch := s.OpenChannel("blocks", abcasttest.ChannelOptions{})
		s.Cut(0, 2)
		if err := ch.Publish(0, broadcast.Artifact{ID: "a", Payload: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		err := ch.WaitDelivered(20 * time.Second)
		if err == nil {
			t.Fatal("a cut link still delivered")
		}
		t.Logf("reported, as expected: %v", err)
		s.Heal(0, 2)
		ch.AssertDelivered(t, time.Minute)
	})
}

// Restart, Stop/Start and abort through the kit; latency and loss changed
// while running; the restarted node gets everything again and its own
// artifacts are republished.
func TestRestartLossLatencyAndAbort(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := abcasttest.NewSubnet(t, 4, abcasttest.Options{Seed: 3})
		s.StartAll()
		ch := s.OpenChannel("ingress", abcasttest.ChannelOptions{})
		for i := range 4 {
			for k := range 3 {
				if err := ch.Publish(i, broadcast.Artifact{ID: broadcast.ArtifactID(fmt.Sprintf("%d-%d", i, k)), Payload: make([]byte, 100+k*3000)}); err != nil {
					t.Fatal(err)
				}
			}
		}
		ch.AssertDelivered(t, time.Minute)
		s.SetLatency(150 * time.Millisecond)
		s.SetLoss(0.05)
		if err := ch.Abort(1, "1-0"); err != nil {
			t.Fatal(err)
		}
		s.Restart(2)
		ch.AssertDelivered(t, 2*time.Minute)
		s.Stop(0)
		if err := ch.Abort(3, "3-1"); err != nil {
			t.Fatal(err)
		}
		s.Start(0)
		ch.AssertDelivered(t, 2*time.Minute)
		if d := ch.Recorder(2).Deliveries("0-0"); d != 2 {
			t.Fatalf("restarted node delivered 0-0 %d times over two lives, want 2", d)
		}
	})
}

// Stop is a clean shutdown and Kill a crash, as the Subnet's docs say:
// after Stop the peers see the node go at once (its connection close
// arrives); after Kill nothing it sends on the way out arrives, so they
// see it go only once their idle timeout expires.
func TestKillSendsNoGoodbyeUnlikeStop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tcfg := transport.DefaultConfig()
		s := abcasttest.NewSubnet(t, 3, abcasttest.Options{Latency: 10 * time.Millisecond, Transport: tcfg})
		s.StartAll()
		// seesUp: node 0 has a connection to node j up.
		seesUp := func(j int) bool {
			for _, p := range s.Node(0).Peers() {
				if p.ID == s.ID(j) {
					return p.Up
				}
			}
			return false
		}
		if err := abcasttest.Eventually(time.Minute, func() error {
			for j := 1; j < 3; j++ {
				if !seesUp(j) {
					return fmt.Errorf("node 0 does not see node %d up", j)
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		// goneAfter ends node j with end and returns how long node 0 took
		// to see it go.
		goneAfter := func(j int, end func(int)) time.Duration {
			start := time.Now()
			end(j)
			if err := abcasttest.Eventually(3*tcfg.IdleTimeout, func() error {
				if seesUp(j) {
					return fmt.Errorf("node 0 still sees node %d up", j)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			return time.Since(start)
		}
		stopped := goneAfter(1, s.Stop)
		cut := s.Network().Stats().DroppedCut
		killed := goneAfter(2, s.Kill)
		dropped := s.Network().Stats().DroppedCut - cut
		t.Logf("node 0 saw the stopped node go after %v, the killed one after %v (idle timeout %v, keep-alive %v); %d packets of the killed node's way out dropped",
			stopped, killed, tcfg.IdleTimeout, tcfg.KeepAlive, dropped)
		if stopped >= tcfg.KeepAlive {
			t.Errorf("after Stop node 0 saw node 1 go only after %v: its goodbye did not arrive", stopped)
		}
		// The last packet from the killed node arrived at most a
		// keep-alive before it died.
		if killed < tcfg.IdleTimeout-tcfg.KeepAlive {
			t.Errorf("after Kill node 0 saw node 2 go after %v, before its idle timeout (%v) could expire: something said goodbye", killed, tcfg.IdleTimeout)
		}
		if dropped == 0 {
			t.Error("Kill dropped nothing that node 2 sent on its way out")
		}
	})
}
