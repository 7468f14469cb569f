package broadcast

import (
	"fmt"
	"slices"
	"time"
)

// ReceiverConfig bounds one channel's receiver.
type ReceiverConfig struct {
	// SlotLimit is the most slot entries kept per peer (cleared slots whose
	// order still matters included). An update for a new slot beyond it is
	// refused with ErrSlotLimit. Memory per peer is at most about
	// SlotLimit × (MaxIDLen + MaxAttributeLen + 330 bytes): measured 1,428
	// bytes per entry with 128-byte ids and 1 KiB attributes before adverts
	// carried a 32-byte digest, so a peer flooding the default limit costs
	// about 70 MiB. Default 50,000.
	SlotLimit int
	// MaxIDLen and MaxAttributeLen bound what one advert may store.
	// Defaults 128 and 1024 bytes.
	MaxIDLen        int
	MaxAttributeLen int
	// MaxPushSize is the largest encoded artifact accepted as a push.
	// Honest senders advertise anything larger (SenderConfig.MaxPushSize),
	// so a larger push is refused as invalid and counted against the
	// peer: pushes arrive unasked, and the bound keeps what a peer makes us
	// hold per update small. Bytes; default 1 MiB.
	MaxPushSize int
	// MaxActiveFetches is the most downloads running at once, except that
	// a peer with no download charged to it may always start one (so a few
	// peers advertising ids they never serve cannot starve the rest): the
	// hard bound is MaxActiveFetches plus the number of peers. Default 32.
	MaxActiveFetches int
	// MaxFetchesPerPeer is the most running downloads charged to one
	// advertising peer. Queued ids are started round-robin over the peers
	// that advertise them, so a peer that advertises ids it never serves
	// ties up at most this many downloads and cannot starve the others.
	// Default 8.
	MaxFetchesPerPeer int
	// DeliveryCredits bounds the artifacts delivered and not yet Consumed
	// by the downstream layer. A fetch starts only while fewer than this
	// many deliveries wait, and while deliveries and fetches together stay
	// below it (except a peer's first download, as above); a push is
	// handed over directly while fewer than this many deliveries wait,
	// whatever runs (its bytes are already here), and is fetched later
	// otherwise. A slow consumer therefore pauses fetching instead of
	// growing a queue, and the deliveries waiting never exceed
	// DeliveryCredits + MaxActiveFetches + the number of peers. The bound
	// does not depend on the subnet's size for pushes: at any N, small
	// artifacts are delivered from their push while the consumer keeps up.
	// Default 64.
	DeliveryCredits int
	// MaxFetchSize is the largest artifact a fetch may assemble: a
	// manifest describing more proves its digest false. It bounds the
	// chunks one fetch holds (at most MaxActiveFetches plus one per peer
	// run at once). Bytes; default 128 MiB (the wire's payload limit).
	MaxFetchSize int
	// MaxFetchBytesPerPeer bounds the payload bytes that running fetches
	// may hold under the manifests one peer served: a fetch reserves its
	// artifact's size against the peer whose manifest it follows when that
	// manifest arrives, and gives it back when it delivers, starts over or
	// ends. A manifest that does not fit is not kept (counted as
	// FetchBudgetWaits): the fetch asks another advertiser of its digest
	// with room, or waits until one has room, with no timer and no blame.
	// Without it, a peer that serves every chunk but the last of the
	// artifacts it advertises makes us hold MaxFetchesPerPeer ×
	// MaxFetchSize per channel (1 GiB with the defaults) for as long as it
	// advertises them. The chunks come from any advertiser of the digest,
	// but they are the supplier's bytes: each matches a hash its manifest
	// named. Must be at least MaxFetchSize, so that any artifact can be
	// assembled. Bytes; default 128 MiB: one artifact of the largest size,
	// or several smaller ones, assemble at once per supplier; a single
	// fetch moves chunks in parallel, so an honest publisher's link stays
	// busy.
	MaxFetchBytesPerPeer int
	// FetchWindow is the most requests of one fetch in flight to one peer
	// (two keep a link busy while an answer is on its way back), and
	// FetchParallel the most in flight for one fetch, spread over the
	// advertisers of its digest. Defaults 2 and 8.
	FetchWindow, FetchParallel int
	// FetchTimeoutMin and FetchTimeoutMax bound one request's timeout,
	// which otherwise follows the rate the peer delivered at recently
	// (four times the bytes queued to it over that rate, on top of the
	// minimum) and doubles with the peer's consecutive failures. A fetch
	// progresses from a peer that moves at least one chunk within
	// FetchTimeoutMax (256 KiB in 120 s by default: 2 KiB/s). Defaults 5 s
	// and 120 s.
	FetchTimeoutMin, FetchTimeoutMax time.Duration
	// FetchBackoffMin and FetchBackoffMax bound the jittered pause before
	// a peer that failed a request is asked again; it doubles with the
	// peer's consecutive failures (a wrong or undecodable answer counts
	// four). Defaults 100 ms and 5 s.
	FetchBackoffMin, FetchBackoffMax time.Duration
	// Seed seeds the receiver's random choices (the first advertiser a fetch
	// asks, backoff jitter). The core draws from no other source, so a seed
	// replays exactly; give every node its own (the actors draw one per
	// channel) so that nodes do not ask the same peers and retry in step.
	Seed uint64
	// Admit decides per new advert; nil means AdmitAll.
	Admit AdmissionFunc
	// Verify checks an artifact before delivery; nil checks only the id.
	Verify VerifyFunc
}

