package broadcast

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"
)

func attempts(eff []Effect) []FetchAttempt { return only[FetchAttempt](eff) }
func retries(eff []Effect) []RetryAt       { return only[RetryAt](eff) }

func fetchCfg(c *ReceiverConfig) {
	c.FetchTimeoutMin, c.FetchTimeoutMax = time.Second, 16*time.Second
	c.FetchBackoffMin, c.FetchBackoffMax = 100*time.Millisecond, 2*time.Second
	c.FetchWindow, c.FetchParallel = 2, 8
}

// bigPayload is 5.5 chunks of testChunk bytes.
func bigPayload(seed byte) []byte {
	p := make([]byte, 5*testChunk+testChunk/2)
	for i := range p {
		p[i] = byte(i*7+i/251) ^ seed
	}
	return p
}

func advertOf(commit CommitID, slot Slot, id string, payload []byte) SlotUpdate {
	u := advert(commit, slot, id)
	u.Digest = Describe(payload, testChunk).Digest()
	return u
}

// answer has the peer of a serve payload and checks the invariants.
func answer(t *testing.T, r *Receiver, a FetchAttempt, payload []byte, now time.Time) []Effect {
	t.Helper()
	eff, err := r.FetchDone(a.Token, serve(a, payload), 100*time.Millisecond, now)
	if err != nil {
		t.Fatalf("answer to %+v: %v", a, err)
	}
	checkR(t, r)
	return eff
}

func chunksOf(as []FetchAttempt) []int {
	var out []int
	for _, a := range as {
		out = append(out, a.Chunk)
	}
	return out
}

func TestFetchAsksForTheManifestThenChunksAndKeepsWhatArrived(t *testing.T) {
	payload := bigPayload(1)
	r := newTestReceiver(t, fetchCfg, "p")
	eff := apply(t, r, "p", 1, advertOf(1, 0, "a", payload))
	m := attempts(eff)
	if len(m) != 1 || m[0].Chunk != ManifestPart || m[0].Digest != Describe(payload, testChunk).Digest() {
		t.Fatalf("first request %+v, want the manifest of the advertised digest", m)
	}
	// The manifest brings a window of two chunk requests to p.
	as := attempts(answer(t, r, m[0], payload, t0))
	if fmt.Sprint(chunksOf(as)) != "[0 1]" {
		t.Fatalf("after the manifest asked for chunks %v, want [0 1]", chunksOf(as))
	}
	next := attempts(answer(t, r, as[0], payload, t0))
	if fmt.Sprint(chunksOf(next)) != "[2]" {
		t.Fatalf("after chunk 0 asked for %v, want [2]", chunksOf(next))
	}
	// Chunk 1 times out: p backs off; chunk 0 stays held, and chunk 1 is
	// asked for again (only it and what follows) once p is ready.
	eff = r.FetchFailed(as[1].Token, t0)
	checkR(t, r)
	if len(attempts(eff)) != 0 || len(retries(eff)) != 1 {
		t.Fatalf("after a failure: %s, want a pause", kindsOf(eff))
	}
	eff = r.FetchFailed(next[0].Token, t0) // chunk 2 fails too
	checkR(t, r)
	now := r.ids["a"].run.pause
	asked := map[int]int{0: 1}
	for !r.IsDelivered("a") {
		eff = r.Tick(now)
		checkR(t, r)
		for len(attempts(eff)) > 0 {
			a := attempts(eff)[0]
			asked[a.Chunk]++
			eff = append(eff[1:], answer(t, r, a, payload, now)...)
		}
		if r.ids["a"] != nil && r.ids["a"].run != nil {
			now = r.ids["a"].run.pause
		}
	}
	for i := range 6 {
		if asked[i] != 1 {
			t.Fatalf("chunk %d answered %d times: %v (what arrived must be kept)", i, asked[i], asked)
		}
	}
	if r.Stats().FetchedBytes != uint64(len(payload)) {
		t.Fatalf("fetched bytes %d, want %d", r.Stats().FetchedBytes, len(payload))
	}
}

