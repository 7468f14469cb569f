package broadcast

import (
	"bytes"
	"fmt"
	"slices"
	"time"
)

// The fetch policy: which advertiser each request goes to, what it asks
// for, how long it may take, and how long to leave a failing peer alone. It
// lives in the core so that the actors and the simulator run the same
// decisions; the caller only performs FetchAttempt effects and reports how
// each ended.
//
// A fetch first chooses the digest most advertisers advertised (see
// manifest.go), asks one advertiser of it for the manifest, then asks for
// the missing chunks, lowest first, from every advertiser of that digest at
// once: at most FetchWindow requests per peer and FetchParallel per fetch.
// What arrived is kept across failed requests, peers and pauses, so a
// transfer needs only as long as its bytes take, however often a request
// fails. A request's timeout follows the progress its peer has shown: the
// bytes queued to that peer over the rate it delivered recently, with a
// margin, never below FetchTimeoutMin nor above FetchTimeoutMax, and
// doubled after each consecutive failure of the peer. A peer that failed
// is left alone for a jittered backoff that grows with its consecutive
// failures (four failures' worth after wrong or undecodable bytes); the
// others carry on meanwhile, and when every advertiser is backing off the
// fetch waits for the first to be ready (RetryAt). A new advertiser is
// asked at once.

// FetchAttempt asks the caller to request part of ID from Peer, to give up
// after Timeout, and to report the outcome for Token with FetchDone,
// FetchFailed or FetchInvalid. Chunk is the chunk wanted, or ManifestPart
// for the manifest (with the whole payload when it is one chunk), of the
// artifact whose manifest has Digest. CancelFetch ends every attempt of ID,
// CancelAttempt one.
type FetchAttempt struct {
	ID      ArtifactID
	Peer    PeerID
	Token   Token
	Timeout time.Duration
	Digest  Digest
	Chunk   int
}

// ManifestPart is the FetchAttempt.Chunk of a manifest request.
const ManifestPart = -1

// Fetched is what a fetch attempt brought: for a manifest request the
// manifest (and, when the artifact is one chunk, that chunk in Data); for a
// chunk request the chunk in Data.
type Fetched struct {
	Manifest *Manifest
	Data     []byte
}

// CancelFetch stops every attempt of ID: no peer advertises it any more.
type CancelFetch struct{ ID ArtifactID }

// CancelAttempt stops one attempt whose answer is no longer wanted (the
// fetch moved to another digest).
type CancelAttempt struct {
	ID    ArtifactID
	Token Token
}

// Chunk states within a run.
const (
	chunkMissing uint8 = iota
	chunkAsked
	chunkHeld
)

// fetchRun is the state of one running fetch.
type fetchRun struct {
	digest Digest // the digest being fetched; meaningful when chosen
	chosen bool
	// learned is the peer whose manifest gave the digest, when the fetch
	// started from pushed entries, which carry none (the zero digest).
	learned PeerID
	stalled bool      // no digest worth fetching: waits for a new advert
	man     *Manifest // verified; nil until fetched
	chunks  [][]byte
	state   []uint8
	missing int
	held    int // bytes held
	reqs    map[Token]fetchReq
	peers   []runPeer // every peer this run asked or blamed
	bad     []Digest  // digests proven false for this id
	next    int       // rotation start for picking peers
	from    PeerID    // the peer whose answer came last: the delivery's From
	// progress is when the digest was chosen or last brought something.
	progress time.Time
	pause    time.Time // when a backing-off peer is ready again (zero: none)
	// supplier is the peer whose manifest the run follows, and reserved
	// the bytes of its MaxFetchBytesPerPeer the run holds (the manifest's
	// size, from when the manifest was kept). need is the size of a
	// manifest the run could not keep for lack of room: until one is kept,
	// the manifest is asked only of peers with that much room, and
	// budgetWait says none has it.
	supplier   PeerID
	reserved   int
	need       int
	budgetWait bool
}

type fetchReq struct {
	peer  PeerID
	chunk int
	size  int // expected bytes, for the peer's rate and timeouts
}

// runPeer is what a run knows of one peer.
type runPeer struct {
	id       PeerID
	fails    int       // consecutive failures
	until    time.Time // backing off until then
	inflight int
	blamed   bool // advertised a digest proven false
}

func (f *fetchRun) peer(p PeerID) *runPeer {
	for i := range f.peers {
		if f.peers[i].id == p {
			return &f.peers[i]
		}
	}
	f.peers = append(f.peers, runPeer{id: p})
	return &f.peers[len(f.peers)-1]
}