// DefaultReceiverConfig returns the documented defaults.
func DefaultReceiverConfig() ReceiverConfig {
	return ReceiverConfig{
		SlotLimit:            50_000,
		MaxIDLen:             128,
		MaxAttributeLen:      1024,
		MaxPushSize:          1 << 20,
		MaxActiveFetches:     32,
		MaxFetchesPerPeer:    8,
		DeliveryCredits:      64,
		MaxFetchSize:         128 << 20,
		MaxFetchBytesPerPeer: 128 << 20,
		FetchWindow:          2,
		FetchParallel:        8,
		FetchTimeoutMin:      5 * time.Second,
		FetchTimeoutMax:      120 * time.Second,
		FetchBackoffMin:      100 * time.Millisecond,
		FetchBackoffMax:      5 * time.Second,
	}
}

// Validate reports the first field that is out of range.
func (c ReceiverConfig) Validate() error {
	switch {
	case c.SlotLimit <= 0:
		return fmt.Errorf("%w: ReceiverConfig.SlotLimit must be positive, got %d", ErrInvalid, c.SlotLimit)
	case c.MaxIDLen <= 0:
		return fmt.Errorf("%w: ReceiverConfig.MaxIDLen must be positive, got %d", ErrInvalid, c.MaxIDLen)
	case c.MaxAttributeLen < 0:
		return fmt.Errorf("%w: ReceiverConfig.MaxAttributeLen must not be negative, got %d", ErrInvalid, c.MaxAttributeLen)
	case c.MaxPushSize <= 0:
		return fmt.Errorf("%w: ReceiverConfig.MaxPushSize must be positive, got %d", ErrInvalid, c.MaxPushSize)
	case c.MaxActiveFetches <= 0:
		return fmt.Errorf("%w: ReceiverConfig.MaxActiveFetches must be positive, got %d", ErrInvalid, c.MaxActiveFetches)
	case c.MaxFetchesPerPeer <= 0:
		return fmt.Errorf("%w: ReceiverConfig.MaxFetchesPerPeer must be positive, got %d", ErrInvalid, c.MaxFetchesPerPeer)
	case c.DeliveryCredits <= 0:
		return fmt.Errorf("%w: ReceiverConfig.DeliveryCredits must be positive, got %d", ErrInvalid, c.DeliveryCredits)
	case c.MaxFetchSize < 0:
		return fmt.Errorf("%w: ReceiverConfig.MaxFetchSize must not be negative, got %d", ErrInvalid, c.MaxFetchSize)
	case c.MaxFetchBytesPerPeer <= 0 || c.MaxFetchBytesPerPeer < c.MaxFetchSize:
		return fmt.Errorf("%w: ReceiverConfig.MaxFetchBytesPerPeer must be positive and at least MaxFetchSize %d, got %d", ErrInvalid, c.MaxFetchSize, c.MaxFetchBytesPerPeer)
	case c.FetchWindow <= 0 || c.FetchParallel < c.FetchWindow:
		return fmt.Errorf("%w: ReceiverConfig needs 0 < FetchWindow <= FetchParallel, got %d and %d", ErrInvalid, c.FetchWindow, c.FetchParallel)
	case c.FetchTimeoutMin <= 0 || c.FetchTimeoutMax < c.FetchTimeoutMin:
		return fmt.Errorf("%w: ReceiverConfig fetch timeouts must satisfy 0 < min <= max, got %v..%v", ErrInvalid, c.FetchTimeoutMin, c.FetchTimeoutMax)
	case c.FetchBackoffMin <= 0 || c.FetchBackoffMax < c.FetchBackoffMin:
		return fmt.Errorf("%w: ReceiverConfig fetch backoff must satisfy 0 < min <= max, got %v..%v", ErrInvalid, c.FetchBackoffMin, c.FetchBackoffMax)
	}
	return nil
}

// Deliver hands an artifact to the consumer, at most once while it stays
// advertised. The caller reports Consumed when the consumer has taken it.
type Deliver struct {
	Artifact Artifact
	From     PeerID
}

// Withdraw tells the consumer that a delivered artifact is no longer
// advertised by any peer.
type Withdraw struct{ ID ArtifactID }

