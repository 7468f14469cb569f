package tests

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"sync"
	"testing"
	"time"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/actors/abcasttest"
	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/membership"
	"github.com/abcast/abcast/quicremote/transport"
)

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// G4: a member that floods slot updates far past the slot limit, with
// maximal ids and attributes, leaves the receiver within its configured
// bound, is counted, and does not stop honest delivery.
func TestFloodingPeerStaysWithinBound(t *testing.T) {
	const slotLimit = 5_000
	cfg := actors.DefaultConfig()
	cfg.Receiver.SlotLimit = slotLimit
	cfg.Sender.MaxSlots = slotLimit
	s := abcasttest.NewSubnet(t, 3, abcasttest.Options{Backend: abcasttest.LoopbackQUIC, Config: cfg})
	s.Start(0)
	s.Start(1)
	flooder := s.Raw(2, transport.DefaultConfig())
	w := newWorkload(t, s, 1)
	must(t, abcasttest.Eventually(30*time.Second, func() error {
		if _, up := flooder.ConnID(s.ID(0)); !up {
			return fmt.Errorf("flooder not connected")
		}
		return nil
	}))
	if err := abcasttest.Announce(t.Context(), flooder, s.ID(0), "consensus"); err != nil {
		t.Fatal(err)
	}
	base := heapInUse()

	const updates = 4 * slotLimit
	lim := actors.DefaultConfig().Wire
	attr := make([]byte, lim.MaxAttributeLen)
	var refused, accepted int
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := range updates {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			id := fmt.Sprintf("%0*d", lim.MaxIDLen, i)
			msg, err := abcasttest.EncodeSlotUpdate(broadcast.SlotUpdate{Commit: broadcast.CommitID(i + 1), Slot: broadcast.Slot(i), Kind: broadcast.KindAdvert,
				Artifact: broadcast.Artifact{ID: broadcast.ArtifactID(id), Attribute: attr}})
			if err != nil {
				t.Error(err)
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err = flooder.Push(ctx, s.ID(0), abcasttest.UpdateProtocol("consensus"), msg)
			mu.Lock()
			if err != nil {
				refused++
			} else {
				accepted++
			}
			mu.Unlock()
		}()
		if i == updates/2 {
			// Honest traffic in the middle of the flood.
			w.publish(1)
			w.publish(1)
		}
	}
	wg.Wait()
	w.publish(1)
	w.converge(time.Minute)
	// Close the flooder's own transport first: its buffers live in this
	// process too, but they are not the honest node's memory.
	flooder.Close()
	peak := heapInUse()
	if f := os.Getenv("ABCAST_HEAPPROFILE"); f != "" {
		out, _ := os.Create(f)
		pprof.WriteHeapProfile(out)
		out.Close()
	}
	st := w.ch.On(0).Stats()
	ps := st.PeerStats[s.ID(2).String()]
	// The bound: SlotLimit entries, each with an id, an attribute and about
	// 1 KiB of bookkeeping (entry, advertiser set, queue slot; the core
	// measures ~850 B), plus 4 MiB for the transport's and actors' buffers.
	bound := uint64(slotLimit)*uint64(lim.MaxIDLen+lim.MaxAttributeLen+1024) + 4<<20
	growth := int64(peak) - int64(base)
	t.Logf("flood of %d updates: %d accepted, %d refused (over limit %d); heap %d MiB -> %d MiB (growth %d KiB, bound %d KiB); advertised ids %d",
		updates, accepted, refused, ps.OverLimit, base>>20, peak>>20, growth>>10, bound>>10, st.AdvertisedIDs)
	if ps.OverLimit < updates-slotLimit || accepted > slotLimit {
		t.Fatalf("slot limit not enforced: accepted %d, over limit %d", accepted, ps.OverLimit)
	}
	if growth > int64(bound) {
		t.Fatalf("heap grew %d KiB, above the bound %d KiB", growth>>10, bound>>10)
	}
}