// startRun begins the policy for a fetch that just entered phaseFetching.
func (r *Receiver) startRun(id ArtifactID, st *idState, eff []Effect) []Effect {
	st.run = &fetchRun{reqs: make(map[Token]fetchReq), next: r.intN(len(st.peerList()))}
	return r.advance(id, st, eff)
}

// digestAdvertisers returns, per digest advertised for id, the distinct
// peers advertising it.
func (r *Receiver) digestAdvertisers(id ArtifactID, st *idState) map[Digest][]PeerID {
	out := make(map[Digest][]PeerID)
	st.adv.each(func(k advKey) {
		d := r.pairDigest(id, k)
		if !slices.Contains(out[d], k.peer) {
			out[d] = append(out[d], k.peer)
		}
	})
	for _, ps := range out {
		sortPeers(ps)
	}
	return out
}

// pairDigest is the digest the pair advertises for id: its current entry,
// or its entry kept from an older connection.
func (r *Receiver) pairDigest(id ArtifactID, k advKey) Digest {
	p := r.peers[k.peer]
	if e, ok := p.slots[k.slot]; ok && e.filled && e.id == id {
		return e.digest
	}
	return p.legacy[id].digest
}

// choose picks the digest to fetch and returns its usable peers (those not
// blamed for this id). It prefers, in order: a digest with a peer ready to
// be asked over one whose peers all back off; one named by adverts over
// none (pushed entries name no digest: the zero one, whose manifest's own
// digest is learned from its answer); the most peers; the smallest digest.
func (r *Receiver) choose(id ArtifactID, st *idState) (Digest, []PeerID, bool) {
	f := st.run
	var best Digest
	var bestPeers []PeerID
	var bestRank [3]int
	for d, peers := range r.digestAdvertisers(id, st) {
		if slices.Contains(f.bad, d) {
			continue
		}
		usable := peers[:0:0]
		for _, p := range peers {
			if !f.peer(p).blamed {
				usable = append(usable, p)
			}
		}
		if len(usable) == 0 {
			continue
		}
		rank := [3]int{b2i(r.anyReady(f, usable)), b2i(d != Digest{}), len(usable)}
		c := slices.Compare(rank[:], bestRank[:])
		if bestPeers == nil || c > 0 || (c == 0 && bytes.Compare(d[:], best[:]) < 0) {
			best, bestPeers, bestRank = d, usable, rank
		}
	}
	return best, bestPeers, len(bestPeers) > 0
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// anyReady reports whether one of peers is not backing off in run f.
func (r *Receiver) anyReady(f *fetchRun, peers []PeerID) bool {
	for _, p := range peers {
		if !f.peer(p).until.After(r.now) {
			return true
		}
	}
	return false
}

// advance makes the requests a running fetch can make now, completes it
// when every chunk is held, and sets its pause.
func (r *Receiver) advance(id ArtifactID, st *idState, eff []Effect) []Effect {
	f := st.run
	var peers []PeerID
	if f.chosen {
		peers = r.usablePeers(id, st)
		// Leave the digest when nobody is left to serve it (its
		// advertisers left or were proven to lie), or when all who could
		// back off while another digest has a peer ready, provided this
		// one holds nothing or has made no progress for FetchTimeoutMax:
		// a peer that serves its own digest for a while and then stalls
		// cannot hold the fetch forever.
		// A fetch waiting for a supplier with room holds nothing and is
		// as stuck as one whose peers all back off.
		stuck := len(peers) > 0 && (!r.anyReady(f, peers) || f.budgetWait) && (f.held == 0 || r.now.Sub(f.progress) > r.cfg.FetchTimeoutMax)
		if len(peers) == 0 {
			eff = r.resetRun(id, st, eff)
		} else if stuck {
			if d, usable, ok := r.choose(id, st); ok && d != f.digest && r.anyReady(f, usable) {
				eff = r.resetRun(id, st, eff)
			}
		}
	}
	if !f.chosen {
		d, usable, ok := r.choose(id, st)
		if !ok {
			f.stalled = true
			r.setPause(id, f, time.Time{})
			return eff
		}
		f.chosen, f.digest, f.progress, peers = true, d, r.now, usable
	}
	f.stalled = false
	if f.man != nil && f.missing == 0 {
		return r.complete(id, st, eff)
	}
	peers = r.withRoom(id, f, peers)
	var ready time.Time // earliest end of a backoff that keeps a peer idle
	for len(f.reqs) < r.cfg.FetchParallel {
		chunk, size := r.nextPart(f)
		if chunk == -2 {
			break // nothing left to ask for
		}
		p, wait := r.pickPeer(f, peers)
		if p == "" {
			ready = wait
			break
		}
		eff = r.request(id, st, p, chunk, size, eff)
	}
	r.setPause(id, f, ready)
	return eff
}

// withRoom returns, while the run needs a manifest it could not keep
// before, the peers whose MaxFetchBytesPerPeer has room for it, and records
// whether the run must wait for one; otherwise peers unchanged.
func (r *Receiver) withRoom(id ArtifactID, f *fetchRun, peers []PeerID) []PeerID {
	wait := false
	if f.man == nil && f.need > 0 {
		var room []PeerID
		for _, p := range peers {
			if r.assembly[p]+f.need <= r.cfg.MaxFetchBytesPerPeer {
				room = append(room, p)
			}
		}
		wait = len(room) == 0 && len(peers) > 0
		peers = room
	}
	f.budgetWait = wait
	if wait {
		r.budgetWaiting[id] = struct{}{}
	} else {
		delete(r.budgetWaiting, id)
	}
	return peers
}

// reserve charges a kept manifest's artifact to its supplier, or reports
// false when the supplier's MaxFetchBytesPerPeer has no room for it.
func (r *Receiver) reserve(f *fetchRun, supplier PeerID, size int) bool {
	if r.assembly[supplier]+size > r.cfg.MaxFetchBytesPerPeer {
		return false
	}
	if size > 0 {
		r.assembly[supplier] += size
	}
	f.supplier, f.reserved, f.need = supplier, size, 0
	return true
}

// unreserve gives a run's reservation back; the fetches waiting for room
// are resumed by the next resumeBudgetWaiters.
func (r *Receiver) unreserve(f *fetchRun) {
	if f.reserved > 0 {
		if r.assembly[f.supplier] -= f.reserved; r.assembly[f.supplier] == 0 {
			delete(r.assembly, f.supplier)
		}
		r.budgetFreed = true
	}
	f.supplier, f.reserved = "", 0
}

// resumeBudgetWaiters advances the fetches waiting for a supplier with
// room, once a reservation was given back.
func (r *Receiver) resumeBudgetWaiters(eff []Effect) []Effect {
	if !r.budgetFreed {
		return eff
	}
	r.budgetFreed = false
	for _, id := range sortedKeys(r.budgetWaiting) {
		if st, ok := r.ids[id]; ok && st.run != nil && st.run.budgetWait {
			eff = r.announceRun(st, r.advance(id, st, eff))
		}
	}
	return eff
}

// FetchBytesHeld returns the payload bytes reserved by running fetches
// that follow manifests peer served (what MaxFetchBytesPerPeer bounds).
func (r *Receiver) FetchBytesHeld(peer PeerID) int { return r.assembly[peer] }

// usablePeers returns the non-blamed advertisers of the digest being
// fetched (with those that name none, when it was learned or is unknown).
func (r *Receiver) usablePeers(id ArtifactID, st *idState) []PeerID {
	f := st.run
	adv := r.digestAdvertisers(id, st)
	peers := adv[f.digest]
	if f.learned != "" {
		peers = append(slices.Clone(peers), adv[Digest{}]...)
		sortPeers(peers)
		peers = slices.Compact(peers)
	}
	var out []PeerID
	for _, p := range peers {
		if !f.peer(p).blamed {
			out = append(out, p)
		}
	}
	return out
}

// nextPart returns the next part to ask for: the manifest while it is not
// held (once at a time), else the lowest missing chunk nobody is asked for;
// -2 when there is none.
func (r *Receiver) nextPart(f *fetchRun) (chunk, size int) {
	if f.man == nil {
		for _, q := range f.reqs {
			if q.chunk == ManifestPart {
				return -2, 0
			}
		}
		return ManifestPart, manifestGuess
	}
	for i, s := range f.state {
		if s == chunkMissing {
			return i, f.man.ChunkLen(i)
		}
	}
	return -2, 0
}

// manifestGuess is the size assumed for a manifest response when timing
// it: a manifest of the largest artifact with default chunks is 16 KiB.
const manifestGuess = 16 << 10

// pickPeer returns the next peer in rotation that is not backing off and
// has room in its window; if none, the earliest time one is ready.
func (r *Receiver) pickPeer(f *fetchRun, peers []PeerID) (PeerID, time.Time) {
	var ready time.Time
	best := -1
	for i := range peers {
		k := (f.next + i) % len(peers)
		rp := f.peer(peers[k])
		if rp.until.After(r.now) {
			ready = earliest(ready, rp.until)
			continue
		}
		if rp.inflight >= r.cfg.FetchWindow {
			continue
		}
		if best < 0 || rp.inflight < f.peer(peers[best]).inflight {
			best = k
		}
	}
	if best < 0 {
		return "", ready
	}
	f.next = (best + 1) % len(peers)
	return peers[best], time.Time{}
}

// request emits one attempt of a running fetch.
func (r *Receiver) request(id ArtifactID, st *idState, p PeerID, chunk, size int, eff []Effect) []Effect {
	f := st.run
	rp := f.peer(p)
	px := r.peers[p]
	r.nextToken++
	tok := r.nextToken
	f.reqs[tok] = fetchReq{peer: p, chunk: chunk, size: size}
	if chunk >= 0 {
		f.state[chunk] = chunkAsked
	}
	rp.inflight++
	px.inflight++
	px.inflightBytes += int64(size)
	r.attempts[tok] = id
	r.stats.FetchAttempts++
	// The bytes queued to the peer at the rate it showed, with a margin
	// of four, on top of the minimum; doubled per consecutive failure.
	timeout := r.cfg.FetchTimeoutMin
	if px.rate > 0 {
		timeout += time.Duration(4 * px.inflightBytes * int64(time.Second) / px.rate)
	}
	for range min(rp.fails, 16) {
		if timeout >= r.cfg.FetchTimeoutMax {
			break
		}
		timeout *= 2
	}
	timeout = min(timeout, r.cfg.FetchTimeoutMax)
	return append(eff, FetchAttempt{ID: id, Peer: p, Token: tok, Timeout: timeout, Digest: f.digest, Chunk: chunk})
}

// setPause records when a run wants Tick: the earliest end of a backoff
// that keeps work waiting, or nothing.
func (r *Receiver) setPause(id ArtifactID, f *fetchRun, at time.Time) {
	f.pause = at
	if at.IsZero() {
		delete(r.pausing, id)
		return
	}
	r.pausing[id] = struct{}{}
}

// resetRun drops what a run fetched under its digest (cancelling requests
// still running for it), keeping what it knows of peers.
func (r *Receiver) resetRun(id ArtifactID, st *idState, eff []Effect) []Effect {
	f := st.run
	for _, tok := range sortedKeys(f.reqs) {
		r.endRequest(f, tok)
		delete(r.attempts, tok)
		eff = append(eff, CancelAttempt{ID: id, Token: tok})
	}
	r.unreserve(f)
	f.chosen, f.learned, f.man, f.chunks, f.state, f.missing, f.held = false, "", nil, nil, nil, 0, 0
	f.need, f.budgetWait = 0, false
	delete(r.budgetWaiting, id)
	return eff
}

// endRequest forgets request tok of run f.
func (r *Receiver) endRequest(f *fetchRun, tok Token) fetchReq {
	q := f.reqs[tok]
	delete(f.reqs, tok)
	f.peer(q.peer).inflight--
	if px, ok := r.peers[q.peer]; ok {
		px.inflight--
		px.inflightBytes -= int64(q.size)
	}
	if q.chunk >= 0 && f.state != nil && f.state[q.chunk] == chunkAsked {
		f.state[q.chunk] = chunkMissing
	}
	return q
}

// complete assembles the artifact once every chunk is held and verifies it:
// delivered, or the digest is proven false.
func (r *Receiver) complete(id ArtifactID, st *idState, eff []Effect) []Effect {
	f := st.run
	// A one-chunk artifact is delivered in the bytes it arrived in (the
	// wire decoder hands over the transport's buffer); only several chunks
	// need assembling.
	var payload []byte
	if len(f.chunks) == 1 {
		payload = f.chunks[0]
	} else {
		payload = make([]byte, 0, f.man.Size)
		for _, c := range f.chunks {
			payload = append(payload, c...)
		}
	}
	if len(payload) == 0 {
		payload = nil
	}
	a := Artifact{ID: id, Attribute: st.attr, Payload: payload}
	if err := r.verify(id, a); err != nil {
		r.falseDigest(id, st, err)
		eff = r.resetRun(id, st, eff)
		return r.advance(id, st, eff)
	}
	from := f.from
	r.endFetch(id, st)
	st.phase = phaseDelivered
	r.waiting++
	r.stats.Delivered++
	r.stats.FetchedBytes += uint64(len(payload))
	return r.pump(append(eff, Deliver{Artifact: a, From: from}))
}

// falseDigest marks the digest being fetched as false for id and blames
// every peer that advertised it (or served it, when it was learned).
func (r *Receiver) falseDigest(id ArtifactID, st *idState, cause error) {
	f := st.run
	f.bad = append(f.bad, f.digest)
	blame := r.digestAdvertisers(id, st)[f.digest]
	if f.learned != "" {
		blame = append(slices.Clone(blame), f.learned)
	}
	for _, p := range blame {
		if rp := f.peer(p); !rp.blamed {
			rp.blamed = true
			if px, ok := r.peers[p]; ok {
				px.stats.Mismatch++
			}
		}
	}
	r.stats.FalseDigests++
	r.lastFalse = fmt.Errorf("digest %v of %x: %w", f.digest, []byte(id), cause)
}

// backOff makes peer p of run f wait before it is asked again: a jittered
// pause that doubles with its consecutive failures.
func (r *Receiver) backOff(f *fetchRun, p PeerID, fails int) {
	rp := f.peer(p)
	rp.fails += fails
	d := r.cfg.FetchBackoffMax
	if rp.fails < 32 {
		d = min(r.cfg.FetchBackoffMin<<min(rp.fails-1, 16), r.cfg.FetchBackoffMax)
	}
	d = d/2 + time.Duration(r.uint64()%uint64(d/2+1))
	rp.until = r.now.Add(d)
}

// announce returns a RetryAt for at when it is earlier than what the caller
// was last told (see RetryAt for the contract).
func (r *Receiver) announce(at time.Time, eff []Effect) []Effect {
	if r.announced.IsZero() || at.Before(r.announced) {
		r.announced = at
		eff = append(eff, RetryAt{At: at})
	}
	return eff
}

// announceRun announces a run's pause.
func (r *Receiver) announceRun(st *idState, eff []Effect) []Effect {
	if st != nil && st.run != nil && !st.run.pause.IsZero() {
		return r.announce(st.run.pause, eff)
	}
	return eff
}

// attemptOf resolves a reported token; ok is false for a token that is not
// a running attempt (cancelled, restarted, repeated).
func (r *Receiver) attemptOf(tok Token, now time.Time) (ArtifactID, *idState, fetchReq, bool) {
	if now.After(r.now) {
		r.now = now
	}
	id, ok := r.attempts[tok]
	if !ok {
		r.stats.LateFetchResults++
		return "", nil, fetchReq{}, false
	}
	delete(r.attempts, tok)
	st := r.ids[id]
	return id, st, r.endRequest(st.run, tok), true
}

// FetchDone reports what an attempt brought; elapsed is how long it took.
// A token that is not a running attempt is ignored (counted as
// LateFetchResults). A manifest or chunk that does not match is counted
// against the peer that served it (Mismatch) and returns an error wrapping
// ErrMismatch; the fetch goes on (the effects say with whom, or when). An
// artifact that fails verification once assembled returns an error
// wrapping ErrMismatch too, blames every peer that advertised its digest,
// and the fetch goes on with another digest if there is one.
func (r *Receiver) FetchDone(tok Token, got Fetched, elapsed time.Duration, now time.Time) ([]Effect, error) {
	id, st, q, ok := r.attemptOf(tok, now)
	if !ok {
		return nil, nil
	}
	f := st.run
	r.lastFalse = nil
	var err error
	if q.chunk == ManifestPart {
		err = r.tookManifest(id, st, q.peer, got)
	} else {
		err = r.tookChunk(f, q.chunk, got.Data)
	}
	if err != nil {
		r.peers[q.peer].stats.Mismatch++
		r.backOff(f, q.peer, 4)
		eff := r.advance(id, st, nil)
		eff = r.resumeBudgetWaiters(r.announceRun(r.ids[id], eff))
		return eff, fmt.Errorf("fetch of %x from %s: %w: %w", []byte(id), q.peer, ErrMismatch, err)
	}
	f.peer(q.peer).fails = 0
	f.from, f.progress = q.peer, r.now
	r.sampleRate(q, elapsed)
	eff := r.advance(id, st, nil)
	eff = r.resumeBudgetWaiters(r.announceRun(r.ids[id], eff))
	if err := r.lastFalse; err != nil {
		return eff, fmt.Errorf("%w: %w", ErrMismatch, err)
	}
	return eff, nil
}

// tookManifest keeps a manifest that names the digest being fetched, and
// the payload that came with it when it is one chunk.
func (r *Receiver) tookManifest(id ArtifactID, st *idState, from PeerID, got Fetched) error {
	f := st.run
	m := got.Manifest
	switch {
	case m == nil:
		return fmt.Errorf("answer without a manifest")
	case f.digest == Digest{} && !slices.Contains(f.bad, m.Digest()):
		// Pushed entries name no digest: the first manifest sets it, and
		// its server answers for it.
		f.digest, f.learned = m.Digest(), from
	case m.Digest() != f.digest:
		return fmt.Errorf("manifest does not hash to digest %v", f.digest)
	}
	if err := m.check(r.cfg.MaxFetchSize); err != nil {
		// The digest names an impossible manifest: its advertisers lied.
		r.falseDigest(id, st, err)
		return nil
	}
	if !r.reserve(f, from, m.Size) {
		// Not the peer's fault: its manifests already hold what we allow
		// it. The manifest is asked again, of a peer with room, later.
		f.need = m.Size
		r.stats.FetchBudgetWaits++
		return nil
	}
	n := m.Chunks()
	f.man = &Manifest{Size: m.Size, ChunkSize: m.ChunkSize, Hashes: slices.Clone(m.Hashes)}
	f.chunks, f.state, f.missing = make([][]byte, n), make([]uint8, n), n
	if got.Data != nil || n == 1 {
		if n != 1 {
			return fmt.Errorf("payload with the manifest of %d chunks", n)
		}
		return r.tookChunk(f, 0, got.Data)
	}
	return nil
}

// tookChunk keeps chunk i if it matches the manifest.
func (r *Receiver) tookChunk(f *fetchRun, i int, data []byte) error {
	switch {
	case f.man == nil || i >= len(f.state):
		return fmt.Errorf("chunk %d without its manifest", i) // cannot happen: requests follow the manifest
	case !f.man.chunkOK(i, data):
		return fmt.Errorf("chunk %d (%d bytes) does not match the manifest", i, len(data))
	case f.state[i] == chunkHeld:
		return nil // asked twice after a restart; already held
	}
	f.chunks[i], f.state[i] = data, chunkHeld
	f.missing--
	f.held += len(data)
	return nil
}

// sampleRate updates the peer's delivery rate from a request that brought
// q.size bytes in elapsed, shared with the peer's other requests.
func (r *Receiver) sampleRate(q fetchReq, elapsed time.Duration) {
	px, ok := r.peers[q.peer]
	if !ok || elapsed <= 0 {
		return
	}
	sample := int64(q.size) * int64(1+px.inflight) * int64(time.Second) / int64(elapsed)
	if px.rate == 0 {
		px.rate = max(sample, 1)
	} else {
		px.rate = max((3*px.rate+sample)/4, 1)
	}
}

// FetchFailed reports an attempt that brought nothing: no answer within its
// timeout, a transport error, or "not found". It counts as a fetch failure
// of the peer, which backs off.
func (r *Receiver) FetchFailed(tok Token, now time.Time) []Effect {
	return r.attemptFailed(tok, now, 1, func(s *PeerStats) { s.FetchFailures++ })
}

// FetchInvalid reports an attempt whose response did not decode: the peer
// sent bytes no honest peer sends, so it is counted as a bad response and
// backs off as long as one that served wrong bytes.
func (r *Receiver) FetchInvalid(tok Token, now time.Time) []Effect {
	return r.attemptFailed(tok, now, 4, func(s *PeerStats) { s.BadResponses++ })
}

func (r *Receiver) attemptFailed(tok Token, now time.Time, fails int, count func(*PeerStats)) []Effect {
	id, st, q, ok := r.attemptOf(tok, now)
	if !ok {
		return nil
	}
	if p, ok := r.peers[q.peer]; ok {
		count(&p.stats)
	}
	r.backOff(st.run, q.peer, fails)
	return r.resumeBudgetWaiters(r.announceRun(st, r.advance(id, st, nil)))
}

// Tick resumes the fetches whose waiting peers are ready and announces the
// earliest pause still running.
func (r *Receiver) Tick(now time.Time) []Effect {
	if now.After(r.now) {
		r.now = now
	}
	r.announced = time.Time{}
	var eff []Effect
	for _, id := range sortedKeys(r.pausing) {
		if st := r.ids[id]; st != nil && st.run != nil && !now.Before(st.run.pause) {
			eff = r.advance(id, st, eff)
		}
	}
	return r.announceAll(r.resumeBudgetWaiters(eff))
}

// announceAll announces the earliest pause of any run.
func (r *Receiver) announceAll(eff []Effect) []Effect {
	var next time.Time
	for id := range r.pausing {
		next = earliest(next, r.ids[id].run.pause)
	}
	if !next.IsZero() {
		eff = r.announce(next, eff)
	}
	return eff
}

// earliest returns the earlier of next (zero: none yet) and t.
func earliest(next, t time.Time) time.Time {
	if next.IsZero() || t.Before(next) {
		return t
	}
	return next
}

// RestartFetches is for a caller that lost its running attempts (the actor
// that ran them restarted, say): every attempt in flight is forgotten and
// made again, and the earliest pause is announced again. Fetches keep what
// they hold, their charges and their credits.
func (r *Receiver) RestartFetches() []Effect {
	r.announced = time.Time{}
	var eff []Effect
	for _, id := range sortedIDs(r.ids) {
		st := r.ids[id]
		if st.phase != phaseFetching {
			continue
		}
		for _, tok := range sortedKeys(st.run.reqs) {
			r.endRequest(st.run, tok)
			delete(r.attempts, tok)
		}
		eff = r.advance(id, st, eff)
	}
	return r.announceAll(r.resumeBudgetWaiters(eff))
}

// advertiserJoined is called when a pair starts advertising a fetching id:
// its peer may be asked at once, or its digest may be the better one.
func (r *Receiver) advertiserJoined(id ArtifactID, st *idState, eff []Effect) []Effect {
	return r.announceRun(st, r.advance(id, st, eff))
}

// endRun forgets a fetch's state and its attempts in flight (the caller
// cancels them on CancelFetch, or they have ended).
func (r *Receiver) endRun(id ArtifactID, st *idState) {
	for tok := range st.run.reqs {
		r.endRequest(st.run, tok)
		delete(r.attempts, tok)
	}
	delete(r.pausing, id)
	delete(r.budgetWaiting, id)
	r.unreserve(st.run)
	st.run = nil
}

// checkRuns verifies the fetch bookkeeping against the phases.
func (r *Receiver) checkRuns() error {
	running := 0
	perPeer := make(map[PeerID]int)
	perPeerBytes := make(map[PeerID]int64)
	for id, st := range r.ids {
		if st.phase != phaseFetching {
			if st.run != nil {
				return fmt.Errorf("id %x is not fetching but has fetch state", []byte(id))
			}
			continue
		}
		f := st.run
		if f == nil {
			return fmt.Errorf("fetch of %x has no fetch state", []byte(id))
		}
		if err := r.checkRun(id, f); err != nil {
			return err
		}
		running += len(f.reqs)
		for _, q := range f.reqs {
			perPeer[q.peer]++
			perPeerBytes[q.peer] += int64(q.size)
		}
	}
	if running != len(r.attempts) {
		return fmt.Errorf("%d attempts indexed, %d running", len(r.attempts), running)
	}
	for id := range r.pausing {
		if st, ok := r.ids[id]; !ok || st.phase != phaseFetching || st.run.pause.IsZero() {
			return fmt.Errorf("pausing fetch of %x is not fetching or has no pause", []byte(id))
		}
	}
	if err := r.checkBudgets(); err != nil {
		return err
	}
	for pid, p := range r.peers {
		if p.inflight != perPeer[pid] || p.inflightBytes != perPeerBytes[pid] {
			return fmt.Errorf("peer %s: %d requests of %d bytes counted, %d of %d running", pid, p.inflight, p.inflightBytes, perPeer[pid], perPeerBytes[pid])
		}
	}
	return nil
}

func (r *Receiver) checkRun(id ArtifactID, f *fetchRun) error {
	_, paused := r.pausing[id]
	switch {
	case paused != !f.pause.IsZero():
		return fmt.Errorf("fetch of %x: pause %v but pausing %v", []byte(id), f.pause, paused)
	case len(f.reqs) == 0 && !paused && !f.stalled && !f.budgetWait:
		return fmt.Errorf("fetch of %x has neither an attempt, nor a pause, nor a reason to wait", []byte(id))
	case len(f.reqs) > r.cfg.FetchParallel:
		return fmt.Errorf("fetch of %x has %d requests, above %d", []byte(id), len(f.reqs), r.cfg.FetchParallel)
	case f.held > r.cfg.MaxFetchSize:
		return fmt.Errorf("fetch of %x holds %d bytes, above %d", []byte(id), f.held, r.cfg.MaxFetchSize)
	}
	inflight := make(map[PeerID]int)
	asked := make(map[int]int)
	for tok, q := range f.reqs {
		if r.attempts[tok] != id {
			return fmt.Errorf("fetch of %x: attempt %d not indexed", []byte(id), tok)
		}
		inflight[q.peer]++
		if q.chunk != ManifestPart {
			asked[q.chunk]++
		}
	}
	for _, rp := range f.peers {
		if rp.inflight != inflight[rp.id] || rp.inflight > r.cfg.FetchWindow {
			return fmt.Errorf("fetch of %x: peer %s has %d requests counted, %d running (window %d)", []byte(id), rp.id, rp.inflight, inflight[rp.id], r.cfg.FetchWindow)
		}
	}
	if f.man == nil {
		if f.chunks != nil || f.held != 0 || len(asked) > 0 {
			return fmt.Errorf("fetch of %x holds or asks for chunks without a manifest", []byte(id))
		}
		return nil
	}
	missing, held := 0, 0
	for i, s := range f.state {
		switch {
		case s == chunkHeld && !f.man.chunkOK(i, f.chunks[i]):
			return fmt.Errorf("fetch of %x holds chunk %d that does not match its manifest", []byte(id), i)
		case s != chunkHeld && f.chunks[i] != nil:
			return fmt.Errorf("fetch of %x keeps data of chunk %d it does not hold", []byte(id), i)
		case (s == chunkAsked) != (asked[i] > 0):
			return fmt.Errorf("fetch of %x: chunk %d state %d, %d requests", []byte(id), i, s, asked[i])
		}
		if s == chunkHeld {
			held += len(f.chunks[i])
		} else {
			missing++
		}
	}
	if missing != f.missing || held != f.held {
		return fmt.Errorf("fetch of %x: %d missing and %d bytes counted, %d and %d held", []byte(id), f.missing, f.held, missing, held)
	}
	return nil
}

// checkBudgets verifies the MaxFetchBytesPerPeer reservations: each peer's
// total is what its runs reserved and within the bound; a run holds a
// reservation exactly while it keeps a manifest, of that manifest's size,
// and holds no more chunk bytes than that; a run waits for room only
// without a manifest and without requests, and is listed as waiting.
func (r *Receiver) checkBudgets() error {
	reserved := make(map[PeerID]int)
	waiting := 0
	for id, st := range r.ids {
		f := st.run
		if f == nil {
			continue
		}
		switch {
		case f.man != nil && (f.supplier == "" || f.reserved != f.man.Size):
			return fmt.Errorf("fetch of %x keeps a manifest of %d bytes with %d reserved from %q", []byte(id), f.man.Size, f.reserved, f.supplier)
		case f.man == nil && (f.reserved != 0 || f.supplier != ""):
			return fmt.Errorf("fetch of %x reserves %d bytes from %q without a manifest", []byte(id), f.reserved, f.supplier)
		case f.held > f.reserved:
			return fmt.Errorf("fetch of %x holds %d bytes, %d reserved", []byte(id), f.held, f.reserved)
		case f.budgetWait && (f.man != nil || f.need == 0 || len(f.reqs) > 0):
			return fmt.Errorf("fetch of %x waits for room with a manifest, no need or requests running", []byte(id))
		}
		if _, listed := r.budgetWaiting[id]; listed != f.budgetWait {
			return fmt.Errorf("fetch of %x waits for room %v, listed %v", []byte(id), f.budgetWait, listed)
		}
		if f.budgetWait {
			waiting++
		}
		reserved[f.supplier] += f.reserved
	}
	if waiting != len(r.budgetWaiting) {
		return fmt.Errorf("%d fetches wait for room, %d listed", waiting, len(r.budgetWaiting))
	}
	for p, n := range r.assembly {
		if n <= 0 || n != reserved[p] || n > r.cfg.MaxFetchBytesPerPeer {
			return fmt.Errorf("peer %s: %d bytes reserved counted, %d by its fetches, bound %d", p, n, reserved[p], r.cfg.MaxFetchBytesPerPeer)
		}
	}
	for p, n := range reserved {
		if n > 0 && r.assembly[p] != n {
			return fmt.Errorf("peer %s: fetches reserve %d bytes, %d counted", p, n, r.assembly[p])
		}
	}
	return nil
}

// splitmix64: the receiver's random numbers come from a generator seeded
// by ReceiverConfig.Seed, never from global state, so runs replay exactly.
func (r *Receiver) uint64() uint64 {
	r.rng += 0x9e3779b97f4a7c15
	z := r.rng
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

func (r *Receiver) intN(n int) int {
	if n <= 0 {
		return 0
	}
	return int(r.uint64() % uint64(n))
}