// PeerStats counts one peer's updates and misbehaviour.
type PeerStats struct {
	Accepted  uint64
	Stale     uint64
	OverLimit uint64
	Invalid   uint64
	Mismatch  uint64
	Syncs     uint64
	// FetchFailures counts fetch attempts to this peer that brought
	// nothing (FetchFailed); BadResponses those answered with bytes that
	// did not decode (FetchInvalid). Wrong artifacts count as Mismatch.
	FetchFailures uint64
	BadResponses  uint64
	// Rate is the peer's recent delivery rate to us, in bytes per second
	// (0 until it served a fetch request).
	Rate int64
}

// ReceiverStats counts what the receiver did.
type ReceiverStats struct {
	FetchesStarted, FetchesCancelled uint64
	FetchAttempts                    uint64
	// FetchedBytes counts the payload bytes of artifacts assembled from
	// fetched chunks; FalseDigests the digests proven false.
	FetchedBytes, FalseDigests uint64
	// FetchBudgetWaits counts manifests not kept because their supplier's
	// MaxFetchBytesPerPeer could not take the artifact at the time.
	FetchBudgetWaits     uint64
	Delivered, Withdrawn uint64
	DeliveredFromPush    uint64
	LateFetchResults     uint64
	UnknownPeerUpdates   uint64
}

type entry struct {
	conn   ConnID
	commit CommitID
	id     ArtifactID
	filled bool   // false: a cleared slot kept for ordering
	digest Digest // of an advert: the manifest to fetch
}

type peerRx struct {
	id    PeerID
	conn  ConnID
	slots map[Slot]*entry
	stats PeerStats
	// queue holds ids this peer advertises that wait for a fetch; entries
	// of ids that have since started or gone are skipped when popped.
	queue []ArtifactID
	head  int
	// active counts running fetches charged to this peer.
	active int
	// inflight and inflightBytes count the fetch requests running to this
	// peer and the bytes they expect; rate is the peer's recent delivery
	// rate (bytes per second, 0 unknown), which sets their timeouts.
	inflight      int
	inflightBytes int64
	rate          int64
	// legacy keeps, per id, an entry from an older connection that an
	// update on a newer one displaced, until the sender's Sync: a restarted
	// sender republishes its artifacts in whatever slots it likes (perhaps
	// restarting again before its Sync), and an id must not be withdrawn
	// and delivered again just because it moved slots. Legacy entries count
	// against SlotLimit like the others.
	legacy map[ArtifactID]legacyEntry
}

// legacyEntry is the slot whose (peer, slot) pair still advertises an id
// for a peer's older connection.
type legacyEntry struct {
	slot   Slot
	conn   ConnID
	digest Digest
}

type advKey struct {
	peer PeerID
	slot Slot
}

type phase uint8

const (
	phaseIdle     phase = iota // Later or Drop
	phaseQueued                // admitted, waiting for fetch capacity
	phaseFetching              // a fetch run exists (fetch.go)
	phaseDelivered
)

type idState struct {
	attr     []byte
	decision Decision
	phase    phase
	// charged: while fetching, the advertiser the fetch counts against.
	// It starts as the peer whose queue started the fetch and moves to the
	// least-charged remaining advertiser when that peer stops advertising
	// the id, so a fetch kept alive only by a peer that never serves it is
	// charged to that peer.
	charged PeerID
	adv     advSet
	run     *fetchRun // while fetching: the attempt policy's state
}

// Receiver is the pure receiver half of one channel: per peer a mirror of
// that peer's slot table, advertiser sets per id, admission and fetch
// scheduling. It is not safe for concurrent use; one actor owns it.
type Receiver struct {
	cfg      ReceiverConfig
	peers    map[PeerID]*peerRx
	ids      map[ArtifactID]*idState
	order    []PeerID // peers in order, for round-robin fetch starts
	rr       int      // index in order where the next fetch start looks first
	queued   int      // ids in phaseQueued
	fetching int
	// credits in use: fetching + delivered but not consumed
	// waiting counts deliveries the consumer has not yet Consumed.
	waiting int
	stats   ReceiverStats
	// Fetch attempts (fetch.go): the running attempts by token, the
	// fetches pausing between attempts, the earliest pause announced to the
	// caller since the last Tick, and the random generator's state.
	nextToken Token
	attempts  map[Token]ArtifactID
	pausing   map[ArtifactID]struct{}
	announced time.Time
	rng       uint64
	// now is the latest time a call brought, which backoffs are measured
	// against between calls that bring none.
	now time.Time
	// lastFalse is the reason the last digest was proven false, reported
	// by the FetchDone call during which that happened.
	lastFalse error
	// assembly is, per peer, the payload bytes reserved by running fetches
	// that follow a manifest it served (MaxFetchBytesPerPeer);
	// budgetWaiting the fetches waiting for a supplier with room, and
	// budgetFreed says a reservation was given back since they were last
	// resumed.
	assembly      map[PeerID]int
	budgetWaiting map[ArtifactID]struct{}
	budgetFreed   bool
}

