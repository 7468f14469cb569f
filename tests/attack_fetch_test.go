package tests

import (
	"context"
	"crypto/sha256"
	"fmt"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/abcast/abcast/actors/abcasttest"
	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/membership"
)

// hostileArtifact is an artifact the hostile member advertises and serves
// from a seed, without holding it: chunk i is computed when asked for.
type hostileArtifact struct {
	id    broadcast.ArtifactID
	seed  byte
	man   broadcast.Manifest
	chunk int
}

func newHostileArtifact(id string, seed byte, size, chunk int) *hostileArtifact {
	h := &hostileArtifact{id: broadcast.ArtifactID(id), seed: seed, chunk: chunk,
		man: broadcast.Manifest{Size: size, ChunkSize: chunk}}
	for i := range h.man.Chunks() {
		sum := sha256.Sum256(h.chunkData(i))
		h.man.Hashes = append(h.man.Hashes, sum[:]...)
	}
	return h
}

func (h *hostileArtifact) chunkData(i int) []byte {
	b := make([]byte, h.man.ChunkLen(i))
	for k := range b {
		b[k] = byte(k*31+i) ^ h.seed
	}
	return b
}

func (h *hostileArtifact) advert(commit, slot uint64) []byte {
	msg, err := abcasttest.EncodeSlotUpdate(broadcast.SlotUpdate{Commit: broadcast.CommitID(commit), Slot: broadcast.Slot(slot), Kind: broadcast.KindAdvert,
		Artifact: broadcast.Artifact{ID: h.id}, Digest: h.man.Digest()})
	if err != nil {
		panic(err)
	}
	return msg
}

// Memory accounting (issue 16, "beyond the fixes"): a member advertises
// MaxFetchesPerPeer artifacts of MaxFetchSize and serves every chunk of
// them but the last, which it never serves. Before MaxFetchBytesPerPeer
// the victim kept what it was fed, MaxFetchesPerPeer × MaxFetchSize per
// channel (1 GiB with the defaults), for as long as the member kept
// advertising; now fetches following its manifests hold at most
// MaxFetchBytesPerPeer, and the honest peer's artifacts keep flowing.
func TestAttackFetchWithheldLastChunks(t *testing.T) {
	realStart := time.Now()
	synctest.Test(t, func(t *testing.T) {
		cfg, tcfg := attackConfig()
		cfg.Receiver.FetchTimeoutMin = time.Second
		cfg.Receiver.FetchTimeoutMax = 4 * time.Second
		rawCfg := tcfg
		a := newNodeAttack(t, cfg, tcfg, &rawCfg, nil)
		k, size, chunk := cfg.Receiver.MaxFetchesPerPeer, cfg.Receiver.MaxFetchSize, 256<<10
		arts := map[broadcast.ArtifactID]*hostileArtifact{}
		for i := range k {
			h := newHostileArtifact(fmt.Sprintf("withheld-%d", i), byte(i), size, chunk)
			arts[h.id] = h
		}
		var served, withheld atomic.Int64
		// Manifests on the fetch protocol, chunks (bare bytes) on the
		// chunk protocol, as a node serves them.
		must(t, a.raw.Handle(abcasttest.FetchProtocol(hostileChannel), func(ctx context.Context, _ membership.NodeID, req []byte) ([]byte, error) {
			r, err := abcasttest.DecodeFetchRequest(req)
			if err != nil {
				return nil, err
			}
			if h := arts[r.ID]; h != nil && r.Chunk == broadcast.ManifestPart {
				return abcasttest.EncodeFetchManifest(h.man, nil)
			}
			return abcasttest.EncodeFetchNotFound()
		}, 0))
		must(t, a.raw.Handle(abcasttest.ChunkProtocol(hostileChannel), func(ctx context.Context, _ membership.NodeID, req []byte) ([]byte, error) {
			r, err := abcasttest.DecodeFetchRequest(req)
			if err != nil {
				return nil, err
			}
			h := arts[r.ID]
			switch {
			case h == nil || r.Chunk == broadcast.ManifestPart:
				return nil, fmt.Errorf("no such chunk")
			case r.Chunk == h.man.Chunks()-1:
				withheld.Add(1)
				<-ctx.Done() // never served
				return nil, ctx.Err()
			}
			served.Add(int64(h.man.ChunkLen(r.Chunk)))
			return h.chunkData(r.Chunk), nil
		}, 0))

		a.startSampling(250 * time.Millisecond)
		hl := a.startHonest(100*time.Millisecond, 500, 20_000, 300_000)
		slot := uint64(0)
		for _, h := range arts {
			slot++
			must(t, a.raw.Push(context.Background(), a.victimID(), abcasttest.UpdateProtocol(hostileChannel), h.advert(slot, slot)))
		}
		// The attack lasts 30 s of virtual time: every fetch the victim
		// runs for the hostile member gets everything but its last chunk.
		time.Sleep(attackFor(30 * time.Second))
		hr := hl.finish(30 * time.Second)
		st := a.ch.On(a.victim).Stats()
		t.Logf("hostile served %.1f MiB of chunks, withheld %d last chunks; victim: fetches running %d, budget waits %d; %s",
			mib(uint64(served.Load())), withheld.Load(), st.ActiveFetches, st.Receiver.FetchBudgetWaits, hr)
		term := uint64(a.bound.Term("fetches following"))
		growth := a.checkHeap("withheld last chunks", term+attackSlack)
		if growth > a.perPeerLimit() {
			t.Errorf("growth %.1f MiB above the per-peer bound", mib(growth))
		}
		if served.Load() == 0 || withheld.Load() == 0 {
			t.Fatal("the victim never fetched from the hostile member")
		}
	})
	t.Logf("real time %.1f s", time.Since(realStart).Seconds())
}
