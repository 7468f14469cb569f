package broadcast

import (
	"container/heap"
	"fmt"
	"slices"
	"time"
)

// SenderConfig bounds one channel's sender.
type SenderConfig struct {
	// MaxSlots is the most artifacts that may be live at once. Publish beyond
	// it fails with ErrSlotsExhausted. It must not exceed the receivers'
	// SlotLimit, or honest receivers refuse the excess. Default 50,000.
	MaxSlots int
	// PushThreshold: an artifact whose encoded size is below it is pushed
	// whole; a larger one is advertised and fetched. Bytes; default 1 KiB.
	PushThreshold int
	// MaxPushSize is the largest encoded artifact ever pushed, latency-
	// sensitive ones included: a larger one is advertised and fetched, so
	// what one update makes a receiver hold stays small (receivers refuse
	// larger pushes; see ReceiverConfig.MaxPushSize, which must not be
	// smaller). Bytes; default 1 MiB.
	MaxPushSize int
	// ChunkSize is the size of the chunks an advertised artifact is
	// fetched in (the last one shorter); the advert carries the digest of
	// their hashes (see Manifest). Larger chunks mean fewer requests;
	// smaller ones waste less when a request times out, and need less of a
	// slow link per request. Bytes, MinChunkSize to MaxChunkSize; default
	// 256 KiB.
	ChunkSize int
	// MaxInFlightPerPeer is the most updates outstanding to one peer. More
	// parallelism hides latency; fewer streams keep QUIC efficient. Default 64.
	MaxInFlightPerPeer int
	// RetryBackoffMin and RetryBackoffMax bound the pause after a failed
	// update to a peer before that peer is sent anything again; the pause
	// doubles per consecutive failure. Defaults 250 ms and 60 s.
	RetryBackoffMin time.Duration
	RetryBackoffMax time.Duration
	// UpdateTimeout bounds one transmission of an update, plus
	// UpdateTimeoutPerMiB for every MiB it carries (pro rata: pushed
	// artifacts can be large). Every failed transmission of the same state
	// to the same peer doubles it, up to UpdateTimeoutMax, so a large push
	// over a slow, lossy link eventually gets the time it needs instead of
	// restarting on the same deadline forever. A timed-out update counts as
	// failed and is retried after the backoff. Dead connections are found
	// by the transport's idle timeout, so this only has to catch a peer
	// that takes a stream and never answers; it must be generous enough
	// for a large push over a lossy link (5% loss at 100 ms RTT moves about
	// 60 KB/s). Defaults 30 s, 20 s and 5 min; UpdateTimeoutMax must leave
	// at least the first attempt's timeout to the largest push there can be.
	UpdateTimeout       time.Duration
	UpdateTimeoutPerMiB time.Duration
	UpdateTimeoutMax    time.Duration
}

// Pushes reports whether a sender with this configuration sends a whole
// (pushes it) rather than advertising it for peers to fetch.
func (c SenderConfig) Pushes(a Artifact) bool {
	size := EncodedSize(a)
	return (a.LatencySensitive || size < c.PushThreshold) && size <= c.MaxPushSize
}

// DefaultSenderConfig returns the documented defaults.
func DefaultSenderConfig() SenderConfig {
	return SenderConfig{
		MaxSlots:            50_000,
		PushThreshold:       1024,
		MaxPushSize:         1 << 20,
		ChunkSize:           256 << 10,
		MaxInFlightPerPeer:  64,
		RetryBackoffMin:     250 * time.Millisecond,
		RetryBackoffMax:     60 * time.Second,
		UpdateTimeout:       30 * time.Second,
		UpdateTimeoutPerMiB: 20 * time.Second,
		UpdateTimeoutMax:    5 * time.Minute,
	}
}

