package broadcast

import (
	"fmt"
	"testing"
	"time"
)

// Issue 16, "memory accounting": an advertiser that serves every chunk of
// its artifacts but the last makes the receiver hold what it fed. Without
// a per-peer bound that is MaxFetchesPerPeer fetches of MaxFetchSize each
// per channel (1 GiB with the defaults), kept for as long as it keeps
// advertising. MaxFetchBytesPerPeer bounds what fetches following one
// peer's manifests hold.

// sizedPayload is n bytes that differ per seed.
func sizedPayload(seed byte, n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*7+i/251) ^ seed
	}
	return p
}

// heldBy sums the chunk bytes held by running fetches whose manifest came
// from peer (all running fetches when peer is empty).
func heldBy(r *Receiver, peer PeerID) int {
	n := 0
	for _, st := range r.ids {
		if f := st.run; f != nil && (peer == "" || f.supplier == peer) {
			n += f.held
		}
	}
	return n
}

// drive performs attempts the way serveFor says until virtual time limit,
// ticking through pauses, and returns the most bytes the receiver held at
// once. serveFor returns the payload to serve for an attempt, or nil to
// fail it.
func drive(t *testing.T, r *Receiver, eff []Effect, start time.Time, limit time.Duration, serveFor func(FetchAttempt) []byte) (peak int, now time.Time) {
	t.Helper()
	now = start
	queue := attempts(eff)
	for steps := 0; steps < 200_000; steps++ {
		if len(queue) == 0 {
			next := time.Time{}
			for id := range r.pausing {
				next = earliest(next, r.ids[id].run.pause)
			}
			if next.IsZero() || next.After(start.Add(limit)) {
				return peak, now
			}
			now = next
			eff = r.Tick(now)
			checkR(t, r)
			queue = append(queue, attempts(eff)...)
			continue
		}
		a := queue[0]
		queue = queue[1:]
		if p := serveFor(a); p != nil {
			eff = answer(t, r, a, p, now)
		} else {
			eff = r.FetchFailed(a.Token, now)
			checkR(t, r)
		}
		queue = append(queue, attempts(eff)...)
		peak = max(peak, heldBy(r, ""))
	}
	t.Fatal("drive: too many steps")
	return peak, now
}

func TestFetchBytesFollowingOnePeersManifestsAreBounded(t *testing.T) {
	const size = 64 * testChunk // 64 KiB, 64 chunks
	const maxFetch = size
	const bound = 2 * maxFetch
	r := newTestReceiver(t, func(c *ReceiverConfig) {
		fetchCfg(c)
		c.MaxFetchSize = maxFetch
		c.MaxFetchBytesPerPeer = bound
		c.MaxFetchesPerPeer = 8
		c.FetchParallel = 8
	}, "x", "h")
	payloads := map[ArtifactID][]byte{}
	var eff []Effect
	for i := range 8 {
		id := ArtifactID(fmt.Sprintf("x%d", i))
		payloads[id] = sizedPayload(byte(i), size)
		eff = append(eff, apply(t, r, "x", 1, advertOf(CommitID(i+1), Slot(i), string(id), payloads[id]))...)
	}
	// x serves every chunk but the last of each artifact.
	withhold := true
	serveX := func(a FetchAttempt) []byte {
		if withhold && a.Chunk == size/testChunk-1 {
			return nil
		}
		return payloads[a.ID]
	}
	peak, now := drive(t, r, eff, t0, 10*time.Minute, serveX)
	t.Logf("8 fetches of %d KiB from a peer withholding each last chunk: peak held %d KiB, bound %d KiB", size>>10, peak>>10, bound>>10)
	if peak > bound {
		t.Fatalf("fetches following x's manifests held %d bytes, bound %d", peak, bound)
	}
	if got := heldBy(r, "x"); got < bound-2*testChunk {
		t.Fatalf("x's fetches hold %d bytes: the bound %d should be used, not more", got, bound)
	}

	// Another advertiser's fetches are not held up by x's budget.
	hp := sizedPayload(99, size)
	eff = apply(t, r, "h", 1, advertOf(1, 0, "h0", hp))
	_, now = drive(t, r, eff, now, time.Minute, func(a FetchAttempt) []byte {
		if a.Peer == "h" {
			return hp
		}
		return serveX(a)
	})
	if !r.IsDelivered("h0") {
		t.Fatalf("h's artifact not delivered while x's budget is full: %s", r.DescribeID("h0"))
	}

	// Once x serves its last chunks, the fetches that waited for its
	// budget run, and everything is delivered.
	withhold = false
	_, _ = drive(t, r, r.Tick(now.Add(time.Hour)), now.Add(time.Hour), time.Hour, serveX)
	for id := range payloads {
		if !r.IsDelivered(id) {
			t.Fatalf("%s not delivered once x served everything: %s", id, r.DescribeID(id))
		}
	}
	if heldBy(r, "") != 0 || len(r.assembly) != 0 {
		t.Fatalf("after every fetch ended: %d bytes held, budgets %v", heldBy(r, ""), r.assembly)
	}
}

// A manifest whose supplier has no room is not kept; the fetch asks an
// advertiser of the same digest that has room, and its chunks then
// reserve from that one.
func TestFetchManifestGoesToAnAdvertiserWithRoom(t *testing.T) {
	const size = 16 * testChunk
	r := newTestReceiver(t, func(c *ReceiverConfig) {
		fetchCfg(c)
		c.MaxFetchSize, c.MaxFetchBytesPerPeer = size, size
	}, "x", "y")
	// x's budget fills with an artifact whose last chunk it withholds.
	full := sizedPayload(1, size)
	eff := apply(t, r, "x", 1, advertOf(1, 0, "full", full))
	withhold := func(a FetchAttempt) []byte {
		if a.ID == "full" && a.Chunk == size/testChunk-1 {
			return nil
		}
		return full
	}
	_, now := drive(t, r, eff, t0, time.Minute, withhold)
	if got := r.FetchBytesHeld("x"); got != size {
		t.Fatalf("x's fetches reserve %d bytes, want %d", got, size)
	}
	// Both advertise a; whoever is asked first, y supplies the manifest.
	pa := sizedPayload(2, size)
	eff = apply(t, r, "x", 1, advertOf(2, 1, "a", pa))
	eff = append(eff, apply(t, r, "y", 1, advertOf(1, 0, "a", pa))...)
	_, _ = drive(t, r, eff, now, time.Minute, func(a FetchAttempt) []byte {
		if a.ID == "a" {
			return pa
		}
		return withhold(a)
	})
	if !r.IsDelivered("a") {
		t.Fatalf("a not delivered: %s", r.DescribeID("a"))
	}
	if r.FetchBytesHeld("x") != size || r.FetchBytesHeld("y") != 0 {
		t.Fatalf("reservations x %d, y %d after a's delivery, want %d and 0", r.FetchBytesHeld("x"), r.FetchBytesHeld("y"), size)
	}
	t.Logf("manifests not kept for lack of room: %d", r.Stats().FetchBudgetWaits)
}
