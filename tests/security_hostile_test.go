package tests

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/actors/abcasttest"
	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/membership"
	"github.com/abcast/abcast/quicremote/transport"
)

// G4 against a Byzantine member speaking the raw protocol over its real,
// authenticated connection (DESIGN §1 G4, §7.4): in one run it floods
// 10^6 slot updates across 10^6 slots, replays stale commits, advertises
// ids it never serves, serves wrong bytes, sends oversized frames and
// garbage protobuf, opens 10^5 streams at once, and never answers the
// honest nodes' updates and fetches (reads that stall forever). Meanwhile
// two honest nodes keep publishing to each other. Checked: honest delivery
// completes; the honest node's retained heap stays under the bound its
// configuration implies (and the measured peak is printed); goroutines
// return to the baseline once the hostile peer is removed; each
// misbehaviour shows in the counters kept about that peer.
//
// ABCAST_HOSTILE_UPDATES sets the flood size: 10^5 by default (about 20 s;
// 2×10^4 under the race detector), 1000000 for the full 10^6
// (see internal/docs/RELIABILITY.md for that run's figures).

const (
	hostileChannel  = "consensus"
	honestFrameSize = 4 << 20
)

// payloadFor is the one payload the verifier accepts for id.
func payloadFor(id broadcast.ArtifactID, size int) []byte {
	p := bytes.Repeat([]byte(id), size/len(id)+1)[:size]
	return p
}

func verifyPayload(a broadcast.Artifact) error {
	if len(a.Payload) == 0 || !bytes.Equal(a.Payload, payloadFor(a.ID, len(a.Payload))) {
		return fmt.Errorf("payload does not match id %q", a.ID)
	}
	return nil
}

func hostileUpdates() int {
	if v := os.Getenv("ABCAST_HOSTILE_UPDATES"); v != "" {
		n, err := strconv.Atoi(v)
		if err == nil && n > 0 {
			return n
		}
	}
	if raceBuild {
		return 20_000 // the race detector makes each update ~5× dearer
	}
	return 100_000
}

// stormSize is the number of concurrent streams of the storm: 10^5, but
// 5,000 under the race detector, which cannot track more than 8,128 live
// goroutines; its deadline shrinks with it so some callers still wait.
func stormSize() (int, time.Duration) {
	if raceBuild {
		return 5_000, 300 * time.Millisecond
	}
	return 100_000, 2 * time.Second
}

func advert(commit uint64, slot uint64, id string, attr []byte) []byte {
	msg, err := abcasttest.EncodeSlotUpdate(broadcast.SlotUpdate{Commit: broadcast.CommitID(commit), Slot: broadcast.Slot(slot), Kind: broadcast.KindAdvert,
		Artifact: broadcast.Artifact{ID: broadcast.ArtifactID(id), Attribute: attr}})
	if err != nil {
		panic(err)
	}
	return msg
}