// Validate reports the first field that is out of range.
func (c SenderConfig) Validate() error {
	switch {
	case c.MaxSlots <= 0:
		return fmt.Errorf("%w: SenderConfig.MaxSlots must be positive, got %d", ErrInvalid, c.MaxSlots)
	case c.PushThreshold < 0:
		return fmt.Errorf("%w: SenderConfig.PushThreshold must not be negative, got %d", ErrInvalid, c.PushThreshold)
	case c.ChunkSize < MinChunkSize || c.ChunkSize > MaxChunkSize:
		return fmt.Errorf("%w: SenderConfig.ChunkSize %d outside %d..%d", ErrInvalid, c.ChunkSize, MinChunkSize, MaxChunkSize)
	case c.MaxPushSize < c.PushThreshold:
		return fmt.Errorf("%w: SenderConfig.MaxPushSize %d is below PushThreshold %d", ErrInvalid, c.MaxPushSize, c.PushThreshold)
	case c.MaxInFlightPerPeer <= 0:
		return fmt.Errorf("%w: SenderConfig.MaxInFlightPerPeer must be positive, got %d", ErrInvalid, c.MaxInFlightPerPeer)
	case c.RetryBackoffMin <= 0 || c.RetryBackoffMax < c.RetryBackoffMin:
		return fmt.Errorf("%w: SenderConfig retry backoff must satisfy 0 < min <= max, got %v..%v", ErrInvalid, c.RetryBackoffMin, c.RetryBackoffMax)
	case c.UpdateTimeout <= 0 || c.UpdateTimeoutPerMiB < 0 || c.UpdateTimeoutMax < c.UpdateTimeout:
		return fmt.Errorf("%w: SenderConfig update timeouts must satisfy 0 < UpdateTimeout <= UpdateTimeoutMax and UpdateTimeoutPerMiB >= 0, got %v, %v, %v",
			ErrInvalid, c.UpdateTimeout, c.UpdateTimeoutPerMiB, c.UpdateTimeoutMax)
	}
	return nil
}

// Token names one transmission of an update to a peer. The caller reports
// its outcome with Acked or Failed, and drops it on CancelSend.
type Token uint64

// SendUpdate asks the caller to send Update to Peer on the connection Conn
// and report the outcome for Token. Only a successful response from the peer
// counts as Acked.
type SendUpdate struct {
	Peer   PeerID
	Conn   ConnID
	Token  Token
	Update SlotUpdate
	// Timeout is how long the caller waits for the peer's response before
	// it reports Failed (SenderConfig.UpdateTimeout and what follows it).
	Timeout time.Duration
}

// CancelSend asks the caller to abandon the transmission Token (reset its
// stream): a newer state of the slot superseded it.
type CancelSend struct {
	Peer  PeerID
	Token Token
}

// SenderStats counts what the sender did and refused. Updates* count slot
// updates (advert, push, cleared); Syncs* count the Sync sent once per
// connection. Every update sent ends exactly once as acked, failed or
// cancelled, or is forgotten by PeerDown, RemovePeer or ResetTransmissions.
type SenderStats struct {
	Published, Aborted uint64
	DuplicatePublish   uint64
	UnknownAbort       uint64
	RefusedFull        uint64
	UpdatesSent        uint64
	UpdatesAcked       uint64
	UpdatesFailed      uint64
	UpdatesCancelled   uint64
	UnknownTokens      uint64
	SyncsSent          uint64
	SyncsAcked         uint64
}

type slotState struct {
	live   bool
	commit CommitID
	art    Artifact // the live artifact (zero when free)
	update SlotUpdate
}

// peerSlot is what the sender knows of one slot at one peer.
type peerSlot struct {
	acked    CommitID // commit of the newest state the peer acknowledged; 0 none
	mayHold  bool     // the peer may hold an artifact for this slot
	queued   bool     // in the peer's pending queue
	resync   bool     // must be acknowledged on the current connection before Sync
	inflight Token    // 0 when nothing is in flight
	sentAt   CommitID // commit of the in-flight state
	failures uint16   // failed transmissions of the state at failedAt
	failedAt CommitID
}

type peerTx struct {
	id       PeerID
	up       bool
	conn     ConnID
	slots    []peerSlot
	queue    []Slot // FIFO; entries whose queued flag is false are skipped
	head     int
	inflight map[Token]Slot
	// syncToken is the in-flight Sync, if any; needSync is set while the
	// current connection still owes the peer a Sync.
	syncToken  Token
	needSync   bool
	resyncLeft int
	// backoff state
	waiting   bool
	waitUntil time.Time
	backoff   time.Duration
}