// NewReceiver returns a receiver with no peers.
func NewReceiver(cfg ReceiverConfig) (*Receiver, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Admit == nil {
		cfg.Admit = AdmitAll
	}
	return &Receiver{cfg: cfg, peers: make(map[PeerID]*peerRx), ids: make(map[ArtifactID]*idState),
		attempts: make(map[Token]ArtifactID), pausing: make(map[ArtifactID]struct{}), rng: cfg.Seed,
		assembly: make(map[PeerID]int), budgetWaiting: make(map[ArtifactID]struct{})}, nil
}

// Stats returns the receiver's counters.
func (r *Receiver) Stats() ReceiverStats { return r.stats }

// PeerStats returns one peer's counters.
func (r *Receiver) PeerStats(peer PeerID) PeerStats {
	if p, ok := r.peers[peer]; ok {
		st := p.stats
		st.Rate = p.rate
		return st
	}
	return PeerStats{}
}

// Entries returns how many slot entries peer occupies, those kept from its
// older connections included (what SlotLimit bounds).
func (r *Receiver) Entries(peer PeerID) int {
	if p, ok := r.peers[peer]; ok {
		return p.entries()
	}
	return 0
}

func (p *peerRx) entries() int { return len(p.slots) + len(p.legacy) }

// IDs returns how many distinct ids are advertised.
func (r *Receiver) IDs() int { return len(r.ids) }

// Fetching returns the number of active fetches.
func (r *Receiver) Fetching() int { return r.fetching }

// Advertisers returns the distinct peers advertising id, sorted.
func (r *Receiver) Advertisers(id ArtifactID) []PeerID {
	if st, ok := r.ids[id]; ok {
		return st.peerList()
	}
	return nil
}

// DescribeID says what the receiver knows of id, for diagnostics.
func (r *Receiver) DescribeID(id ArtifactID) string {
	st, ok := r.ids[id]
	if !ok {
		return "unknown"
	}
	names := [...]string{"idle", "queued", "fetching", "delivered"}
	run := ""
	if f := st.run; f != nil {
		held := "no manifest"
		if f.man != nil {
			held = fmt.Sprintf("%d of %d chunks (%d bytes)", len(f.chunks)-f.missing, len(f.chunks), f.held)
		}
		run = fmt.Sprintf(", digest %v (chosen %v, stalled %v), %s, %d bytes reserved from %q (waiting for room for %d: %v), %d requests, pausing until %v, peers %+v, false digests %v",
			f.digest, f.chosen, f.stalled, held, f.reserved, f.supplier, f.need, f.budgetWait, len(f.reqs), f.pause, f.peers, f.bad)
	}
	return fmt.Sprintf("decision %v, %s, charged to %q, advertisers %v (%d pairs), fetching %d/%d, credits %d/%d%s",
		st.decision, names[st.phase], st.charged, st.peerList(), st.adv.len(), r.fetching, r.cfg.MaxActiveFetches, r.fetching+r.waiting, r.cfg.DeliveryCredits, run)
}

// IsDelivered reports whether id is currently delivered.
func (r *Receiver) IsDelivered(id ArtifactID) bool {
	st, ok := r.ids[id]
	return ok && st.phase == phaseDelivered
}

// AddPeer makes peer a member whose updates are accepted. Adding a known
// peer is a no-op.
func (r *Receiver) AddPeer(peer PeerID) {
	if _, ok := r.peers[peer]; !ok {
		r.peers[peer] = &peerRx{id: peer, slots: make(map[Slot]*entry)}
		r.order = append(r.order, peer)
		sortPeers(r.order)
	}
}

// RemovePeer drops everything peer advertised (it left the subnet):
// fetches only it could serve are cancelled, deliveries only it backed are
// withdrawn.
func (r *Receiver) RemovePeer(peer PeerID) []Effect {
	p, ok := r.peers[peer]
	if !ok {
		return nil
	}
	var eff []Effect
	for _, slot := range sortedSlots(p.slots) {
		eff = r.unlink(p, slot, p.slots[slot], eff)
		delete(p.slots, slot)
	}
	eff = r.dropLegacy(p, eff)
	// Requests to the peer still running for fetches others serve end
	// here: it may come back as a new member, with nothing in flight.
	resume := make(map[ArtifactID]bool)
	for _, tok := range sortedKeys(r.attempts) {
		id := r.attempts[tok]
		f := r.ids[id].run
		if f.reqs[tok].peer == peer {
			r.endRequest(f, tok)
			delete(r.attempts, tok)
			eff = append(eff, CancelAttempt{ID: id, Token: tok})
			resume[id] = true
		}
	}
	delete(r.peers, peer)
	for _, id := range sortedKeys(resume) {
		if st, ok := r.ids[id]; ok && st.phase == phaseFetching {
			eff = r.announceRun(st, r.advance(id, st, eff))
		}
	}
	for i, id := range r.order {
		if id == peer {
			r.order = append(r.order[:i], r.order[i+1:]...)
			break
		}
	}
	return r.pump(eff)
}