func TestFetchChunksComeFromEveryAdvertiserOfTheDigestAtOnce(t *testing.T) {
	payload := bigPayload(2)
	r := newTestReceiver(t, fetchCfg, "p", "q", "s")
	m := attempts(apply(t, r, "p", 1, advertOf(1, 0, "a", payload)))[0]
	apply(t, r, "q", 1, advertOf(1, 0, "a", payload))
	apply(t, r, "s", 1, advertOf(1, 0, "a", payload))
	as := attempts(answer(t, r, m, payload, t0))
	perPeer := map[PeerID]int{}
	chunks := map[int]bool{}
	for _, a := range as {
		perPeer[a.Peer]++
		chunks[a.Chunk] = true
	}
	// 6 chunks missing: all asked at once, 2 per peer, from all three.
	if len(as) != 6 || len(chunks) != 6 || perPeer["p"] != 2 || perPeer["q"] != 2 || perPeer["s"] != 2 {
		t.Fatalf("chunk requests %+v", as)
	}
}

func TestFetchTimeoutFollowsThePeersRate(t *testing.T) {
	payload := bigPayload(3)
	r := newTestReceiver(t, func(c *ReceiverConfig) { fetchCfg(c); c.FetchWindow = 1 }, "p")
	m := attempts(apply(t, r, "p", 1, advertOf(1, 0, "a", payload)))[0]
	if m.Timeout != time.Second {
		t.Fatalf("first request's timeout %v, want the minimum", m.Timeout)
	}
	// The manifest (counted as 16 KiB) took 8 s: p delivers 2 KiB/s, so a
	// chunk of 1 KiB gets the minimum plus four times half a second.
	eff, err := r.FetchDone(m.Token, serve(m, payload), 8*time.Second, t0)
	if err != nil {
		t.Fatal(err)
	}
	a := attempts(eff)[0]
	if rate := r.PeerStats("p").Rate; rate != 2048 || a.Timeout != 3*time.Second {
		t.Fatalf("rate %d B/s, timeout %v; want 2048 and 3s", rate, a.Timeout)
	}
	// A failure doubles it for the next request to p.
	now := retries(r.FetchFailed(a.Token, t0))[0].At
	if b := attempts(r.Tick(now))[0]; b.Timeout != 6*time.Second {
		t.Fatalf("timeout after a failure %v, want 6s", b.Timeout)
	}
	// Fast answers bring it down to near the minimum.
	for range 10 {
		f := r.ids["a"].run
		tok := sortedKeys(f.reqs)[0]
		eff, err = r.FetchDone(tok, serve(FetchAttempt{Chunk: f.reqs[tok].chunk}, payload), time.Millisecond, now)
		if err != nil || r.IsDelivered("a") {
			break
		}
	}
	if got := attempts(eff); len(got) > 0 && got[0].Timeout > 1100*time.Millisecond {
		t.Fatalf("timeout %v after fast answers", got[0].Timeout)
	}
}

func TestFetchWrongChunkIsBlamedOnItsServerOnly(t *testing.T) {
	payload := bigPayload(4)
	r := newTestReceiver(t, fetchCfg, "p", "q")
	m := attempts(apply(t, r, "p", 1, advertOf(1, 0, "a", payload)))[0]
	apply(t, r, "q", 1, advertOf(1, 0, "a", payload))
	as := attempts(answer(t, r, m, payload, t0))
	var fromQ FetchAttempt
	for _, a := range as {
		if a.Peer == "q" {
			fromQ = a
		}
	}
	eff, err := r.FetchDone(fromQ.Token, Fetched{Data: make([]byte, testChunk)}, time.Millisecond, t0)
	if !errors.Is(err, ErrMismatch) {
		t.Fatalf("wrong chunk: %v", err)
	}
	checkR(t, r)
	// The chunk is asked for again, from p (q backs off); p is not blamed.
	again := attempts(eff)
	if len(again) != 0 {
		t.Fatalf("p's window is full, yet %+v", again)
	}
	if st := r.PeerStats("q"); st.Mismatch != 1 {
		t.Fatalf("q stats %+v", st)
	}
	if st := r.PeerStats("p"); st.Mismatch != 0 {
		t.Fatalf("p blamed for q's chunk: %+v", st)
	}
	if r.ids["a"].run.state[fromQ.Chunk] != chunkMissing {
		t.Fatalf("wrong chunk kept")
	}
	mustFetchPayload(t, r, "a", "p", payload)
}