// Sender is the pure sender half of one channel: a slot table of live
// artifacts and, per peer, what that peer still has to be sent.
// It is not safe for concurrent use; one actor owns it.
type Sender struct {
	cfg       SenderConfig
	slots     []slotState
	free      slotHeap
	byID      map[ArtifactID]Slot
	live      int
	commit    CommitID
	peers     map[PeerID]*peerTx
	nextToken Token
	stats     SenderStats
}

// NewSender returns an empty sender.
func NewSender(cfg SenderConfig) (*Sender, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Sender{cfg: cfg, byID: make(map[ArtifactID]Slot), peers: make(map[PeerID]*peerTx)}, nil
}

// Stats returns the counters.
func (s *Sender) Stats() SenderStats { return s.stats }

// Live returns the number of live artifacts.
func (s *Sender) Live() int { return s.live }

// Commit returns the current commit id.
func (s *Sender) Commit() CommitID { return s.commit }

// Lookup returns the live artifact with the given id, for serving fetches.
func (s *Sender) Lookup(id ArtifactID) (Artifact, bool) {
	slot, ok := s.byID[id]
	if !ok {
		return Artifact{}, false
	}
	return s.slots[slot].art, true
}

// LiveArtifacts returns the live artifacts in slot order.
func (s *Sender) LiveArtifacts() []Artifact {
	out := make([]Artifact, 0, s.live)
	for i := range s.slots {
		if s.slots[i].live {
			out = append(out, s.slots[i].art)
		}
	}
	return out
}

// Publish adds an artifact to a free slot and schedules it for every peer.
// At the live-slot bound it returns ErrSlotsExhausted and changes nothing; a
// live id returns ErrDuplicate and changes nothing.
func (s *Sender) Publish(a Artifact) ([]Effect, error) {
	if a.ID == "" {
		return nil, fmt.Errorf("%w: empty artifact id", ErrInvalid)
	}
	if _, ok := s.byID[a.ID]; ok {
		s.stats.DuplicatePublish++
		return nil, fmt.Errorf("%w: artifact %x is already published", ErrDuplicate, []byte(a.ID))
	}
	if s.live >= s.cfg.MaxSlots {
		s.stats.RefusedFull++
		return nil, fmt.Errorf("%w: %d live artifacts", ErrSlotsExhausted, s.live)
	}
	var slot Slot
	if s.free.Len() > 0 {
		slot = heap.Pop(&s.free).(Slot)
	} else {
		slot = Slot(len(s.slots))
		s.slots = append(s.slots, slotState{})
	}
	s.commit++
	st := &s.slots[slot]
	st.live = true
	st.commit = s.commit
	st.art = a
	st.update = SlotUpdate{Commit: s.commit, Slot: slot}
	if s.cfg.Pushes(a) {
		st.update.Kind = KindPush
		st.update.Artifact = a
	} else {
		st.update.Kind = KindAdvert
		st.update.Artifact = Artifact{ID: a.ID, Attribute: a.Attribute, LatencySensitive: a.LatencySensitive}
		st.update.Digest = Describe(a.Payload, s.cfg.ChunkSize).Digest()
	}
	s.byID[a.ID] = slot
	s.live++
	s.stats.Published++
	return s.slotChanged(slot, nil), nil
}

// Abort frees the artifact's slot. Peers that may hold the slot's state are
// sent a cleared update; in-flight transmissions of the artifact are
// cancelled. An id that is not live returns ErrUnknownID and changes nothing.
func (s *Sender) Abort(id ArtifactID) ([]Effect, error) {
	slot, ok := s.byID[id]
	if !ok {
		s.stats.UnknownAbort++
		return nil, fmt.Errorf("%w: abort of %x", ErrUnknownID, []byte(id))
	}
	delete(s.byID, id)
	s.commit++
	st := &s.slots[slot]
	st.live = false
	st.commit = s.commit
	st.art = Artifact{}
	st.update = SlotUpdate{Commit: s.commit, Slot: slot, Kind: KindCleared}
	heap.Push(&s.free, slot)
	s.live--
	s.stats.Aborted++
	return s.slotChanged(slot, nil), nil
}