func TestAdmissionDropNeverFetchesLaterWaitsForReevaluate(t *testing.T) {
	s := abcasttest.NewSubnet(t, 2, abcasttest.Options{Backend: abcasttest.Memory})
	s.StartAll()
	var mu sync.Mutex
	allowLater := false
	admit := func(id broadcast.ArtifactID, attr []byte) broadcast.Decision {
		mu.Lock()
		defer mu.Unlock()
		switch string(attr) {
		case "drop":
			return broadcast.Drop
		case "later":
			if allowLater {
				return broadcast.Fetch
			}
			return broadcast.Later
		}
		return broadcast.Fetch
	}
	ch := s.OpenChannel("ingress", abcasttest.ChannelOptions{Admit: admit})
	pub, sub, recB := ch.On(0), ch.On(1), ch.Recorder(1)
	for _, a := range []broadcast.Artifact{
		{ID: "d", Attribute: []byte("drop"), Payload: make([]byte, 10_000)},
		{ID: "l", Attribute: []byte("later"), Payload: make([]byte, 10_000)},
		{ID: "f", Attribute: []byte("fetch"), Payload: make([]byte, 10_000)},
	} {
		if err := pub.Publish(a); err != nil {
			t.Fatal(err)
		}
	}
	must(t, abcasttest.Eventually(10*time.Second, func() error {
		if st := sub.Stats(); st.AdvertisedIDs != 3 || len(recB.Held()) != 1 {
			return fmt.Errorf("advertised %d, held %v", st.AdvertisedIDs, recB.Held())
		}
		return nil
	}))
	// Only f was fetched; Drop and Later cost no fetch.
	if st := sub.Stats(); st.Receiver.FetchesStarted != 1 {
		t.Fatalf("%d fetches started, want 1", st.Receiver.FetchesStarted)
	}
	sub.Reevaluate() // the filter has not changed: still nothing
	mu.Lock()
	allowLater = true
	mu.Unlock()
	sub.Reevaluate()
	must(t, abcasttest.Eventually(10*time.Second, func() error {
		if _, ok := recB.Holds("l"); !ok {
			return fmt.Errorf("later artifact not fetched after Reevaluate")
		}
		return nil
	}))
	if _, ok := recB.Holds("d"); ok {
		t.Fatal("dropped artifact delivered")
	}
	if st := sub.Stats(); st.Receiver.FetchesStarted != 2 {
		t.Fatalf("%d fetches started, want 2", st.Receiver.FetchesStarted)
	}
}

// A slow consumer pauses fetching (its credits run out) instead of
// queueing, and does not slow another channel on the same connection.
func TestSlowConsumerPausesFetchingAndSparesOtherChannels(t *testing.T) {
	cfg := actors.DefaultConfig()
	cfg.Receiver.DeliveryCredits = 4
	s := abcasttest.NewSubnet(t, 2, abcasttest.Options{Backend: abcasttest.Memory, Config: cfg})
	s.StartAll()
	release := make(chan struct{})
	var mu sync.Mutex
	got := 0
	slow := func(ev actors.Event) {
		if _, ok := ev.(*actors.Delivered); ok {
			<-release
			mu.Lock()
			got++
			mu.Unlock()
		}
	}
	blocks := s.OpenChannel("blocks", abcasttest.ChannelOptions{Consume: func(node int) func(actors.Event) {
		if node == 0 {
			return func(actors.Event) {}
		}
		return slow
	}})
	sigs := s.OpenChannel("signatures", abcasttest.ChannelOptions{})
	slowChans := []*actors.Channel{blocks.On(0), blocks.On(1)}
	fastChans := []*actors.Channel{sigs.On(0), sigs.On(1)}
	fastRec := sigs.Recorder(1)
	for i := range 40 {
		if err := slowChans[0].Publish(broadcast.Artifact{ID: broadcast.ArtifactID(fmt.Sprintf("b%d", i)), Payload: make([]byte, 5000)}); err != nil {
			t.Fatal(err)
		}
	}
	// The slow channel stalls with at most DeliveryCredits fetched or
	// delivered and not consumed.
	must(t, abcasttest.Eventually(10*time.Second, func() error {
		st := slowChans[1].Stats()
		if st.Receiver.Delivered < 1 {
			return fmt.Errorf("nothing delivered yet")
		}
		return nil
	}))
	time.Sleep(200 * time.Millisecond) // give a queue the chance to grow if it would
	st := slowChans[1].Stats()
	if st.Receiver.FetchesStarted > uint64(cfg.Receiver.DeliveryCredits) {
		t.Fatalf("%d fetches started with %d credits and a stuck consumer", st.Receiver.FetchesStarted, cfg.Receiver.DeliveryCredits)
	}
	// Meanwhile the other channel flows.
	for i := range 20 {
		if err := fastChans[0].Publish(broadcast.Artifact{ID: broadcast.ArtifactID(fmt.Sprintf("s%d", i)), Payload: make([]byte, 3000)}); err != nil {
			t.Fatal(err)
		}
	}
	must(t, abcasttest.Eventually(10*time.Second, func() error {
		if n := len(fastRec.Held()); n != 20 {
			return fmt.Errorf("fast channel delivered %d of 20", n)
		}
		return nil
	}))
	close(release)
	must(t, abcasttest.Eventually(20*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if got != 40 {
			return fmt.Errorf("slow consumer got %d of 40", got)
		}
		return nil
	}))
}