func TestFetchFalseDigestIsBlamedOnEveryPeerThatAdvertisedIt(t *testing.T) {
	// Two liars advertise a digest of bytes the verifier refuses; the one
	// honest peer advertises the real one. The liars' digest has more
	// advertisers, so it is fetched first, in full, proven false, and never
	// fetched again; then the honest digest is.
	good, forged := bigPayload(5), bigPayload(6)
	r := newTestReceiver(t, func(c *ReceiverConfig) {
		fetchCfg(c)
		c.Verify = func(a Artifact) error {
			if string(a.Payload) == string(forged) {
				return errors.New("forged")
			}
			return nil
		}
	}, "honest", "liar1", "liar2")
	apply(t, r, "liar1", 1, advertOf(1, 0, "a", forged))
	apply(t, r, "liar2", 1, advertOf(1, 0, "a", forged))
	apply(t, r, "honest", 1, advertOf(1, 0, "a", good))
	now := t0
	var err error
	for range 100 {
		f := r.ids["a"].run
		if f.digest != Describe(forged, testChunk).Digest() {
			break
		}
		tok := sortedKeys(f.reqs)[0]
		q := f.reqs[tok]
		_, err = r.FetchDone(tok, serve(FetchAttempt{Chunk: q.chunk}, forged), time.Millisecond, now)
		checkR(t, r)
		if err != nil {
			break
		}
	}
	if !errors.Is(err, ErrMismatch) {
		t.Fatalf("assembling the forged artifact: %v", err)
	}
	for _, p := range []PeerID{"liar1", "liar2"} {
		if r.PeerStats(p).Mismatch != 1 {
			t.Fatalf("%s not blamed: %+v", p, r.PeerStats(p))
		}
	}
	if r.PeerStats("honest").Mismatch != 0 || r.Stats().FalseDigests != 1 {
		t.Fatalf("honest %+v, stats %+v", r.PeerStats("honest"), r.Stats())
	}
	// From now on only the honest digest and peer are used.
	f := r.ids["a"].run
	for _, q := range f.reqs {
		if q.peer != "honest" || f.digest != Describe(good, testChunk).Digest() {
			t.Fatalf("after the false digest: %s", r.DescribeID("a"))
		}
	}
	mustFetchPayload(t, r, "a", "honest", good)
}

// mustFetchPayload is mustFetch serving the given payload.
func mustFetchPayload(t *testing.T, r *Receiver, id ArtifactID, from PeerID, payload []byte) {
	t.Helper()
	for range 1000 {
		a := attemptTo(t, r, id, from)
		if _, err := r.FetchDone(a.Token, serve(a, payload), time.Millisecond, t0); err != nil {
			t.Fatal(err)
		}
		checkR(t, r)
		if r.IsDelivered(id) {
			return
		}
	}
	t.Fatalf("%s not delivered: %s", id, r.DescribeID(id))
}

func TestFetchManifestNotMatchingTheDigestIsBlamedOnItsServer(t *testing.T) {
	payload := bigPayload(7)
	r := newTestReceiver(t, fetchCfg, "p", "q")
	m := attempts(apply(t, r, "p", 1, advertOf(1, 0, "a", payload)))[0]
	apply(t, r, "q", 1, advertOf(1, 0, "a", payload))
	other := Describe(bigPayload(8), testChunk)
	eff, err := r.FetchDone(m.Token, Fetched{Manifest: &other}, time.Millisecond, t0)
	if !errors.Is(err, ErrMismatch) {
		t.Fatalf("wrong manifest: %v", err)
	}
	checkR(t, r)
	if a := attempts(eff); len(a) != 1 || a[0].Peer != "q" || a[0].Chunk != ManifestPart {
		t.Fatalf("after p's wrong manifest: %s", kindsOf(eff))
	}
	if r.PeerStats("p").Mismatch != 1 || r.Stats().FalseDigests != 0 {
		t.Fatalf("stats %+v %+v", r.PeerStats("p"), r.Stats())
	}
}

func TestFetchImpossibleManifestProvesItsDigestFalse(t *testing.T) {
	// A digest may name a manifest larger than MaxFetchSize; fetching its
	// manifest proves it false without fetching a chunk.
	r := newTestReceiver(t, func(c *ReceiverConfig) { fetchCfg(c); c.MaxFetchSize = 4 * testChunk }, "liar")
	payload := bigPayload(9) // 5.5 chunks
	m := attempts(apply(t, r, "liar", 1, advertOf(1, 0, "a", payload)))[0]
	eff, err := r.FetchDone(m.Token, serve(m, payload), time.Millisecond, t0)
	if !errors.Is(err, ErrMismatch) || len(attempts(eff)) != 0 {
		t.Fatalf("oversized manifest: %v, %s", err, kindsOf(eff))
	}
	checkR(t, r)
	if !r.ids["a"].run.stalled || r.PeerStats("liar").Mismatch != 1 {
		t.Fatalf("%s", r.DescribeID("a"))
	}
}

