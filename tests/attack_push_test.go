package tests

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/abcast/abcast/actors/abcasttest"
	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/quicremote/transport"
	"google.golang.org/protobuf/encoding/protowire"
)

// Issue 16, finding 5: a member pushes artifacts far beyond what honest
// senders push (24 × 32 MiB in the issue; honest senders push at most
// MaxPushSize and advertise the rest). Before, the receiver took pushes up
// to MaxPayload, holding each frame and its decoded copy (heap 700 MB).
// Now the transport admits frames only within the peer's budget, the
// channel refuses a push larger than MaxPushSize from its length, before
// decoding it (so a frame costs once, not twice), and counts it against
// the peer; an honest push of exactly MaxPushSize still arrives.
func TestAttackPushLarge(t *testing.T) {
	realStart := time.Now()
	synctest.Test(t, func(t *testing.T) {
		cfg, tcfg := attackConfig()
		rawCfg := tcfg
		a := newNodeAttack(t, cfg, tcfg, &rawCfg, nil)
		pushes, size := 24, 3<<20
		switch {
		case attackFull():
			size = 32 << 20
		case raceBuild:
			size = 512 << 10 // still twice MaxPushSize
		}
		frame, err := abcasttest.EncodeSlotUpdate(broadcast.SlotUpdate{Commit: 1, Slot: 1, Kind: broadcast.KindPush,
			Artifact: broadcast.Artifact{ID: "huge", Payload: make([]byte, size), LatencySensitive: true}})
		must(t, err)

		push := func() error {
			return a.raw.Push(context.Background(), a.victimID(), abcasttest.UpdateProtocol(hostileChannel), frame)
		}
		// What one push costs the victim, pushes one at a time: reading
		// its frame, and no copy of the payload. The reference is a frame
		// of the same size the node reads and refuses without copying
		// anything (an announcement with an unknown field): the two must
		// cost the same.
		ref := protowire.AppendBytes(protowire.AppendTag(nil, 3, protowire.BytesType), make([]byte, len(frame)-8))
		perFrame := func(protocol string, f []byte) float64 {
			const n = 8
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			for range n {
				if err := a.raw.Push(context.Background(), a.victimID(), protocol, f); err == nil {
					t.Fatalf("an oversized %s was accepted", protocol)
				}
			}
			runtime.ReadMemStats(&after)
			return float64(after.TotalAlloc-before.TotalAlloc) / n
		}
		refCost := perFrame(abcasttest.HelloProtocol, ref)
		pushCost := perFrame(abcasttest.UpdateProtocol(hostileChannel), frame)
		t.Logf("an oversized push of %.1f MiB allocates %.2f MiB in the process, a frame of the same size refused undecoded %.2f MiB: %.2f × the frame more",
			mib(uint64(size)), pushCost/(1<<20), refCost/(1<<20), (pushCost-refCost)/float64(size))
		if pushCost-refCost > 0.5*float64(size) {
			t.Errorf("an oversized push costs %.2f × its frame more than reading it: its payload was copied", (pushCost-refCost)/float64(size))
		}

		// The attack: rounds of 24 pushes at once for 10 s, honest
		// traffic in both directions meanwhile, and an honest
		// latency-sensitive push of exactly MaxPushSize encoded.
		a.startSampling(250 * time.Millisecond)
		hl := a.startHonest(100*time.Millisecond, 500, 20_000)
		maxPush := broadcast.Artifact{ID: "honest-max-push", LatencySensitive: true}
		for n := cfg.Sender.MaxPushSize - 64; ; n++ {
			maxPush.Payload = payloadFor(maxPush.ID, n)
			if broadcast.EncodedSize(maxPush) >= cfg.Sender.MaxPushSize {
				break
			}
		}
		if broadcast.EncodedSize(maxPush) != cfg.Sender.MaxPushSize {
			t.Fatalf("could not size an artifact to exactly %d bytes", cfg.Sender.MaxPushSize)
		}
		must(t, a.ch.Publish(a.honest, maxPush))
		var refusedBudget, invalid, accepted int
		var mu sync.Mutex
		for start := time.Now(); time.Since(start) < attackFor(10*time.Second); time.Sleep(500 * time.Millisecond) {
			var wg sync.WaitGroup
			for range pushes {
				wg.Go(func() {
					err := push()
					mu.Lock()
					defer mu.Unlock()
					switch {
					case err == nil:
						accepted++
					case errors.Is(err, transport.ErrRefused):
						refusedBudget++
					default:
						invalid++
					}
				})
			}
			wg.Wait()
		}
		hr := hl.finish(30 * time.Second)
		must(t, abcasttest.Eventually(30*time.Second, func() error {
			if _, ok := a.ch.Recorder(a.victim).Holds(maxPush.ID); !ok {
				return fmt.Errorf("honest push of MaxPushSize not delivered")
			}
			return nil
		}))
		st := a.ch.On(a.victim).Stats()
		ps := st.PeerStats[a.hostileID().String()]
		t.Logf("rounds of %d pushes of %.1f MiB for %v: %d read and refused as invalid (counted %d against the peer), %d refused unread by the peer's budget; delivered from pushes %d; %s",
			pushes, mib(uint64(size)), attackFor(10*time.Second), invalid, ps.Invalid, refusedBudget, st.Receiver.DeliveredFromPush, hr)
		if accepted > 0 {
			t.Errorf("%d pushes above MaxPushSize accepted", accepted)
		}
		if ps.Invalid < uint64(invalid) || invalid == 0 {
			t.Errorf("%d oversized pushes read, %d counted against the peer", invalid, ps.Invalid)
		}
		a.checkHeap("large pushes", uint64(a.bound.Term("transport budget"))+uint64(a.bound.Term("decoded copies"))+attackSlack)
	})
	t.Logf("real time %.1f s", time.Since(realStart).Seconds())
}