// slotChanged cancels superseded transmissions of slot and queues its new
// state for every peer that needs it.
func (s *Sender) slotChanged(slot Slot, eff []Effect) []Effect {
	for _, id := range s.sortedPeers() {
		p := s.peers[id]
		p.grow(len(s.slots))
		ps := &p.slots[slot]
		if ps.inflight != 0 {
			eff = append(eff, CancelSend{Peer: p.id, Token: ps.inflight})
			delete(p.inflight, ps.inflight)
			ps.inflight = 0
			s.stats.UpdatesCancelled++
		}
		s.enqueue(p, slot)
		eff = s.pump(p, eff)
	}
	return eff
}

// needs reports whether peer p must be sent slot's newest state.
func (s *Sender) needs(p *peerTx, slot Slot) bool {
	st := &s.slots[slot]
	ps := &p.slots[slot]
	if ps.acked == st.commit {
		return false
	}
	return st.live || ps.mayHold
}

func (s *Sender) enqueue(p *peerTx, slot Slot) {
	ps := &p.slots[slot]
	if ps.queued || ps.inflight != 0 || !s.needs(p, slot) {
		return
	}
	ps.queued = true
	p.queue = append(p.queue, slot)
}

// pump sends queued slots to p while its in-flight budget allows.
func (s *Sender) pump(p *peerTx, eff []Effect) []Effect {
	if !p.up || p.waiting {
		return eff
	}
	for len(p.inflight) < s.cfg.MaxInFlightPerPeer && p.head < len(p.queue) {
		slot := p.queue[p.head]
		p.head++
		ps := &p.slots[slot]
		if !ps.queued {
			continue
		}
		ps.queued = false
		if !s.needs(p, slot) {
			s.resyncDone(p, ps)
			continue
		}
		st := &s.slots[slot]
		s.nextToken++
		ps.inflight = s.nextToken
		ps.sentAt = st.commit
		if st.live {
			ps.mayHold = true
		}
		p.inflight[s.nextToken] = slot
		s.stats.UpdatesSent++
		attempt := 0
		if ps.failedAt == st.commit {
			attempt = int(ps.failures)
		}
		eff = append(eff, SendUpdate{Peer: p.id, Conn: p.conn, Token: s.nextToken, Update: st.update, Timeout: s.updateTimeout(st.update, attempt)})
	}
	p.compact()
	return s.maybeSync(p, eff)
}

func (s *Sender) resyncDone(p *peerTx, ps *peerSlot) {
	if ps.resync {
		ps.resync = false
		p.resyncLeft--
	}
}

// maybeSync sends the Sync owed on the current connection once every slot
// pending at connection time has been acknowledged on it.
func (s *Sender) maybeSync(p *peerTx, eff []Effect) []Effect {
	if !p.up || p.waiting || !p.needSync || p.resyncLeft > 0 || p.syncToken != 0 {
		return eff
	}
	s.nextToken++
	p.syncToken = s.nextToken
	s.stats.SyncsSent++
	u := SlotUpdate{Commit: s.commit, Kind: KindSync}
	return append(eff, SendUpdate{Peer: p.id, Conn: p.conn, Token: p.syncToken, Update: u, Timeout: s.updateTimeout(u, 0)})
}

// updateTimeout is the response deadline of one transmission of u after
// attempt failed ones: the base plus its share per MiB carried, doubled per
// failure, capped.
func (s *Sender) updateTimeout(u SlotUpdate, attempt int) time.Duration {
	size := int64(EncodedSize(u.Artifact))
	d := s.cfg.UpdateTimeout + time.Duration(int64(s.cfg.UpdateTimeoutPerMiB)*size>>20)
	for range min(attempt, 16) {
		if d >= s.cfg.UpdateTimeoutMax {
			break
		}
		d *= 2
	}
	return min(d, s.cfg.UpdateTimeoutMax)
}