// A peer that advertises an id and then serves wrong bytes, bytes that do
// not decode, or never answers, costs the receiver retries, never a wrong
// delivery: the fetch moves on to the other advertiser (with a growing
// per-attempt timeout), and the misbehaviour is counted against the peer.
func TestFetchMovesOnFromPeerServingWrongBytesOrNothing(t *testing.T) {
	for _, mode := range []string{"wrong-bytes", "garbage", "silent"} {
		t.Run(mode, func(t *testing.T) {
			cfg := actors.DefaultConfig()
			cfg.Receiver.FetchTimeoutMin = 300 * time.Millisecond
			s := abcasttest.NewSubnet(t, 3, abcasttest.Options{Backend: abcasttest.LoopbackQUIC, Config: cfg})
			s.Start(0)
			s.Start(1)
			liar := s.Raw(2, transport.DefaultConfig())
			payload := make([]byte, 50_000)
			payload[7] = 7
			verify := func(a broadcast.Artifact) error {
				if len(a.Payload) != len(payload) || a.Payload[7] != 7 {
					return fmt.Errorf("payload does not match id")
				}
				return nil
			}
			ch := s.OpenChannel("consensus", abcasttest.ChannelOptions{Verify: verify})
			recv, pub, rec := ch.On(0), ch.On(1), ch.Recorder(0)
			served := make(chan struct{}, 100)
			forged := []byte("forged")
			if err := liar.Handle(abcasttest.FetchProtocol("consensus"), func(ctx context.Context, _ membership.NodeID, req []byte) ([]byte, error) {
				served <- struct{}{}
				switch mode {
				case "silent":
					<-ctx.Done()
					return nil, ctx.Err()
				case "garbage":
					return []byte{0xff, 0xff, 0xff}, nil
				}
				// The manifest its advert named, with forged bytes that
				// match it: they assemble, and the verifier refuses them.
				return abcasttest.EncodeFetchManifest(broadcast.Describe(forged, broadcast.MinChunkSize), forged)
			}, 0); err != nil {
				t.Fatal(err)
			}
			must(t, abcasttest.Eventually(30*time.Second, func() error {
				if _, up := liar.ConnID(s.ID(0)); !up {
					return fmt.Errorf("liar not connected")
				}
				return nil
			}))
			if err := abcasttest.Announce(t.Context(), liar, s.ID(0), "consensus"); err != nil {
				t.Fatal(err)
			}
			// The liar advertises x first; only later does the honest node.
			msg, _ := abcasttest.EncodeSlotUpdate(broadcast.SlotUpdate{Commit: 1, Slot: 0, Kind: broadcast.KindAdvert, Artifact: broadcast.Artifact{ID: "x"}})
			if err := liar.Push(t.Context(), s.ID(0), abcasttest.UpdateProtocol("consensus"), msg); err != nil {
				t.Fatal(err)
			}
			<-served // the receiver asked the liar
			if err := pub.Publish(broadcast.Artifact{ID: "x", Payload: payload}); err != nil {
				t.Fatal(err)
			}
			must(t, abcasttest.Eventually(30*time.Second, func() error {
				if p, ok := rec.Holds("x"); !ok || p[7] != 7 {
					return fmt.Errorf("x not delivered (correctly)")
				}
				return nil
			}))
			st := recv.Stats()
			t.Logf("%s: fetch attempts %d, failures %d, bad responses %d", mode, st.FetchAttempts, st.FetchFailures, st.BadFetchResponses)
			if mode == "wrong-bytes" && st.PeerStats[s.ID(2).String()].Mismatch == 0 {
				t.Fatalf("wrong bytes not counted against the liar: %+v", st.PeerStats)
			}
		})
	}
}