func TestFetchPausesWhileEveryAdvertiserBacksOffAndAnnouncesOnlyEarlierPauses(t *testing.T) {
	r := newTestReceiver(t, fetchCfg, "p")
	a := attempts(apply(t, r, "p", 1, advert(1, 0, "a")))[0]
	b := attempts(apply(t, r, "p", 1, advert(2, 1, "b")))[0]
	first := retries(r.FetchFailed(a.Token, t0))
	if len(first) != 1 {
		t.Fatal("first pause not announced")
	}
	// Backoff after one failure: 100 ms jittered into [50, 100] ms.
	if d := first[0].At.Sub(t0); d < 50*time.Millisecond || d > 100*time.Millisecond {
		t.Fatalf("pause %v", d)
	}
	// A later pause is not announced: the caller's timer is earlier.
	if later := retries(r.FetchFailed(b.Token, t0.Add(time.Second))); len(later) != 0 {
		t.Fatalf("later pause announced: %+v", later)
	}
	checkR(t, r)
	// An early tick asks nothing and names the pause again.
	if eff := r.Tick(t0.Add(10 * time.Millisecond)); len(attempts(eff)) != 0 || len(retries(eff)) != 1 {
		t.Fatalf("early tick: %s", kindsOf(eff))
	}
	// When the timer fires, a is asked again and b's pause is named.
	eff := r.Tick(first[0].At)
	if got := attempts(eff); len(got) != 1 || got[0].ID != "a" {
		t.Fatalf("tick at a's pause: %s", kindsOf(eff))
	}
	if rs := retries(eff); len(rs) != 1 || !rs[0].At.After(t0.Add(time.Second)) {
		t.Fatalf("tick did not name b's pause: %+v", rs)
	}
	checkR(t, r)
}

func TestFetchNewAdvertiserIsAskedAtOnce(t *testing.T) {
	r := newTestReceiver(t, fetchCfg, "p", "q")
	a := attempts(apply(t, r, "p", 1, advert(1, 0, "a")))[0]
	if rs := retries(r.FetchFailed(a.Token, t0)); len(rs) != 1 {
		t.Fatalf("no pause after the only advertiser failed")
	}
	checkR(t, r)
	if b := attempts(apply(t, r, "q", 1, advert(1, 0, "a"))); len(b) != 1 || b[0].Peer != "q" {
		t.Fatalf("new advertiser not asked: %+v", b)
	}
}

func TestFetchCancelledWhenNoLongerAdvertisedIgnoresLateOutcomes(t *testing.T) {
	payload := bigPayload(10)
	r := newTestReceiver(t, fetchCfg, "p")
	m := attempts(apply(t, r, "p", 1, advertOf(1, 0, "a", payload)))[0]
	as := attempts(answer(t, r, m, payload, t0))
	answer(t, r, as[0], payload, t0)
	// The publisher aborts: the fetch is cancelled with a chunk in flight
	// and 4 of 6 chunks never fetched.
	expect(t, apply(t, r, "p", 1, clearedU(2, 0)), "cancel(a) ")
	if eff := r.FetchFailed(as[1].Token, t0); len(eff) != 0 {
		t.Fatalf("late failure produced %s", kindsOf(eff))
	}
	if eff, err := r.FetchDone(as[1].Token, serve(as[1], payload), time.Millisecond, t0); len(eff) != 0 || err != nil {
		t.Fatalf("late result produced %s, %v", kindsOf(eff), err)
	}
	if r.Stats().LateFetchResults != 2 || r.IDs() != 0 || r.Stats().FetchedBytes != 0 {
		t.Fatalf("stats %+v ids %d", r.Stats(), r.IDs())
	}
	checkR(t, r)
}

func TestFetchRestartRepeatsRequestsAndKeepsChunks(t *testing.T) {
	payload := bigPayload(11)
	r := newTestReceiver(t, fetchCfg, "p")
	m := attempts(apply(t, r, "p", 1, advertOf(1, 0, "a", payload)))[0]
	as := attempts(answer(t, r, m, payload, t0))
	answer(t, r, as[0], payload, t0)
	eff := r.RestartFetches()
	checkR(t, r)
	got := attempts(eff)
	if fmt.Sprint(chunksOf(got)) != "[1 2]" {
		t.Fatalf("restart asked for %v, want [1 2] (chunk 0 is held)", chunksOf(got))
	}
	if eff := r.FetchFailed(as[1].Token, t0); len(eff) != 0 {
		t.Fatalf("outcome of a forgotten attempt produced %s", kindsOf(eff))
	}
}