// PeerUp reports a connection to peer with local connection id conn. A
// connection newer than the last one makes every slot the peer may hold
// pending for it at once, and cancels transmissions on older connections.
// An older or repeated conn is ignored.
func (s *Sender) PeerUp(peer PeerID, conn ConnID) []Effect {
	p, ok := s.peers[peer]
	if !ok {
		p = &peerTx{id: peer, inflight: make(map[Token]Slot), backoff: s.cfg.RetryBackoffMin}
		s.peers[peer] = p
	} else if conn <= p.conn {
		return nil
	}
	var eff []Effect
	for tok, slot := range p.inflight {
		p.slots[slot].inflight = 0
		delete(p.inflight, tok)
		eff = append(eff, CancelSend{Peer: peer, Token: tok})
	}
	sortCancels(eff)
	if p.syncToken != 0 {
		eff = append(eff, CancelSend{Peer: peer, Token: p.syncToken})
		p.syncToken = 0
	}
	p.up = true
	p.conn = conn
	p.waiting = false
	p.backoff = s.cfg.RetryBackoffMin
	p.grow(len(s.slots))
	p.queue = p.queue[:0]
	p.head = 0
	p.resyncLeft = 0
	for i := range p.slots {
		ps := &p.slots[i]
		ps.queued = false
		ps.resync = false
		// The receiver keeps what earlier connections delivered, but only
		// entries refreshed on this connection survive the Sync.
		ps.acked = 0
		if s.needs(p, Slot(i)) {
			ps.resync = true
			p.resyncLeft++
			ps.queued = true
			p.queue = append(p.queue, Slot(i))
		}
	}
	p.needSync = true
	return s.pump(p, eff)
}

// PeerDown reports that the connection to peer is gone. Nothing is sent to
// it until the next PeerUp; what it acknowledged is remembered.
func (s *Sender) PeerDown(peer PeerID) []Effect {
	p, ok := s.peers[peer]
	if !ok || !p.up {
		return nil
	}
	p.up = false
	s.forgetInflight(p)
	p.syncToken = 0
	return nil
}

// RemovePeer forgets peer (it left the subnet) and cancels its transmissions.
func (s *Sender) RemovePeer(peer PeerID) []Effect {
	p, ok := s.peers[peer]
	if !ok {
		return nil
	}
	var eff []Effect
	for tok := range p.inflight {
		eff = append(eff, CancelSend{Peer: peer, Token: tok})
	}
	if p.syncToken != 0 {
		eff = append(eff, CancelSend{Peer: peer, Token: p.syncToken})
	}
	sortCancels(eff)
	delete(s.peers, peer)
	return eff
}

// Acked records the peer's successful response to transmission tok.
func (s *Sender) Acked(peer PeerID, tok Token) []Effect {
	p, ok := s.peers[peer]
	if !ok {
		s.stats.UnknownTokens++
		return nil
	}
	if tok != 0 && tok == p.syncToken {
		p.syncToken = 0
		p.needSync = false
		p.backoff = s.cfg.RetryBackoffMin
		s.stats.SyncsAcked++
		return s.pump(p, nil)
	}
	slot, ok := p.inflight[tok]
	if !ok {
		s.stats.UnknownTokens++
		return nil
	}
	delete(p.inflight, tok)
	ps := &p.slots[slot]
	ps.inflight = 0
	ps.acked = ps.sentAt
	if !s.slots[slot].live && ps.sentAt == s.slots[slot].commit {
		ps.mayHold = false // the cleared update arrived
	}
	s.resyncDone(p, ps)
	p.backoff = s.cfg.RetryBackoffMin
	s.stats.UpdatesAcked++
	s.enqueue(p, slot)
	return s.pump(p, nil)
}

// Failed records that transmission tok did not get a successful response.
// The slot stays pending and the peer backs off: nothing more is sent to it
// until Tick is called at or after the returned RetryAt.
func (s *Sender) Failed(peer PeerID, tok Token, now time.Time) []Effect {
	p, ok := s.peers[peer]
	if !ok {
		s.stats.UnknownTokens++
		return nil
	}
	if tok != 0 && tok == p.syncToken {
		p.syncToken = 0
	} else {
		slot, ok := p.inflight[tok]
		if !ok {
			s.stats.UnknownTokens++
			return nil
		}
		delete(p.inflight, tok)
		ps := &p.slots[slot]
		ps.inflight = 0
		if ps.failedAt != ps.sentAt {
			ps.failedAt, ps.failures = ps.sentAt, 0
		}
		if ps.failures < 1<<15 {
			ps.failures++
		}
		s.enqueue(p, slot)
		s.stats.UpdatesFailed++
	}
	if !p.up {
		return nil
	}
	p.waiting = true
	p.waitUntil = now.Add(p.backoff)
	p.backoff *= 2
	if p.backoff > s.cfg.RetryBackoffMax {
		p.backoff = s.cfg.RetryBackoffMax
	}
	return []Effect{RetryAt{Peer: peer, At: p.waitUntil}}
}

