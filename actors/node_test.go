package actors_test

import (
	"bytes"
	"errors"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/actors/abcasttest"
	"github.com/abcast/abcast/broadcast"
)

func testConfig() actors.Config {
	cfg := actors.DefaultConfig()
	cfg.Receiver.FetchTimeoutMin = 2 * time.Second
	return cfg
}

func art(id string, size int) broadcast.Artifact {
	p := make([]byte, size)
	for i := range p {
		p[i] = byte(i * 7)
	}
	return broadcast.Artifact{ID: broadcast.ArtifactID(id), Attribute: []byte("a"), Payload: p}
}

// publishAll publishes one artifact of each size on every node.
func publishAll(t *testing.T, s *abcasttest.Subnet, ch *abcasttest.Channel, prefix string, sizes ...int) {
	t.Helper()
	for i := range s.N() {
		for j, size := range sizes {
			if err := ch.Publish(i, art(fmt.Sprintf("%s%d-%d", prefix, i, j), size)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestMemClusterPushAdvertAbort(t *testing.T) {
	s := abcasttest.NewSubnet(t, 3, abcasttest.Options{Backend: abcasttest.Memory, Config: testConfig()})
	s.StartAll()
	ch := s.OpenChannel("blocks", abcasttest.ChannelOptions{})
	publishAll(t, s, ch, "n", 200, 5000, 100_000)
	ch.AssertDelivered(t, 10*time.Second)
	p, _ := ch.Recorder(1).Holds("n0-2")
	if !bytes.Equal(p, art("n0-2", 100_000).Payload) {
		t.Fatal("payload differs")
	}
	if err := ch.Abort(0, "n0-1"); err != nil {
		t.Fatal(err)
	}
	ch.AssertDelivered(t, 10*time.Second)
	if _, ok := ch.Recorder(1).Holds("n0-1"); ok {
		t.Fatal("aborted artifact still held")
	}
}

func TestQUICClusterPushAdvertAbort(t *testing.T) {
	s := abcasttest.NewSubnet(t, 4, abcasttest.Options{Backend: abcasttest.LoopbackQUIC, Config: testConfig()})
	s.StartAll()
	ch := s.OpenChannel("blocks", abcasttest.ChannelOptions{})
	publishAll(t, s, ch, "n", 200, 5000, 300_000)
	ch.AssertDelivered(t, 20*time.Second)
	for i := range s.N() {
		if err := ch.Abort(i, broadcast.ArtifactID(fmt.Sprintf("n%d-1", i))); err != nil {
			t.Fatal(err)
		}
	}
	ch.AssertDelivered(t, 20*time.Second)
}

// Close returns only when every goroutine the nodes started has ended.
func TestCloseEndsEveryGoroutine(t *testing.T) {
	base := runtime.NumGoroutine()
	func() {
		s := abcasttest.NewSubnet(t, 3, abcasttest.Options{Backend: abcasttest.LoopbackQUIC, Config: testConfig()})
		s.StartAll()
		ch := s.OpenChannel("blocks", abcasttest.ChannelOptions{})
		publishAll(t, s, ch, "g", 20_000)
		ch.AssertDelivered(t, 20*time.Second)
		s.Close()
	}()
	// protoactor-go's dead-letter throttle keeps a goroutine for up to a
	// second after a burst; allow for it, then require the baseline.
	if err := abcasttest.Eventually(5*time.Second, func() error {
		if n := runtime.NumGoroutine(); n > base {
			return fmt.Errorf("%d goroutines, baseline %d", n, base)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func TestPublishLimitsAndErrors(t *testing.T) {
	cfg := testConfig()
	cfg.Sender.MaxSlots = 2
	s := abcasttest.NewSubnet(t, 2, abcasttest.Options{Backend: abcasttest.Memory, Config: cfg})
	s.StartAll()
	ch := s.OpenChannel("blocks", abcasttest.ChannelOptions{}).On(0)
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
	if _, err := s.Node(0).OpenChannel(actors.ChannelConfig{Name: "bad name!", Consume: func(actors.Event) {}}); err == nil {
		t.Fatal("invalid channel name accepted")
	}
	if _, err := s.Node(0).OpenChannel(actors.ChannelConfig{Name: "blocks", Consume: func(actors.Event) {}}); err == nil {
		t.Fatal("channel opened twice")
	}
}