// HandleUpdate applies one update from peer that arrived on the receiver's
// connection conn to it. A refused update (stale, over the limit, invalid)
// returns an error wrapping ErrStale, ErrSlotLimit or ErrInvalid, is
// counted against the peer and changes nothing. The caller acknowledges the
// update to the sender whether or not it was stale, and refuses it otherwise.
func (r *Receiver) HandleUpdate(peer PeerID, conn ConnID, u SlotUpdate) ([]Effect, error) {
	p, ok := r.peers[peer]
	if !ok {
		r.stats.UnknownPeerUpdates++
		return nil, fmt.Errorf("%w: update from %s", ErrUnknownPeer, peer)
	}
	if conn < p.conn {
		p.stats.Stale++
		return nil, fmt.Errorf("%w: from %s on connection %d, already on %d", ErrStale, peer, conn, p.conn)
	}
	switch u.Kind {
	case KindSync:
		p.conn = conn
		p.stats.Syncs++
		return r.pump(r.sync(p, conn, nil)), nil
	case KindAdvert, KindPush:
		if err := r.checkArtifact(u.Artifact); err != nil {
			p.stats.Invalid++
			return nil, fmt.Errorf("update from %s slot %d: %w", peer, u.Slot, err)
		}
		if size := EncodedSize(u.Artifact); u.Kind == KindPush && size > r.cfg.MaxPushSize {
			p.stats.Invalid++
			return nil, fmt.Errorf("%w: push from %s slot %d of %d bytes, limit %d", ErrInvalid, peer, u.Slot, size, r.cfg.MaxPushSize)
		}
	case KindCleared:
	default:
		p.stats.Invalid++
		return nil, fmt.Errorf("%w: update from %s has kind %v", ErrInvalid, peer, u.Kind)
	}
	e, ok := p.slots[u.Slot]
	if ok {
		if conn < e.conn || (conn == e.conn && u.Commit <= e.commit) {
			p.stats.Stale++
			return nil, fmt.Errorf("%w: from %s slot %d (%d,%d) not after (%d,%d)", ErrStale, peer, u.Slot, conn, u.Commit, e.conn, e.commit)
		}
	}
	var eff []Effect
	if !ok {
		if p.entries() >= r.cfg.SlotLimit {
			if len(p.legacy) == 0 {
				p.stats.OverLimit++
				return nil, fmt.Errorf("%w: %s already holds %d slots", ErrSlotLimit, peer, p.entries())
			}
			// Entries kept from older connections give way to current
			// ones: at the bound the sender's slot moves may cost a
			// withdrawal and a second delivery, never memory.
			eff = r.dropLegacy(p, eff)
		}
		e = &entry{}
		p.slots[u.Slot] = e
	}
	// Only an accepted update moves the peer to its newer connection: a
	// refused one changes nothing.
	p.conn = conn
	p.stats.Accepted++
	newID := u.Artifact.ID
	filled := u.Kind != KindCleared
	if e.filled && filled && e.id == newID {
		// The same artifact again (a resend on a new connection, say).
		e.conn, e.commit, e.digest = conn, u.Commit, u.Digest
		return r.pump(eff), nil
	}
	if e.filled {
		eff = r.displace(p, u.Slot, e, conn, eff)
	}
	e.conn, e.commit, e.filled, e.id, e.digest = conn, u.Commit, filled, "", u.Digest
	if !filled {
		return r.pump(eff), nil
	}
	e.id = newID
	if lg, ok := p.legacy[newID]; ok && lg.slot == u.Slot {
		// The displaced entry comes back: its pair still advertises the id.
		delete(p.legacy, newID)
		return r.pump(eff), nil
	}
	eff, err := r.link(p, u.Slot, u, eff)
	return r.pump(eff), err
}

// displace takes the filled entry e out of slot for an update on conn. An
// entry from an older connection keeps advertising its id until the Sync
// (as a legacy entry) unless the id already has one or the peer is at its
// slot limit; otherwise its pair leaves the id's advertiser set.
func (r *Receiver) displace(p *peerRx, slot Slot, e *entry, conn ConnID, eff []Effect) []Effect {
	if _, kept := p.legacy[e.id]; e.conn < conn && !kept && p.entries() < r.cfg.SlotLimit {
		if p.legacy == nil {
			p.legacy = make(map[ArtifactID]legacyEntry)
		}
		p.legacy[e.id] = legacyEntry{slot: slot, conn: e.conn, digest: e.digest}
		return eff
	}
	return r.unlink(p, slot, e, eff)
}