func TestSecurityHostileMember(t *testing.T) {
	updates := hostileUpdates()
	realStart := time.Now()
	defer func() { t.Logf("real time %.1f s", time.Since(realStart).Seconds()) }()
	synctest.Test(t, func(t *testing.T) {
		cfg := actors.DefaultConfig()
		if updates < 2*cfg.Receiver.SlotLimit {
			// A short flood (race detector) must still overrun the limit.
			cfg.Receiver.SlotLimit = updates / 2
			cfg.Sender.MaxSlots = min(cfg.Sender.MaxSlots, updates/2)
		}
		cfg.Receiver.FetchTimeoutMin = time.Second
		cfg.Receiver.FetchTimeoutMax = 4 * time.Second
		tcfg := transport.DefaultConfig()
		tcfg.MaxFrameSize = honestFrameSize
		s := abcasttest.NewSubnet(t, 3, abcasttest.Options{Config: cfg, Transport: tcfg, Latency: 10 * time.Millisecond, Seed: 9})
		s.Start(0)
		s.Start(1)
		ch := s.OpenChannel(hostileChannel, abcasttest.ChannelOptions{Verify: verifyPayload})
		honest := s.Node(0)
		victim := ch.On(0)
		hcfg := transport.DefaultConfig()
		hcfg.MaxFrameSize = 4 * honestFrameSize // so it can try oversized frames
		hcfg.MaxIncomingStreams = 1000
		hostile := s.Raw(2, hcfg)
		hostileID := s.ID(2)

		// The hostile node's handlers: updates and fetches sent to it stall
		// until the caller gives up; fetches of "wrong-*" get forged bytes.
		var stalledUpdates, stalledFetches, forged atomic.Int64
		must(t, hostile.Handle(abcasttest.UpdateProtocol(hostileChannel), func(ctx context.Context, _ membership.NodeID, _ []byte) ([]byte, error) {
			stalledUpdates.Add(1)
			<-ctx.Done()
			return nil, ctx.Err()
		}, 1000))
		must(t, hostile.Handle(abcasttest.FetchProtocol(hostileChannel), func(ctx context.Context, _ membership.NodeID, req []byte) ([]byte, error) {
			r, err := abcasttest.DecodeFetchRequest(req)
			if err == nil && bytes.HasPrefix([]byte(r.ID), []byte("wrong-")) {
				// A manifest of forged bytes, and the bytes: it assembles,
				// and the verifier refuses it.
				forged.Add(1)
				payload := []byte("forged bytes")
				return abcasttest.EncodeFetchManifest(broadcast.Describe(payload, broadcast.MinChunkSize), payload)
			}
			stalledFetches.Add(1)
			<-ctx.Done()
			return nil, ctx.Err()
		}, 1000))
		must(t, abcasttest.Eventually(time.Minute, func() error {
			for i := range 2 {
				if _, up := hostile.ConnID(s.ID(i)); !up {
					return fmt.Errorf("hostile not connected to %d", i)
				}
			}
			return nil
		}))
		for i := range 2 {
			must(t, abcasttest.Announce(context.Background(), hostile, s.ID(i), hostileChannel))
		}
		baseGoroutines := runtime.NumGoroutine()
		baseHeap := abcasttest.HeapInUse()

		// Honest traffic runs throughout: both honest nodes publish.
		seq := 0
		honestPublish := func() {
			for i := range 2 {
				seq++
				id := broadcast.ArtifactID(fmt.Sprintf("honest-%d-%d", i, seq))
				must(t, ch.Publish(i, broadcast.Artifact{ID: id, Payload: payloadFor(id, []int{500, 30_000}[seq%2])}))
			}
		}
		honestPublish()

		// Ids advertised and never served (every flooded id becomes one
		// too), one of them also published by an honest node; wrong bytes
		// served for an id an honest node publishes as well, advertised by
		// the hostile node first so the receiver asks it first. Their slots
		// lie beyond the flood's.
		for k, id := range []string{"ghost-0", "ghost-1", "ghost-shared", "wrong-shared"} {
			must(t, hostile.Push(context.Background(), s.ID(0), abcasttest.UpdateProtocol(hostileChannel), advert(uint64(k)+1, uint64(updates+k), id, nil)))
		}
		must(t, abcasttest.Eventually(time.Minute, func() error {
			if forged.Load() == 0 || stalledFetches.Load() < 3 {
				return fmt.Errorf("receiver has not asked the hostile node yet")
			}
			return nil
		}))
		for _, id := range []broadcast.ArtifactID{"ghost-shared", "wrong-shared"} {
			must(t, ch.Publish(1, broadcast.Artifact{ID: id, Payload: payloadFor(id, 20_000)}))
		}

		// 1. Flood: one update per slot across `updates` slots, from many
		// concurrent streams.
		var peak atomic.Uint64
		samplePeak := func() {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			for {
				p := peak.Load()
				if m.HeapInuse <= p || peak.CompareAndSwap(p, m.HeapInuse) {
					return
				}
			}
		}
		var accepted, refused, flooded atomic.Int64
		floodStart := time.Now()
		const workers = 200
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				for i := w; i < updates; i += workers {
					err := hostile.Push(context.Background(), s.ID(0), abcasttest.UpdateProtocol(hostileChannel), advert(uint64(i)+1, uint64(i), "f"+strconv.Itoa(i), nil))
					if err != nil {
						refused.Add(1)
					} else {
						accepted.Add(1)
					}
					if n := flooded.Add(1); n%20_000 == 0 {
						samplePeak()
						if n == int64(updates/2) {
							honestPublish()
						}
					}
				}
			})
		}
		wg.Wait()
		t.Logf("flood: %d updates in %.1f s virtual: %d accepted, %d refused", updates, time.Since(floodStart).Seconds(),
			accepted.Load(), refused.Load())
		honestPublish()

		// 2. Stale commit replays: the same and older commits for held slots.
		for i := range 1000 {
			must(t, hostile.Push(context.Background(), s.ID(0), abcasttest.UpdateProtocol(hostileChannel), advert(uint64(i)+1, uint64(i), "f"+strconv.Itoa(i), nil)))
			must(t, hostile.Push(context.Background(), s.ID(0), abcasttest.UpdateProtocol(hostileChannel), advert(uint64(i), uint64(i), "replayed"+strconv.Itoa(i), nil)))
		}

		// 5. Oversized frames (transport) and updates over the wire limits.
		for range 3 {
			if err := hostile.Push(context.Background(), s.ID(0), abcasttest.UpdateProtocol(hostileChannel), make([]byte, honestFrameSize+1)); err == nil {
				t.Fatal("oversized frame accepted")
			}
		}
		long := advert(uint64(updates)+10, 7, string(make([]byte, actors.DefaultConfig().Wire.MaxIDLen+1)), nil)
		if err := hostile.Push(context.Background(), s.ID(0), abcasttest.UpdateProtocol(hostileChannel), long); err == nil {
			t.Fatal("update with an over-long id accepted")
		}

		// 6. Garbage protobuf, to both protocols. A fetch request that
		// does not decode is refused with an error; one that happens to
		// decode names an id nobody published and is answered "not found".
		// Never an artifact, never a hang.
		rng := rand.New(rand.NewPCG(9, 9))
		garbageRefused, fetchRefused, fetchNotFound := 0, 0, 0
		for range 200 {
			junk := make([]byte, 1+rng.IntN(300))
			for k := range junk {
				junk[k] = byte(rng.Uint32())
			}
			if hostile.Push(context.Background(), s.ID(0), abcasttest.UpdateProtocol(hostileChannel), junk) != nil {
				garbageRefused++
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			resp, err := hostile.Call(ctx, s.ID(0), abcasttest.FetchProtocol(hostileChannel), junk)
			cancel()
			switch {
			case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, transport.ErrCancelled):
				t.Fatalf("garbage fetch request %x: no answer within 10 s", junk)
			case err != nil:
				fetchRefused++
			default:
				f, derr := abcasttest.DecodeFetchResponse(resp)
				if !errors.Is(derr, abcasttest.ErrNotFound) {
					t.Fatalf("garbage fetch request %x answered with %+v (decode error %v), want an error or not found", junk, f, derr)
				}
				fetchNotFound++
			}
		}
		t.Logf("garbage fetch requests: %d refused, %d answered not found", fetchRefused, fetchNotFound)
		if fetchRefused < 100 {
			t.Errorf("only %d of 200 garbage fetch requests refused", fetchRefused)
		}
		// The fetch server still serves a well-formed request afterwards.
		// (honest-0-1 is live on node 0, 30,000 bytes.)
		req, err := abcasttest.EncodeFetchRequest(abcasttest.FetchRequest{ID: "honest-0-1", Chunk: broadcast.ManifestPart})
		must(t, err)
		resp, err := hostile.Call(context.Background(), s.ID(0), abcasttest.FetchProtocol(hostileChannel), req)
		must(t, err)
		if f, err := abcasttest.DecodeFetchResponse(resp); err != nil || f.Manifest == nil || f.Manifest.Size != 30_000 ||
			(f.Data != nil && !bytes.Equal(f.Data, payloadFor("honest-0-1", 30_000))) {
			t.Fatalf("after the garbage, a manifest request for a live artifact got %+v, %v", f, err)
		}
		honestPublish()

		// Memory retained by the honest nodes now holds the hostile peer's
		// slot table at its limit. Bound: SlotLimit entries, each an id of
		// at most MaxIDLen and ~1 KiB of bookkeeping (entry, advertiser
		// set, fetch queue; ~400 B measured), plus 16 MiB for
		// transports (the hostile's too: it shares the process),
		// mailboxes and the honest artifacts.
		retained := abcasttest.HeapInUse()
		lim := actors.DefaultConfig().Wire
		bound := uint64(cfg.Receiver.SlotLimit)*uint64(lim.MaxIDLen+1024) + 16<<20
		growth := int64(retained) - int64(baseHeap)

		// 7. 10^5 streams at once, each willing to wait 2 s for a credit.
		storm, stormWait := stormSize()
		var done, pushedBack, other atomic.Int64
		stormStart := time.Now()
		for i := range storm {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), stormWait)
				defer cancel()
				err := hostile.Push(ctx, s.ID(0), abcasttest.UpdateProtocol(hostileChannel), advert(uint64(i%1000)+1, uint64(i%1000), "f"+strconv.Itoa(i%1000), nil))
				switch {
				case err == nil:
					done.Add(1)
				case errors.Is(err, transport.ErrCancelled) || errors.Is(err, transport.ErrRefused):
					pushedBack.Add(1)
				default:
					other.Add(1)
				}
				if n := done.Load() + pushedBack.Load(); n%20_000 == 0 {
					samplePeak()
				}
			})
		}
		wg.Wait()
		t.Logf("stream storm: %d concurrent pushes in %.1f s virtual: %d served, %d pushed back (waited for a stream credit or refused), %d other errors",
			storm, time.Since(stormStart).Seconds(), done.Load(), pushedBack.Load(), other.Load())
		if pushedBack.Load() == 0 {
			t.Fatal("10^5 concurrent streams met no pushback")
		}
		honestPublish()

		// Honest delivery completes despite all of it (and the hostile
		// node's stalled reads of the honest nodes' updates and fetches).
		ch.AssertDelivered(t, 3*time.Minute)
		if _, ok := ch.Recorder(0).Holds("ghost-0"); ok {
			t.Fatal("an id nobody serves was delivered")
		}
		samplePeak()

		st := victim.Stats()
		ps := st.PeerStats[hostileID.String()]
		ts := honest.Transport().(*transport.Transport).Stats(hostileID)
		t.Logf("counted against the hostile peer: receiver %+v; transport %+v; channel: updates refused %d, fetch failures %d, bad fetch responses %d, advertised ids %d, active fetches %d",
			ps, ts, st.UpdatesRefused, st.FetchFailures, st.BadFetchResponses, st.AdvertisedIDs, st.ActiveFetches)
		t.Logf("hostile's handlers: %d honest updates and %d fetches stalled, %d forged answers", stalledUpdates.Load(), stalledFetches.Load(), forged.Load())
		slotLimit := cfg.Receiver.SlotLimit
		checks := []struct {
			ok   bool
			what string
		}{
			{ps.OverLimit >= uint64(updates-slotLimit), fmt.Sprintf("flood: %d over limit, want ≥ %d", ps.OverLimit, updates-slotLimit)},
			{accepted.Load() <= int64(slotLimit), fmt.Sprintf("flood: %d accepted beyond the slot limit %d", accepted.Load(), slotLimit)},
			{ps.Stale >= 2000, fmt.Sprintf("stale replays: %d counted, want ≥ 2000", ps.Stale)},
			{ps.Mismatch >= 1, fmt.Sprintf("wrong bytes: mismatch %d", ps.Mismatch)},
			{ts.OversizedFrames >= 3, fmt.Sprintf("oversized frames: %d counted", ts.OversizedFrames)},
			{garbageRefused == 200, fmt.Sprintf("garbage updates: %d of 200 refused", garbageRefused)},
			{st.UpdatesRefused >= 201, fmt.Sprintf("garbage and over-limit updates: %d refused", st.UpdatesRefused)},
			{ps.Invalid >= 201, fmt.Sprintf("garbage and over-limit updates: %d counted against the peer", ps.Invalid)},
			{ps.FetchFailures >= 1, "never-served ids: no fetch failure counted against the peer"},
			{st.AdvertisedIDs <= 2*slotLimit, fmt.Sprintf("advertised ids %d above 2 × SlotLimit", st.AdvertisedIDs)},
		}
		for _, c := range checks {
			if !c.ok {
				t.Error(c.what)
			}
		}

		t.Logf("heap: base %.1f MiB, measured peak %.1f MiB (whole process, hostile and its 10^5 callers included), retained growth with the hostile slot table full %.1f MiB, bound %.1f MiB",
			mib(baseHeap), mib(peak.Load()), float64(growth)/(1<<20), mib(bound))
		if growth > int64(bound) {
			t.Errorf("honest heap grew %.1f MiB, above the bound %.1f MiB", float64(growth)/(1<<20), mib(bound))
		}

		// Removing the hostile member (and closing its transport) drops
		// its state and every goroutine its misbehaviour caused.
		s.Remove(2)
		s.CloseRaw(2)
		must(t, abcasttest.Eventually(time.Minute, func() error {
			if st := victim.Stats(); st.AdvertisedIDs > 20 || st.ActiveFetches > 0 {
				return fmt.Errorf("hostile state not dropped: %d advertised ids, %d fetches", st.AdvertisedIDs, st.ActiveFetches)
			}
			if g := runtime.NumGoroutine(); g > baseGoroutines+10 {
				return fmt.Errorf("%d goroutines, baseline %d", g, baseGoroutines)
			}
			return nil
		}))
		t.Logf("goroutines back to %d (baseline %d)", runtime.NumGoroutine(), baseGoroutines)
	})
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

// An update that does not decode (garbage protobuf) is refused and
// counted against the peer that sent it, not only channel-wide.
func TestSecurityUndecodableUpdateCountedAgainstPeer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := abcasttest.NewSubnet(t, 2, abcasttest.Options{Latency: 5 * time.Millisecond})
		s.Start(0)
		ch := s.OpenChannel(hostileChannel, abcasttest.ChannelOptions{})
		hostile := s.Raw(1, transport.DefaultConfig())
		must(t, abcasttest.Eventually(time.Minute, func() error {
			if _, up := hostile.ConnID(s.ID(0)); !up {
				return errors.New("not connected")
			}
			return nil
		}))
		for range 10 {
			if hostile.Push(context.Background(), s.ID(0), abcasttest.UpdateProtocol(hostileChannel), []byte{0xff, 0xff, 0xff}) == nil {
				t.Fatal("garbage accepted")
			}
		}
		st := ch.On(0).Stats()
		ps := st.PeerStats[s.ID(1).String()]
		t.Logf("channel refused %d; peer stats %+v", st.UpdatesRefused, ps)
		if ps.Invalid < 10 {
			t.Fatalf("10 undecodable updates, %d counted against the peer", ps.Invalid)
		}
	})
}
