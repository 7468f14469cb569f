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
	"github.com/abcast/abcast/internal/testnet"
	"github.com/abcast/abcast/internal/wire"
	"github.com/abcast/abcast/membership"
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
	c := testnet.NewQUIC(t, 3, cfg)
	c.Start(0)
	c.Start(1)
	flooder := c.Raw(2)
	w := &workload{t: t, c: c, rng: newRand(1), live: map[broadcast.ArtifactID]int{},
		chans: make([]*actors.Channel, 3), recs: make([]*testnet.Recorder, 3), pool: make([]map[broadcast.ArtifactID]broadcast.Artifact, 3)}
	for i := range 2 {
		w.pool[i] = map[broadcast.ArtifactID]broadcast.Artifact{}
		w.open(i)
	}
	w.recs = w.recs[:2]
	testnet.Eventually(t, 30*time.Second, func() error {
		if _, up := flooder.ConnID(c.IDs[0].ID); !up {
			return fmt.Errorf("flooder not connected")
		}
		return nil
	})
	if err := abcasttest.Announce(t.Context(), flooder, c.IDs[0].ID, "consensus"); err != nil {
		t.Fatal(err)
	}
	base := heapInUse()

	const updates = 4 * slotLimit
	lim := wire.DefaultLimits()
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
			msg, err := wire.EncodeSlotUpdate(broadcast.SlotUpdate{Commit: broadcast.CommitID(i + 1), Slot: broadcast.Slot(i), Kind: broadcast.KindAdvert,
				Artifact: broadcast.Artifact{ID: broadcast.ArtifactID(id), Attribute: attr}})
			if err != nil {
				t.Error(err)
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err = flooder.Push(ctx, c.IDs[0].ID, "abcast/consensus/update", msg)
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
	st := w.chans[0].Stats()
	ps := st.PeerStats[c.IDs[2].ID.String()]
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
	c := testnet.NewMem(t, 2, actors.DefaultConfig())
	c.StartAll()
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
	recA, recB := testnet.NewRecorder(), testnet.NewRecorder()
	pub, err := c.Nodes[0].OpenChannel(actors.ChannelConfig{Name: "ingress", Consume: recA.Consume, Admit: admit})
	if err != nil {
		t.Fatal(err)
	}
	sub, err := c.Nodes[1].OpenChannel(actors.ChannelConfig{Name: "ingress", Consume: recB.Consume, Admit: admit})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []broadcast.Artifact{
		{ID: "d", Attribute: []byte("drop"), Payload: make([]byte, 10_000)},
		{ID: "l", Attribute: []byte("later"), Payload: make([]byte, 10_000)},
		{ID: "f", Attribute: []byte("fetch"), Payload: make([]byte, 10_000)},
	} {
		if err := pub.Publish(a); err != nil {
			t.Fatal(err)
		}
	}
	testnet.Eventually(t, 10*time.Second, func() error {
		if st := sub.Stats(); st.AdvertisedIDs != 3 || len(recB.Held()) != 1 {
			return fmt.Errorf("advertised %d, held %v", st.AdvertisedIDs, recB.Held())
		}
		return nil
	})
	// Only f was fetched; Drop and Later cost no fetch.
	if st := sub.Stats(); st.Receiver.FetchesStarted != 1 {
		t.Fatalf("%d fetches started, want 1", st.Receiver.FetchesStarted)
	}
	sub.Reevaluate() // the filter has not changed: still nothing
	mu.Lock()
	allowLater = true
	mu.Unlock()
	sub.Reevaluate()
	testnet.Eventually(t, 10*time.Second, func() error {
		if _, ok := recB.Holds("l"); !ok {
			return fmt.Errorf("later artifact not fetched after Reevaluate")
		}
		return nil
	})
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
	c := testnet.NewMem(t, 2, cfg)
	c.StartAll()
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
	fastRec := testnet.NewRecorder()
	var slowChans, fastChans []*actors.Channel
	for i, n := range c.Nodes {
		consume := slow
		if i == 0 {
			consume = func(actors.Event) {}
		}
		ch, err := n.OpenChannel(actors.ChannelConfig{Name: "blocks", Consume: consume})
		if err != nil {
			t.Fatal(err)
		}
		slowChans = append(slowChans, ch)
		rec := fastRec
		if i == 0 {
			rec = testnet.NewRecorder()
		}
		fch, err := n.OpenChannel(actors.ChannelConfig{Name: "signatures", Consume: rec.Consume})
		if err != nil {
			t.Fatal(err)
		}
		fastChans = append(fastChans, fch)
	}
	for i := range 40 {
		if err := slowChans[0].Publish(broadcast.Artifact{ID: broadcast.ArtifactID(fmt.Sprintf("b%d", i)), Payload: make([]byte, 5000)}); err != nil {
			t.Fatal(err)
		}
	}
	// The slow channel stalls with at most DeliveryCredits fetched or
	// delivered and not consumed.
	testnet.Eventually(t, 10*time.Second, func() error {
		st := slowChans[1].Stats()
		if st.Receiver.Delivered < 1 {
			return fmt.Errorf("nothing delivered yet")
		}
		return nil
	})
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
	testnet.Eventually(t, 10*time.Second, func() error {
		if n := len(fastRec.Held()); n != 20 {
			return fmt.Errorf("fast channel delivered %d of 20", n)
		}
		return nil
	})
	close(release)
	testnet.Eventually(t, 20*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if got != 40 {
			return fmt.Errorf("slow consumer got %d of 40", got)
		}
		return nil
	})
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
			c := testnet.NewQUIC(t, 3, cfg)
			c.Start(0)
			c.Start(1)
			liar := c.Raw(2)
			payload := make([]byte, 50_000)
			payload[7] = 7
			verify := func(a broadcast.Artifact) error {
				if len(a.Payload) != len(payload) || a.Payload[7] != 7 {
					return fmt.Errorf("payload does not match id")
				}
				return nil
			}
			rec := testnet.NewRecorder()
			recv, err := c.Nodes[0].OpenChannel(actors.ChannelConfig{Name: "consensus", Consume: rec.Consume, Verify: verify})
			if err != nil {
				t.Fatal(err)
			}
			pub, err := c.Nodes[1].OpenChannel(actors.ChannelConfig{Name: "consensus", Consume: func(actors.Event) {}, Verify: verify})
			if err != nil {
				t.Fatal(err)
			}
			served := make(chan struct{}, 100)
			forged := []byte("forged")
			if err := liar.Handle("abcast/consensus/fetch", func(ctx context.Context, _ membership.NodeID, req []byte) ([]byte, error) {
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
				return wire.EncodeFetchManifest(broadcast.Describe(forged, broadcast.MinChunkSize), forged)
			}, 0); err != nil {
				t.Fatal(err)
			}
			testnet.Eventually(t, 30*time.Second, func() error {
				if _, up := liar.ConnID(c.IDs[0].ID); !up {
					return fmt.Errorf("liar not connected")
				}
				return nil
			})
			if err := abcasttest.Announce(t.Context(), liar, c.IDs[0].ID, "consensus"); err != nil {
				t.Fatal(err)
			}
			// The liar advertises x first; only later does the honest node.
			msg, _ := wire.EncodeSlotUpdate(broadcast.SlotUpdate{Commit: 1, Slot: 0, Kind: broadcast.KindAdvert, Artifact: broadcast.Artifact{ID: "x"},
				Digest: broadcast.Describe(forged, broadcast.MinChunkSize).Digest()})
			if err := liar.Push(t.Context(), c.IDs[0].ID, "abcast/consensus/update", msg); err != nil {
				t.Fatal(err)
			}
			<-served // the receiver asked the liar
			if err := pub.Publish(broadcast.Artifact{ID: "x", Payload: payload}); err != nil {
				t.Fatal(err)
			}
			testnet.Eventually(t, 30*time.Second, func() error {
				if p, ok := rec.Holds("x"); !ok || p[7] != 7 {
					return fmt.Errorf("x not delivered (correctly)")
				}
				return nil
			})
			st := recv.Stats()
			t.Logf("%s: fetch attempts %d, failures %d, bad responses %d", mode, st.FetchAttempts, st.FetchFailures, st.BadFetchResponses)
			liarStats := st.PeerStats[c.IDs[2].ID.String()]
			switch mode {
			case "wrong-bytes":
				if liarStats.Mismatch == 0 {
					t.Fatalf("wrong bytes not counted against the liar: %+v", st.PeerStats)
				}
			case "garbage":
				// Undecodable answers are bad responses, not mere failures.
				if liarStats.BadResponses == 0 || liarStats.FetchFailures != 0 || st.BadFetchResponses == 0 {
					t.Fatalf("undecodable responses not counted as bad responses of the liar: %+v, channel %+v", liarStats, st)
				}
			}
		})
	}
}