func (r *Receiver) checkArtifact(a Artifact) error {
	switch {
	case len(a.ID) == 0:
		return fmt.Errorf("%w: empty artifact id", ErrInvalid)
	case len(a.ID) > r.cfg.MaxIDLen:
		return fmt.Errorf("%w: artifact id of %d bytes exceeds %d", ErrInvalid, len(a.ID), r.cfg.MaxIDLen)
	case len(a.Attribute) > r.cfg.MaxAttributeLen:
		return fmt.Errorf("%w: attribute of %d bytes exceeds %d", ErrInvalid, len(a.Attribute), r.cfg.MaxAttributeLen)
	}
	return nil
}

// sync drops p's entries from connections older than conn: the sender has
// refreshed everything it still holds on conn.
func (r *Receiver) sync(p *peerRx, conn ConnID, eff []Effect) []Effect {
	for _, slot := range sortedSlots(p.slots) {
		e := p.slots[slot]
		if e.conn < conn {
			eff = r.unlink(p, slot, e, eff)
			delete(p.slots, slot)
		}
	}
	return r.dropLegacy(p, eff)
}

func (r *Receiver) dropLegacy(p *peerRx, eff []Effect) []Effect {
	for _, id := range sortedKeys(p.legacy) {
		eff = r.unlinkID(p, p.legacy[id].slot, id, eff)
	}
	p.legacy = nil
	return eff
}

// unlink removes (p, slot) from the advertiser set of the entry's id.
func (r *Receiver) unlink(p *peerRx, slot Slot, e *entry, eff []Effect) []Effect {
	if !e.filled {
		return eff
	}
	return r.unlinkID(p, slot, e.id, eff)
}

func (r *Receiver) unlinkID(p *peerRx, slot Slot, id ArtifactID, eff []Effect) []Effect {
	st := r.ids[id]
	key := advKey{p.id, slot}
	peerGone := st.adv.remove(key)
	if st.adv.len() > 0 {
		if peerGone && st.phase == phaseFetching && st.charged == p.id {
			list := st.peerList()
			p.active--
			st.charged = list[0]
			for _, q := range list[1:] {
				if r.peers[q].active < r.peers[st.charged].active {
					st.charged = q
				}
			}
			r.peers[st.charged].active++
		}
		return eff
	}
	switch st.phase {
	case phaseQueued:
		r.queued--
	case phaseFetching:
		r.endFetch(id, st)
		r.stats.FetchesCancelled++
		eff = append(eff, CancelFetch{ID: id})
	case phaseDelivered:
		r.stats.Withdrawn++
		eff = append(eff, Withdraw{ID: id})
	}
	delete(r.ids, id)
	return eff
}

// link adds (p, slot) to the advertiser set of u's id, admitting a new id.
func (r *Receiver) link(p *peerRx, slot Slot, u SlotUpdate, eff []Effect) ([]Effect, error) {
	id := u.Artifact.ID
	st, ok := r.ids[id]
	if ok {
		if st.adv.add(advKey{p.id, slot}) {
			switch st.phase {
			case phaseFetching:
				eff = r.advertiserJoined(id, st, eff)
			case phaseQueued:
				r.pushQ(p, id)
			}
		}
		return eff, nil
	}
	st = &idState{
		attr:     append([]byte(nil), u.Artifact.Attribute...),
		adv:      advSet{small: []advKey{{p.id, slot}}},
		decision: r.cfg.Admit(id, u.Artifact.Attribute),
	}
	r.ids[id] = st
	if st.decision != Fetch {
		return eff, nil
	}
	// A push is handed over while the consumer holds fewer than
	// DeliveryCredits deliveries, however many fetches run: its bytes are
	// here already, and fetching it later would move them again. Counting
	// fetches here let the per-peer guaranteed downloads of a large subnet
	// (one per peer, more than the credits at 64 peers and up) or a few
	// long transfers turn every push into a fetch.
	if u.Kind == KindPush && r.waiting < r.cfg.DeliveryCredits {
		if err := r.verify(id, u.Artifact); err != nil {
			p.stats.Mismatch++
			r.enqueue(id, st)
			return eff, fmt.Errorf("push from %s slot %d: %w", p.id, slot, err)
		}
		st.phase = phaseDelivered
		r.waiting++
		r.stats.Delivered++
		r.stats.DeliveredFromPush++
		return append(eff, Deliver{Artifact: u.Artifact, From: p.id}), nil
	}
	r.enqueue(id, st)
	return eff, nil
}

// enqueue makes id wait for a fetch, in the queue of every peer that
// advertises it.
func (r *Receiver) enqueue(id ArtifactID, st *idState) {
	st.phase = phaseQueued
	r.queued++
	for _, peer := range st.adv.peerList() {
		r.pushQ(r.peers[peer], id)
	}
}