// Tick ends the backoff of every peer whose pause has passed and sends what
// is due. If peers are still backing off, it ends with one RetryAt for the
// earliest of them, so a caller that keeps only one timer (at the earliest
// RetryAt it was given) and calls Tick when it fires never loses a retry.
func (s *Sender) Tick(now time.Time) []Effect {
	var eff []Effect
	var next RetryAt
	for _, id := range s.sortedPeers() {
		p := s.peers[id]
		if !p.waiting {
			continue
		}
		if now.Before(p.waitUntil) {
			if next.At.IsZero() || p.waitUntil.Before(next.At) {
				next = RetryAt{Peer: id, At: p.waitUntil}
			}
			continue
		}
		p.waiting = false
		eff = s.pump(p, eff)
	}
	if !next.At.IsZero() {
		eff = append(eff, next)
	}
	return eff
}

// Pending returns how many slots wait to be sent to peer (excluding those in flight).
func (s *Sender) Pending(peer PeerID) int {
	p, ok := s.peers[peer]
	if !ok {
		return 0
	}
	n := 0
	for i := p.head; i < len(p.queue); i++ {
		if p.slots[p.queue[i]].queued {
			n++
		}
	}
	return n
}

// InFlight returns how many updates to peer await a response.
func (s *Sender) InFlight(peer PeerID) int {
	if p, ok := s.peers[peer]; ok {
		return len(p.inflight)
	}
	return 0
}

// Peers returns the known peers in order.
func (s *Sender) Peers() []PeerID { return s.sortedPeers() }

func (s *Sender) sortedPeers() []PeerID {
	ids := make([]PeerID, 0, len(s.peers))
	for id := range s.peers {
		ids = append(ids, id)
	}
	sortPeers(ids)
	return ids
}

func (p *peerTx) grow(n int) {
	for len(p.slots) < n {
		p.slots = append(p.slots, peerSlot{})
	}
}

// compact drops consumed queue entries once they are the larger part.
func (p *peerTx) compact() {
	if p.head == len(p.queue) {
		p.queue = p.queue[:0]
		p.head = 0
		return
	}
	if p.head > 1024 && p.head*2 > len(p.queue) {
		n := copy(p.queue, p.queue[p.head:])
		p.queue = p.queue[:n]
		p.head = 0
	}
}

