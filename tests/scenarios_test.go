package tests

import (
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/abcast/abcast/actors/abcasttest"
	"github.com/abcast/abcast/broadcast"
)

// The reference implementation's integration scenarios (DESIGN §7.5),
// re-expressed on whole nodes over QUIC on the simulated network.

func simSubnet(t *testing.T, n int) (*abcasttest.Subnet, *workload) {
	s := abcasttest.NewSubnet(t, n, abcasttest.Options{Latency: 20 * time.Millisecond, Seed: 1})
	s.StartAll()
	return s, newWorkload(t, s, 1)
}

func TestScenarioNodeJoiningLaterReceivesLiveArtifacts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := abcasttest.NewSubnet(t, 4, abcasttest.Options{Latency: 20 * time.Millisecond, Seed: 2})
		for i := range 3 {
			s.Start(i)
		}
		w := newWorkload(t, s, 3)
		for range 3 {
			for i := range 3 {
				w.publish(i)
			}
		}
		w.abortRandom()
		time.Sleep(5 * time.Second)
		// Node 3 joins now (the kit opens the channel on it) and must get
		// every live artifact.
		s.Start(3)
		w.converge(time.Minute)
	})
}

func TestScenarioFlappingLinkCausesNoDuplicates(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, w := simSubnet(t, 3)
		time.Sleep(time.Second)
		first, _ := s.Node(0).Transport().ConnID(s.ID(1))
		for round := range 6 {
			w.publish(round % 3)
			s.Cut(0, 1)
			time.Sleep(7 * time.Second) // past the idle timeout: the connection dies and is redialled
			s.Heal(0, 1)
			before, _ := s.Node(0).Transport().ConnID(s.ID(1))
			must(t, abcasttest.Eventually(time.Minute, func() error {
				if now, up := s.Node(0).Transport().ConnID(s.ID(1)); !up || now == before {
					return fmt.Errorf("link 0-1 not back yet")
				}
				return nil
			}))
			time.Sleep(time.Duration(round) * 300 * time.Millisecond)
		}
		w.converge(time.Minute) // also checks every artifact was delivered exactly once
		last, _ := s.Node(0).Transport().ConnID(s.ID(1))
		if last < first+5 {
			t.Fatalf("link did not flap: connection id %d -> %d", first, last)
		}
		t.Logf("connection ids %d -> %d, no duplicate delivery", first, last)
	})
}

func TestScenarioRestartedNodeReceivesAgain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, w := simSubnet(t, 4)
		for i := range 4 {
			w.publish(i)
			w.publish(i)
		}
		w.converge(time.Minute)
		w.restart(2) // fresh state: it must receive every live artifact again
		w.converge(time.Minute)
		owned := 0
		for _, owner := range w.ch.Live() {
			if owner == 2 {
				owned++
			}
		}
		if got := len(w.ch.Recorder(2).Held()); got != len(w.ch.Live())-owned {
			t.Fatalf("restarted node holds %d artifacts", got)
		}
	})
}

func TestScenarioPartitionHealsAndNewArtifactsArrive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, w := simSubnet(t, 4)
		for j := range 4 {
			if j != 3 {
				s.Cut(3, j)
			}
		}
		for i := range 3 {
			w.publish(i)
		}
		w.publish(3)
		time.Sleep(20 * time.Second) // a long partition: all of node 3's connections die
		for j := range 3 {
			s.Heal(3, j)
		}
		w.publish(0)
		w.converge(time.Minute)
	})
}

func TestScenarioTwoPeersAdvertiseOneFetch(t *testing.T) {
	// Two publishers advertise the same id (the same artifact validated by
	// two replicas): the receiver delivers it once.
	synctest.Test(t, func(t *testing.T) {
		_, w := simSubnet(t, 3)
		a := broadcast.Artifact{ID: "shared", Payload: make([]byte, 200_000)}
		for i := range 2 {
			if err := w.ch.Publish(i, a); err != nil {
				t.Fatal(err)
			}
		}
		rec := w.ch.Recorder(2)
		must(t, abcasttest.Eventually(time.Minute, func() error {
			if _, ok := rec.Holds("shared"); !ok {
				return fmt.Errorf("not delivered")
			}
			return nil
		}))
		if n := rec.Deliveries("shared"); n != 1 {
			t.Fatalf("delivered %d times", n)
		}
		// Withdrawn only once neither advertises it.
		if err := w.ch.Abort(0, "shared"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Second) // virtual: long enough for a withdrawal to arrive
		if _, ok := rec.Holds("shared"); !ok {
			t.Fatal("withdrawn while another peer still advertises it")
		}
		if err := w.ch.Abort(1, "shared"); err != nil {
			t.Fatal(err)
		}
		must(t, abcasttest.Eventually(time.Minute, func() error {
			if _, ok := rec.Holds("shared"); ok {
				return fmt.Errorf("still held")
			}
			return nil
		}))
	})
}

func TestScenarioLargeArtifactsBothWays(t *testing.T) {
	// 50 MiB advertised and 10 MiB latency-sensitive (above MaxPushSize, so
	// advertised too), each way, over real QUIC on loopback.
	if testing.Short() {
		t.Skip("moves 120 MiB")
	}
	s := abcasttest.NewSubnet(t, 2, abcasttest.Options{Backend: abcasttest.LoopbackQUIC, BareSockets: true})
	s.StartAll()
	w := newWorkload(t, s, 9)
	for i := range 2 {
		big := broadcast.Artifact{ID: broadcast.ArtifactID(fmt.Sprintf("big-%d", i)), Payload: make([]byte, 50<<20)}
		urgent := broadcast.Artifact{ID: broadcast.ArtifactID(fmt.Sprintf("urgent-%d", i)), Payload: make([]byte, 10<<20), LatencySensitive: true}
		big.Payload[12345] = byte(i + 1)
		urgent.Payload[777] = byte(i + 1)
		for _, a := range []broadcast.Artifact{big, urgent} {
			if err := w.ch.Publish(i, a); err != nil {
				t.Fatal(err)
			}
		}
	}
	w.converge(2 * time.Minute)
	for i := range 2 {
		p, _ := w.ch.Recorder(1 - i).Holds(broadcast.ArtifactID(fmt.Sprintf("big-%d", i)))
		if len(p) != 50<<20 || p[12345] != byte(i+1) {
			t.Fatalf("50 MiB artifact from %d arrived damaged", i)
		}
	}
	st := w.ch.On(0).Stats()
	if st.Sender.Published != 2 {
		t.Fatalf("stats %+v", st.Sender)
	}
}