// pushQ appends id to p's queue. Entries of ids that left the queued phase
// stay behind until popped, so the queue is compacted when it outgrows what
// p can advertise: a peer churning ids cannot grow it.
func (r *Receiver) pushQ(p *peerRx, id ArtifactID) {
	p.queue = append(p.queue, id)
	if len(p.queue)-p.head <= 2*len(p.slots)+64 {
		return
	}
	live := p.queue[:0]
	seen := make(map[ArtifactID]bool)
	for _, q := range p.queue[p.head:] {
		if st, ok := r.ids[q]; ok && st.phase == phaseQueued && st.adv.peerCount(p.id) > 0 && !seen[q] {
			seen[q] = true
			live = append(live, q)
		}
	}
	clear(p.queue[len(live):])
	p.queue, p.head = live, 0
}

// popQ returns the first id in p's queue that still waits and that p still
// advertises.
func (r *Receiver) popQ(p *peerRx) (ArtifactID, *idState, bool) {
	for p.head < len(p.queue) {
		id := p.queue[p.head]
		p.queue[p.head] = ""
		p.head++
		if st, ok := r.ids[id]; ok && st.phase == phaseQueued && st.adv.peerCount(p.id) > 0 {
			return id, st, true
		}
	}
	p.queue, p.head = nil, 0 // release the backing array
	return "", nil, false
}

func (r *Receiver) verify(id ArtifactID, a Artifact) error {
	if a.ID != id {
		return fmt.Errorf("%w: asked for %x, got %x", ErrMismatch, []byte(id), []byte(a.ID))
	}
	if r.cfg.Verify != nil {
		if err := r.cfg.Verify(a); err != nil {
			return fmt.Errorf("%w: %w", ErrMismatch, err)
		}
	}
	return nil
}

// pump starts queued fetches while capacity and credits allow, taking
// peers' queues in turn and skipping peers at their MaxFetchesPerPeer.
func (r *Receiver) pump(eff []Effect) []Effect {
	eff = r.resumeBudgetWaiters(eff)
	for r.queued > 0 {
		started := false
		for i := range r.order {
			k := (r.rr + i) % len(r.order)
			p := r.peers[r.order[k]]
			if !r.canStart(p) {
				continue
			}
			id, st, ok := r.popQ(p)
			if !ok {
				continue
			}
			st.phase = phaseFetching
			st.charged = p.id
			p.active++
			r.queued--
			r.fetching++
			r.stats.FetchesStarted++
			eff = r.startRun(id, st, eff)
			r.rr = (k + 1) % len(r.order)
			started = true
			break
		}
		if !started {
			break
		}
	}
	return eff
}

// canStart reports whether a fetch charged to p may start now.
func (r *Receiver) canStart(p *peerRx) bool {
	if p.active >= r.cfg.MaxFetchesPerPeer || r.waiting >= r.cfg.DeliveryCredits {
		return false
	}
	if p.active == 0 {
		return true // every peer's first download is guaranteed
	}
	return r.fetching < r.cfg.MaxActiveFetches && r.fetching+r.waiting < r.cfg.DeliveryCredits
}

func (r *Receiver) endFetch(id ArtifactID, st *idState) {
	r.peers[st.charged].active--
	st.charged = ""
	r.fetching--
	r.endRun(id, st)
}

// Consumed returns one delivery credit: the consumer has taken a delivered
// artifact.
func (r *Receiver) Consumed() []Effect {
	if r.waiting > 0 {
		r.waiting--
	}
	return r.pump(nil)
}

// Reevaluate asks the admission function again about every id it answered
// Later for, e.g. because its filter changed.
func (r *Receiver) Reevaluate() []Effect {
	for _, id := range sortedIDs(r.ids) {
		st := r.ids[id]
		if st.decision != Later {
			continue
		}
		st.decision = r.cfg.Admit(id, st.attr)
		if st.decision == Fetch {
			r.enqueue(id, st)
		}
	}
	return r.pump(nil)
}