// CheckInvariants verifies the sender's internal consistency (DESIGN §6).
func (s *Sender) CheckInvariants() error {
	live := 0
	for i := range s.slots {
		st := &s.slots[i]
		if st.commit > s.commit {
			return fmt.Errorf("slot %d commit %d beyond table commit %d", i, st.commit, s.commit)
		}
		if st.live {
			live++
			if got, ok := s.byID[st.art.ID]; !ok || got != Slot(i) {
				return fmt.Errorf("live slot %d not indexed by its id", i)
			}
		}
	}
	if live != s.live || live != len(s.byID) {
		return fmt.Errorf("live slots %d, counter %d, index %d", live, s.live, len(s.byID))
	}
	if s.free.Len()+live != len(s.slots) {
		return fmt.Errorf("free %d + live %d != slots %d", s.free.Len(), live, len(s.slots))
	}
	seen := make(map[Slot]bool, s.free.Len())
	for _, f := range s.free {
		if s.slots[f].live || seen[f] {
			return fmt.Errorf("free list holds live or repeated slot %d", f)
		}
		seen[f] = true
	}
	if s.live > s.cfg.MaxSlots {
		return fmt.Errorf("live %d above MaxSlots %d", s.live, s.cfg.MaxSlots)
	}
	for _, p := range s.peers {
		if len(p.inflight) > s.cfg.MaxInFlightPerPeer {
			return fmt.Errorf("peer %s: %d in flight above %d", p.id, len(p.inflight), s.cfg.MaxInFlightPerPeer)
		}
		if !p.up && (len(p.inflight) > 0 || p.syncToken != 0) {
			return fmt.Errorf("peer %s is down with transmissions in flight", p.id)
		}
		inQueue := make(map[Slot]bool)
		for i := p.head; i < len(p.queue); i++ {
			inQueue[p.queue[i]] = true
		}
		resync := 0
		for i := range p.slots {
			ps := &p.slots[i]
			if ps.acked > s.slots[i].commit {
				return fmt.Errorf("peer %s slot %d acked commit %d beyond slot commit %d", p.id, i, ps.acked, s.slots[i].commit)
			}
			if ps.queued && !inQueue[Slot(i)] {
				return fmt.Errorf("peer %s slot %d marked queued but not in queue", p.id, i)
			}
			if ps.queued && ps.inflight != 0 {
				return fmt.Errorf("peer %s slot %d both queued and in flight", p.id, i)
			}
			// Pending ⊆ slots whose newest state the peer has not acknowledged.
			if ps.queued && ps.acked == s.slots[i].commit {
				return fmt.Errorf("peer %s slot %d pending although its newest state is acknowledged", p.id, i)
			}
			if ps.inflight != 0 {
				if got, ok := p.inflight[ps.inflight]; !ok || got != Slot(i) {
					return fmt.Errorf("peer %s slot %d in-flight token %d not indexed", p.id, i, ps.inflight)
				}
			}
			// A slot the peer needs is queued or in flight, unless the
			// peer is down or backing off (then it is queued).
			if s.needs(p, Slot(i)) && !ps.queued && ps.inflight == 0 {
				return fmt.Errorf("peer %s slot %d needs sending but is neither queued nor in flight", p.id, i)
			}
			if ps.resync {
				resync++
			}
		}
		if resync != p.resyncLeft {
			return fmt.Errorf("peer %s resync count %d, flags %d", p.id, p.resyncLeft, resync)
		}
		for tok, slot := range p.inflight {
			if int(slot) >= len(p.slots) || p.slots[slot].inflight != tok {
				return fmt.Errorf("peer %s token %d points at slot %d which does not hold it", p.id, tok, slot)
			}
		}
	}
	return nil
}

// slotHeap keeps free slots so that the lowest is reused first, which keeps
// slot numbers dense.
type slotHeap []Slot

func (h slotHeap) Len() int           { return len(h) }
func (h slotHeap) Less(i, j int) bool { return h[i] < h[j] }
func (h slotHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *slotHeap) Push(x any)        { *h = append(*h, x.(Slot)) }
func (h *slotHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// ResetTransmissions forgets every transmission in flight, as if each had
// failed without a response, and sends the slots again at once (no
// backoff). The caller uses it when it lost track of its transmissions, for
// example after the actor that performed them restarted.
func (s *Sender) ResetTransmissions() []Effect {
	var eff []Effect
	for _, id := range s.sortedPeers() {
		p := s.peers[id]
		s.forgetInflight(p)
		p.syncToken = 0
		p.waiting = false
		eff = s.pump(p, eff)
	}
	return eff
}

// forgetInflight drops p's transmissions in flight (no CancelSend: the
// caller knows they are gone) and queues their slots again, in token order
// so that the queue stays deterministic.
func (s *Sender) forgetInflight(p *peerTx) {
	toks := make([]Token, 0, len(p.inflight))
	for tok := range p.inflight {
		toks = append(toks, tok)
	}
	slices.Sort(toks)
	for _, tok := range toks {
		slot := p.inflight[tok]
		delete(p.inflight, tok)
		p.slots[slot].inflight = 0
		s.enqueue(p, slot)
	}
}

// DescribePeer says what the sender knows of peer, for diagnostics.
func (s *Sender) DescribePeer(peer PeerID) string {
	p, ok := s.peers[peer]
	if !ok {
		return "unknown"
	}
	return fmt.Sprintf("up %v conn %d waiting %v until %v backoff %v queue %d/%d inflight %d sync %d needSync %v resync %d",
		p.up, p.conn, p.waiting, p.waitUntil.Format("15:04:05.000"), p.backoff, p.head, len(p.queue), len(p.inflight), p.syncToken, p.needSync, p.resyncLeft)
}
