package actors_test

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/internal/testnet"
)

func testConfig() actors.Config {
	cfg := actors.DefaultConfig()
	cfg.FetchTimeoutMin = 2 * time.Second
	return cfg
}

func openAll(t *testing.T, c *testnet.Cluster, name string) ([]*actors.Channel, []*testnet.Recorder) {
	t.Helper()
	var chans []*actors.Channel
	var recs []*testnet.Recorder
	for _, n := range c.Nodes {
		r := testnet.NewRecorder()
		ch, err := n.OpenChannel(actors.ChannelConfig{Name: name, Consume: r.Consume})
		if err != nil {
			t.Fatal(err)
		}
		chans = append(chans, ch)
		recs = append(recs, r)
	}
	return chans, recs
}

func art(id string, size int) broadcast.Artifact {
	p := make([]byte, size)
	for i := range p {
		p[i] = byte(i * 7)
	}
	return broadcast.Artifact{ID: broadcast.ArtifactID(id), Attribute: []byte("a"), Payload: p}
}

// waitHeld waits until every recorder except the publisher's holds exactly want.
func waitHeld(t *testing.T, recs []*testnet.Recorder, owner map[broadcast.ArtifactID]int, within time.Duration) {
	t.Helper()
	testnet.Eventually(t, within, func() error {
		for i, r := range recs {
			held := map[broadcast.ArtifactID]bool{}
			for _, id := range r.Held() {
				held[id] = true
			}
			for id, o := range owner {
				if o != i && !held[id] {
					return fmt.Errorf("node %d lacks %s", i, id)
				}
				delete(held, id)
			}
			for id := range held {
				return fmt.Errorf("node %d holds %s which is not live", i, id)
			}
		}
		return nil
	})
	for i, r := range recs {
		if p := r.Problems(); len(p) > 0 {
			t.Fatalf("node %d: %v", i, p)
		}
	}
}

func TestMemClusterPushAdvertAbort(t *testing.T) {
	c := testnet.NewMem(t, 3, testConfig())
	c.StartAll()
	chans, recs := openAll(t, c, "blocks")
	owner := map[broadcast.ArtifactID]int{}
	for i, ch := range chans {
		for j, size := range []int{200, 5000, 100_000} {
			a := art(fmt.Sprintf("n%d-%d", i, j), size)
			if err := ch.Publish(a); err != nil {
				t.Fatal(err)
			}
			owner[a.ID] = i
		}
	}
	waitHeld(t, recs, owner, 10*time.Second)
	p, _ := recs[1].Holds("n0-2")
	if !bytes.Equal(p, art("n0-2", 100_000).Payload) {
		t.Fatal("payload differs")
	}
	if err := chans[0].Abort("n0-1"); err != nil {
		t.Fatal(err)
	}
	delete(owner, "n0-1")
	waitHeld(t, recs, owner, 10*time.Second)
}

func TestQUICClusterPushAdvertAbort(t *testing.T) {
	c := testnet.NewQUIC(t, 4, testConfig())
	c.StartAll()
	chans, recs := openAll(t, c, "blocks")
	owner := map[broadcast.ArtifactID]int{}
	for i, ch := range chans {
		for j, size := range []int{200, 5000, 300_000} {
			a := art(fmt.Sprintf("n%d-%d", i, j), size)
			if err := ch.Publish(a); err != nil {
				t.Fatal(err)
			}
			owner[a.ID] = i
		}
	}
	waitHeld(t, recs, owner, 20*time.Second)
	for i := range chans {
		id := broadcast.ArtifactID(fmt.Sprintf("n%d-1", i))
		if err := chans[i].Abort(id); err != nil {
			t.Fatal(err)
		}
		delete(owner, id)
	}
	waitHeld(t, recs, owner, 20*time.Second)
}
