package tests

import (
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/internal/testnet"
)

// The reference implementation's integration scenarios (DESIGN §7.5),
// re-expressed on whole nodes over QUIC on the simulated network.

func simCluster(t *testing.T, n int) (*testnet.Cluster, *workload) {
	c := testnet.NewSim(t, n, actors.DefaultConfig(), testnet.SimOptions{Latency: 20 * time.Millisecond, Seed: 1})
	c.StartAll()
	return c, newWorkload(t, c, 1)
}

func TestScenarioNodeJoiningLaterReceivesLiveArtifacts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := testnet.NewSim(t, 4, actors.DefaultConfig(), testnet.SimOptions{Latency: 20 * time.Millisecond, Seed: 2})
		for i := range 3 {
			c.Start(i)
		}
		w := &workload{t: t, c: c, rng: newRand(3), live: map[broadcast.ArtifactID]int{},
			chans: make([]*actors.Channel, 4), recs: make([]*testnet.Recorder, 4), pool: make([]map[broadcast.ArtifactID]broadcast.Artifact, 4)}
		for i := range 3 {
			w.pool[i] = map[broadcast.ArtifactID]broadcast.Artifact{}
			w.open(i)
		}
		for range 3 {
			for i := range 3 {
				w.publish(i)
			}
		}
		w.abortRandom()
		time.Sleep(5 * time.Second)
		// Node 3 joins now and must get every live artifact.
		c.Start(3)
		w.pool[3] = map[broadcast.ArtifactID]broadcast.Artifact{}
		w.open(3)
		w.converge(time.Minute)
		c.CloseInBubble()
	})
}

func TestScenarioFlappingLinkCausesNoDuplicates(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, w := simCluster(t, 3)
		time.Sleep(time.Second)
		first, _ := c.Nodes[0].Transport().ConnID(c.IDs[1].ID)
		for round := range 6 {
			w.publish(round % 3)
			c.Cut(0, 1)
			time.Sleep(7 * time.Second) // past the idle timeout: the connection dies and is redialled
			c.Heal(0, 1)
			before, _ := c.Nodes[0].Transport().ConnID(c.IDs[1].ID)
			testnet.Eventually(t, time.Minute, func() error {
				if now, up := c.Nodes[0].Transport().ConnID(c.IDs[1].ID); !up || now == before {
					return fmt.Errorf("link 0-1 not back yet")
				}
				return nil
			})
			time.Sleep(time.Duration(round) * 300 * time.Millisecond)
		}
		w.converge(time.Minute) // also checks every artifact was delivered exactly once
		last, _ := c.Nodes[0].Transport().ConnID(c.IDs[1].ID)
		if last < first+5 {
			t.Fatalf("link did not flap: connection id %d -> %d", first, last)
		}
		t.Logf("connection ids %d -> %d, no duplicate delivery", first, last)
		c.CloseInBubble()
	})
}

func TestScenarioRestartedNodeReceivesAgain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, w := simCluster(t, 4)
		for i := range 4 {
			w.publish(i)
			w.publish(i)
		}
		w.converge(time.Minute)
		w.restart(2) // fresh state: it must receive every live artifact again
		w.converge(time.Minute)
		if got := len(w.recs[2].Held()); got != len(w.live)-len(w.pool[2]) {
			t.Fatalf("restarted node holds %d artifacts", got)
		}
		c.CloseInBubble()
	})
}

func TestScenarioPartitionHealsAndNewArtifactsArrive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, w := simCluster(t, 4)
		for j := range 4 {
			if j != 3 {
				c.Cut(3, j)
			}
		}
		for i := range 3 {
			w.publish(i)
		}
		w.publish(3)
		time.Sleep(20 * time.Second) // a long partition: all of node 3's connections die
		for j := range 3 {
			c.Heal(3, j)
		}
		w.publish(0)
		w.converge(time.Minute)
		c.CloseInBubble()
	})
}

func TestScenarioTwoPeersAdvertiseOneFetch(t *testing.T) {
	// Two publishers advertise the same id (the same artifact validated by
	// two replicas): the receiver delivers it once.
	synctest.Test(t, func(t *testing.T) {
		c, w := simCluster(t, 3)
		a := broadcast.Artifact{ID: "shared", Payload: make([]byte, 200_000)}
		for i := range 2 {
			if err := w.chans[i].Publish(a); err != nil {
				t.Fatal(err)
			}
		}
		testnet.Eventually(t, time.Minute, func() error {
			if _, ok := w.recs[2].Holds("shared"); !ok {
				return fmt.Errorf("not delivered")
			}
			return nil
		})
		if n := w.recs[2].Deliveries("shared"); n != 1 {
			t.Fatalf("delivered %d times", n)
		}
		// Withdrawn only once neither advertises it.
		if err := w.chans[0].Abort("shared"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Second)
		if _, ok := w.recs[2].Holds("shared"); !ok {
			t.Fatal("withdrawn while another peer still advertises it")
		}
		if err := w.chans[1].Abort("shared"); err != nil {
			t.Fatal(err)
		}
		testnet.Eventually(t, time.Minute, func() error {
			if _, ok := w.recs[2].Holds("shared"); ok {
				return fmt.Errorf("still held")
			}
			return nil
		})
		c.CloseInBubble()
	})
}

func TestScenarioLargeArtifactsBothWays(t *testing.T) {
	// 50 MiB advertised and 10 MiB latency-sensitive (above MaxPushSize, so
	// advertised too), each way, over real QUIC on loopback.
	if testing.Short() {
		t.Skip("moves 120 MiB")
	}
	c := testnet.NewQUIC(t, 2, actors.DefaultConfig())
	c.StartAll()
	w := newWorkload(t, c, 9)
	for i := range 2 {
		big := broadcast.Artifact{ID: broadcast.ArtifactID(fmt.Sprintf("big-%d", i)), Payload: make([]byte, 50<<20)}
		urgent := broadcast.Artifact{ID: broadcast.ArtifactID(fmt.Sprintf("urgent-%d", i)), Payload: make([]byte, 10<<20), LatencySensitive: true}
		big.Payload[12345] = byte(i + 1)
		urgent.Payload[777] = byte(i + 1)
		for _, a := range []broadcast.Artifact{big, urgent} {
			if err := w.chans[i].Publish(a); err != nil {
				t.Fatal(err)
			}
			w.live[a.ID] = i
		}
	}
	w.converge(2 * time.Minute)
	for i := range 2 {
		p, _ := w.recs[1-i].Holds(broadcast.ArtifactID(fmt.Sprintf("big-%d", i)))
		if len(p) != 50<<20 || p[12345] != byte(i+1) {
			t.Fatalf("50 MiB artifact from %d arrived damaged", i)
		}
	}
	st := w.chans[0].Stats()
	if st.Sender.Published != 2 {
		t.Fatalf("stats %+v", st.Sender)
	}
}