// CheckInvariants verifies the receiver's consistency (DESIGN §6).
func (r *Receiver) CheckInvariants() error {
	count := make(map[ArtifactID]int)
	for pid, p := range r.peers {
		if p.entries() > r.cfg.SlotLimit {
			return fmt.Errorf("peer %s holds %d slots and %d older entries, above limit %d", pid, len(p.slots), len(p.legacy), r.cfg.SlotLimit)
		}
		for id, lg := range p.legacy {
			if cur, ok := p.slots[lg.slot]; ok && cur.filled && cur.id == id {
				return fmt.Errorf("peer %s slot %d holds %x both current and legacy", pid, lg.slot, []byte(id))
			}
			if lg.conn >= p.conn {
				return fmt.Errorf("peer %s legacy entry of %x from connection %d, not older than %d", pid, []byte(id), lg.conn, p.conn)
			}
			st, ok := r.ids[id]
			if !ok {
				return fmt.Errorf("peer %s legacy slot %d holds %x which has no advertiser set", pid, lg.slot, []byte(id))
			}
			if !st.adv.has(advKey{pid, lg.slot}) {
				return fmt.Errorf("advertiser set of %x lacks legacy (%s, %d)", []byte(id), pid, lg.slot)
			}
			count[id]++
		}
		for slot, e := range p.slots {
			if !e.filled {
				continue
			}
			st, ok := r.ids[e.id]
			if !ok {
				return fmt.Errorf("peer %s slot %d holds %x which has no advertiser set", pid, slot, []byte(e.id))
			}
			if !st.adv.has(advKey{pid, slot}) {
				return fmt.Errorf("advertiser set of %x lacks (%s, %d)", []byte(e.id), pid, slot)
			}
			count[e.id]++
		}
	}
	fetching, queued := 0, 0
	for id, st := range r.ids {
		if st.adv.len() == 0 {
			return fmt.Errorf("id %x has an empty advertiser set", []byte(id))
		}
		if st.adv.len() != count[id] {
			return fmt.Errorf("id %x: advertiser set has %d pairs, tables %d", []byte(id), st.adv.len(), count[id])
		}
		if !st.adv.check() {
			return fmt.Errorf("id %x: advertiser set inconsistent", []byte(id))
		}
		switch st.phase {
		case phaseFetching:
			fetching++
			if st.decision != Fetch {
				return fmt.Errorf("id %x fetching with decision %v", []byte(id), st.decision)
			}
		case phaseQueued:
			queued++
		}
	}
	if fetching != r.fetching {
		return fmt.Errorf("fetch counter %d, fetching ids %d", r.fetching, fetching)
	}
	if r.fetching > r.cfg.MaxActiveFetches+len(r.peers) {
		return fmt.Errorf("%d fetches above limit %d + %d peers", r.fetching, r.cfg.MaxActiveFetches, len(r.peers))
	}
	// Fetches start only while fewer than DeliveryCredits deliveries
	// wait, and pushes are handed over on the same condition, so what
	// waits is at most the credits plus the fetches that were running.
	if r.waiting < 0 || r.fetching+r.waiting > r.cfg.DeliveryCredits+r.cfg.MaxActiveFetches+len(r.peers) {
		return fmt.Errorf("credits in use %d+%d above %d + %d + %d peers", r.fetching, r.waiting, r.cfg.DeliveryCredits, r.cfg.MaxActiveFetches, len(r.peers))
	}
	if queued != r.queued {
		return fmt.Errorf("queued counter %d, queued ids %d", r.queued, queued)
	}
	charged := make(map[PeerID]int)
	queues := make(map[PeerID]map[ArtifactID]bool)
	for id, st := range r.ids {
		switch st.phase {
		case phaseFetching:
			if st.adv.peerCount(st.charged) == 0 {
				return fmt.Errorf("fetch of %x charged to %q which does not advertise it", []byte(id), st.charged)
			}
			charged[st.charged]++
		case phaseQueued:
			for _, pid := range st.adv.peerList() {
				p := r.peers[pid]
				q, ok := queues[pid]
				if !ok {
					q = make(map[ArtifactID]bool, len(p.queue)-p.head)
					for _, x := range p.queue[p.head:] {
						q[x] = true
					}
					queues[pid] = q
				}
				if !q[id] {
					return fmt.Errorf("id %x waits but is not in the queue of its advertiser %s", []byte(id), pid)
				}
				if r.canStart(p) {
					return fmt.Errorf("id %x waits although %s may start a fetch", []byte(id), pid)
				}
			}
		}
	}
	if err := r.checkRuns(); err != nil {
		return err
	}
	for pid, p := range r.peers {
		// A peer may exceed MaxFetchesPerPeer only through charges moved
		// to it; it then starts nothing until it is below the limit again.
		if p.active != charged[pid] {
			return fmt.Errorf("peer %s: %d fetches counted, %d charged", pid, p.active, charged[pid])
		}
		if len(p.queue)-p.head > 2*len(p.slots)+64 {
			return fmt.Errorf("peer %s: fetch queue of %d entries for %d slots", pid, len(p.queue)-p.head, len(p.slots))
		}
	}
	return nil
}

func (st *idState) peerList() []PeerID { return st.adv.peerList() }

// Peers returns the peers the receiver accepts updates from, sorted.
func (r *Receiver) Peers() []PeerID { return slices.Clone(r.order) }

// RecordInvalid counts against peer an update that never reached the core
// because it did not decode (the caller refused it at the edge).
func (r *Receiver) RecordInvalid(peer PeerID) {
	if p, ok := r.peers[peer]; ok {
		p.stats.Invalid++
	}
}
