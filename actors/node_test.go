package actors_test

import (
	"bytes"
	"errors"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/internal/testnet"
)

func testConfig() actors.Config {
	cfg := actors.DefaultConfig()
	cfg.Receiver.FetchTimeoutMin = 2 * time.Second
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

// Close returns only when every goroutine the nodes started has ended.
func TestCloseEndsEveryGoroutine(t *testing.T) {
	base := runtime.NumGoroutine()
	func() {
		c := testnet.NewQUIC(t, 3, testConfig())
		c.StartAll()
		chans, recs := openAll(t, c, "blocks")
		owner := map[broadcast.ArtifactID]int{}
		for i, ch := range chans {
			a := art(fmt.Sprintf("g%d", i), 20_000)
			if err := ch.Publish(a); err != nil {
				t.Fatal(err)
			}
			owner[a.ID] = i
		}
		waitHeld(t, recs, owner, 20*time.Second)
		c.CloseAll()
	}()
	// protoactor-go's dead-letter throttle keeps a goroutine for up to a
	// second after a burst; allow for it, then require the baseline.
	testnet.Eventually(t, 5*time.Second, func() error {
		if n := runtime.NumGoroutine(); n > base {
			return fmt.Errorf("%d goroutines, baseline %d", n, base)
		}
		return nil
	})
}

func TestPublishLimitsAndErrors(t *testing.T) {
	cfg := testConfig()
	cfg.Sender.MaxSlots = 2
	c := testnet.NewMem(t, 2, cfg)
	c.StartAll()
	chans, _ := openAll(t, c, "blocks")
	ch := chans[0]
	for _, id := range []string{"a", "b"} {
		if err := ch.Publish(art(id, 10)); err != nil {
			t.Fatal(err)
		}
	}
	if err := ch.Publish(art("c", 10)); !errors.Is(err, broadcast.ErrSlotsExhausted) {
		t.Fatalf("publish beyond the bound: %v", err)
	}
	if err := ch.Publish(art("a", 10)); !errors.Is(err, broadcast.ErrDuplicate) {
		t.Fatalf("duplicate publish: %v", err)
	}
	if err := ch.Abort("zzz"); !errors.Is(err, broadcast.ErrUnknownID) {
		t.Fatalf("abort of unknown id: %v", err)
	}
	if err := ch.Publish(broadcast.Artifact{ID: broadcast.ArtifactID(make([]byte, 1000))}); !errors.Is(err, broadcast.ErrInvalid) {
		t.Fatalf("oversized id: %v", err)
	}
	if err := ch.Abort("a"); err != nil {
		t.Fatal(err)
	}
	if err := ch.Publish(art("c", 10)); err != nil {
		t.Fatalf("publish after an abort freed a slot: %v", err)
	}
	if _, err := c.Nodes[0].OpenChannel(actors.ChannelConfig{Name: "bad name!", Consume: func(actors.Event) {}}); err == nil {
		t.Fatal("invalid channel name accepted")
	}
	if _, err := c.Nodes[0].OpenChannel(actors.ChannelConfig{Name: "blocks", Consume: func(actors.Event) {}}); err == nil {
		t.Fatal("channel opened twice")
	}
}