func TestFetchOfAPushedArtifactLearnsTheDigestFromItsManifest(t *testing.T) {
	// A push that arrives without a credit is fetched; pushes name no
	// digest, so the first manifest's digest is used (and its server
	// answers for it).
	r := newTestReceiver(t, func(c *ReceiverConfig) { fetchCfg(c); c.DeliveryCredits = 1 }, "p")
	apply(t, r, "p", 1, advert(1, 0, "x"))              // takes the one credit
	mustFetch(t, r, "x", "p")                           // delivered, the consumer holds the credit
	expect(t, apply(t, r, "p", 1, push(2, 1, "y")), "") // no credit: not held
	a := attempts(r.Consumed())[0]                      // y is fetched now
	if a.ID != "y" || a.Chunk != ManifestPart || a.Digest != (Digest{}) {
		t.Fatalf("fetch of a pushed artifact: %+v", a)
	}
	eff, err := r.FetchDone(a.Token, serve(a, small("y").Payload), time.Millisecond, t0)
	if err != nil {
		t.Fatal(err)
	}
	expect(t, eff, "deliver(y from p) ")
	checkR(t, r)
}

func TestFetchDigestWithoutAdvertisersStartsOver(t *testing.T) {
	// p's digest is being fetched when p stops advertising a; q advertises
	// a with another digest: the requests to p are cancelled and q's
	// digest is fetched from the start.
	one, two := bigPayload(12), bigPayload(13)
	r := newTestReceiver(t, fetchCfg, "p", "q")
	m := attempts(apply(t, r, "p", 1, advertOf(1, 0, "a", one)))[0]
	apply(t, r, "q", 1, advertOf(1, 0, "a", two))
	as := attempts(answer(t, r, m, one, t0))
	apply(t, r, "p", 1, clearedU(2, 0))
	eff := r.FetchFailed(as[0].Token, t0) // p, which no longer has it
	checkR(t, r)
	cancelled := only[CancelAttempt](eff)
	next := attempts(eff)
	if len(cancelled) != 1 || cancelled[0].Token != as[1].Token || len(next) != 1 || next[0].Peer != "q" || next[0].Chunk != ManifestPart {
		t.Fatalf("after p's digest lost its advertiser: %s", kindsOf(eff))
	}
	mustFetchPayload(t, r, "a", "q", two)
}

func TestFetchFirstPickDependsOnSeed(t *testing.T) {
	// Receivers with different seeds spread their first requests over the
	// advertisers; one seed always makes the same choices.
	first := func(seed uint64) PeerID {
		admit := Later
		r := newTestReceiver(t, func(c *ReceiverConfig) {
			c.Seed = seed
			c.Admit = func(ArtifactID, []byte) Decision { return admit }
		}, "p", "q", "s")
		apply(t, r, "p", 1, advert(1, 0, "a"))
		apply(t, r, "q", 1, advert(1, 0, "a"))
		apply(t, r, "s", 1, advert(1, 0, "a"))
		admit = Fetch
		return attempts(r.Reevaluate())[0].Peer
	}
	counts := map[PeerID]int{}
	for seed := range uint64(60) {
		p := first(seed)
		if p != first(seed) {
			t.Fatalf("seed %d chose differently", seed)
		}
		counts[p]++
	}
	for _, p := range []PeerID{"p", "q", "s"} {
		if counts[p] < 5 {
			t.Fatalf("first picks over 60 seeds %v: %s is almost never asked", counts, p)
		}
	}
}

func TestManifestDescribesAndChecksChunks(t *testing.T) {
	payload := bigPayload(14)
	m := Describe(payload, testChunk)
	if m.Chunks() != 6 || m.ChunkLen(5) != testChunk/2 || m.check(1<<20) != nil {
		t.Fatalf("manifest %d chunks, last %d: %v", m.Chunks(), m.ChunkLen(5), m.check(1<<20))
	}
	for i := range m.Chunks() {
		if !m.chunkOK(i, m.Chunk(payload, i)) {
			t.Fatalf("chunk %d does not check", i)
		}
	}
	if m.chunkOK(0, m.Chunk(payload, 1)) || m.chunkOK(5, payload[:10]) {
		t.Fatal("wrong chunk checks")
	}
	// The digest commits to the size and chunk size, not only the hashes.
	other := m
	other.Size--
	if other.Digest() == m.Digest() {
		t.Fatal("digest ignores the size")
	}
	if !slices.Equal(Describe(nil, testChunk).Hashes, nil) && len(Describe(nil, testChunk).Hashes) != 0 {
		t.Fatal("empty payload has chunks")
	}
}
