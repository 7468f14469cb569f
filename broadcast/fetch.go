package broadcast

import (
	"fmt"
	"time"
)

// The fetch policy: which advertiser each attempt goes to, how long it may
// take, and how long to pause when every advertiser failed. It lives in the
// core so that the actors and the simulator run the same decisions; the
// caller only performs FetchAttempt effects and reports how each ended.
//
// A running fetch makes one attempt at a time. Attempts rotate over the
// advertisers from a random starting point (so that receivers do not all
// start with the same peer), skipping peers that recently failed: a peer
// that failed is avoided for one round over the advertisers, one that
// served wrong or undecodable bytes for four. After a failure the next
// advertiser is tried at once, until a whole round has failed since the
// last pause; then the fetch pauses for a jittered backoff that grows with
// the attempts made. The attempt timeout doubles with every round. An
// advertiser that joins a pausing fetch ends the pause.

// FetchAttempt asks the caller to request ID from Peer, to give up after
// Timeout, and to report the outcome for Token with FetchDone, FetchFailed
// or FetchInvalid. CancelFetch ends every attempt of ID.
type FetchAttempt struct {
	ID      ArtifactID
	Peer    PeerID
	Token   Token
	Timeout time.Duration
}

// CancelFetch stops every attempt of ID: no peer advertises it any more.
type CancelFetch struct{ ID ArtifactID }

// fetchRun is the policy state of one running fetch.
type fetchRun struct {
	attempts int // attempts started
	streak   int // failures since the last pause (or the start)
	next     int // index in the advertiser list where the next pick starts
	avoid    []avoidance
	tok      Token // the attempt in flight; 0 while pausing
	peer     PeerID
	pause    time.Time // while tok is 0: when the next attempt is due
}

// avoidance skips peer while the fetch has made fewer than until attempts.
type avoidance struct {
	peer  PeerID
	until int
}

// avoidedUntil is the attempt count below which p is skipped (0: never).
func (f *fetchRun) avoidedUntil(p PeerID) int {
	for _, a := range f.avoid {
		if a.peer == p {
			return a.until
		}
	}
	return 0
}

func (f *fetchRun) setAvoid(p PeerID, until int) {
	for i := range f.avoid {
		if f.avoid[i].peer == p {
			f.avoid[i].until = max(f.avoid[i].until, until)
			return
		}
	}
	f.avoid = append(f.avoid, avoidance{p, until})
}

// dropAvoid forgets peers no longer in the advertiser list, so the list
// stays as small as the advertiser set.
func (f *fetchRun) dropAvoid(st *idState) {
	out := f.avoid[:0]
	for _, a := range f.avoid {
		if st.adv.peerCount(a.peer) > 0 {
			out = append(out, a)
		}
	}
	clear(f.avoid[len(out):])
	f.avoid = out
}

// startRun begins the policy for a fetch that just entered phaseFetching.
func (r *Receiver) startRun(id ArtifactID, st *idState, eff []Effect) []Effect {
	st.run = &fetchRun{next: r.intN(len(st.peerList()))}
	return r.attempt(id, st, eff)
}

// attempt sends the next attempt of a running fetch.
func (r *Receiver) attempt(id ArtifactID, st *idState, eff []Effect) []Effect {
	f := st.run
	peers := st.peerList()
	// The first peer in rotation order that is not avoided, or else the
	// one whose avoidance ends first: a peer that served wrong bytes is
	// asked only after those that merely failed.
	best, bestUntil := 0, -1
	for i := range peers {
		until := f.avoidedUntil(peers[(f.next+i)%len(peers)])
		if bestUntil < 0 || until < bestUntil {
			best, bestUntil = i, until
		}
		if until <= f.attempts {
			break
		}
	}
	pick := peers[(f.next+best)%len(peers)]
	f.next = (f.next + best + 1) % len(peers)
	rounds := f.attempts / len(peers)
	f.attempts++
	r.nextToken++
	f.tok, f.peer, f.pause = r.nextToken, pick, time.Time{}
	delete(r.pausing, id)
	r.attempts[f.tok] = id
	r.stats.FetchAttempts++
	timeout := r.cfg.FetchTimeoutMax
	if rounds < 16 {
		timeout = min(r.cfg.FetchTimeoutMin<<rounds, r.cfg.FetchTimeoutMax)
	}
	return append(eff, FetchAttempt{ID: id, Peer: pick, Token: f.tok, Timeout: timeout})
}

// attemptOf resolves a reported token; ok is false for a token that is not
// the current attempt of a running fetch (cancelled, restarted, repeated).
func (r *Receiver) attemptOf(tok Token) (ArtifactID, *idState, bool) {
	id, ok := r.attempts[tok]
	if !ok {
		r.stats.LateFetchResults++
		return "", nil, false
	}
	delete(r.attempts, tok)
	st := r.ids[id]
	return id, st, true
}

// failed ends the current attempt of a fetch unsuccessfully: the peer is
// avoided for rounds rounds, and the fetch tries the next advertiser or
// pauses.
func (r *Receiver) failed(id ArtifactID, st *idState, rounds int, now time.Time, eff []Effect) []Effect {
	f := st.run
	f.tok = 0
	n := len(st.peerList())
	if st.adv.peerCount(f.peer) > 0 {
		f.setAvoid(f.peer, f.attempts+rounds*n)
	}
	f.streak++
	if f.streak < n {
		return r.attempt(id, st, eff)
	}
	f.streak = 0
	d := r.cfg.FetchBackoffMax
	if f.attempts < 32 {
		d = min(r.cfg.FetchBackoffMin<<min(f.attempts, 16), r.cfg.FetchBackoffMax)
	}
	d = d/2 + time.Duration(r.uint64()%uint64(d/2+1))
	f.pause = now.Add(d)
	r.pausing[id] = struct{}{}
	return r.announce(f.pause, eff)
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

// FetchDone reports the artifact an attempt received. A token that is not
// a running attempt is ignored (counted as LateFetchResults). An artifact
// that fails the id check or the verifier returns an error wrapping
// ErrMismatch, is counted against the peer, and the fetch goes on with
// another advertiser (the effects say which, or when).
func (r *Receiver) FetchDone(tok Token, a Artifact, now time.Time) ([]Effect, error) {
	id, st, ok := r.attemptOf(tok)
	if !ok {
		return nil, nil
	}
	from := st.run.peer
	if err := r.verify(id, a); err != nil {
		if p, ok := r.peers[from]; ok {
			p.stats.Mismatch++
		}
		return r.failed(id, st, 4, now, nil), fmt.Errorf("fetch from %s: %w", from, err)
	}
	r.endFetch(id, st)
	st.phase = phaseDelivered
	r.waiting++
	r.stats.Delivered++
	return r.pump([]Effect{Deliver{Artifact: a, From: from}}), nil
}

// FetchFailed reports an attempt that brought nothing: no answer within its
// timeout, a transport error, or "not found". It counts as a fetch failure
// of the peer.
func (r *Receiver) FetchFailed(tok Token, now time.Time) []Effect {
	return r.attemptFailed(tok, now, 1, func(s *PeerStats) { s.FetchFailures++ })
}

// FetchInvalid reports an attempt whose response did not decode: the peer
// sent bytes no honest peer sends, so it is counted as a bad response and
// avoided as long as one that served wrong bytes.
func (r *Receiver) FetchInvalid(tok Token, now time.Time) []Effect {
	return r.attemptFailed(tok, now, 4, func(s *PeerStats) { s.BadResponses++ })
}

func (r *Receiver) attemptFailed(tok Token, now time.Time, rounds int, count func(*PeerStats)) []Effect {
	id, st, ok := r.attemptOf(tok)
	if !ok {
		return nil
	}
	if p, ok := r.peers[st.run.peer]; ok {
		count(&p.stats)
	}
	return r.failed(id, st, rounds, now, nil)
}

// Tick starts the attempts of fetches whose pause has ended and announces
// the earliest pause still running.
func (r *Receiver) Tick(now time.Time) []Effect {
	r.announced = time.Time{}
	var eff []Effect
	var next time.Time
	for _, id := range sortedKeys(r.pausing) {
		st := r.ids[id]
		if now.Before(st.run.pause) {
			next = earliest(next, st.run.pause)
			continue
		}
		eff = r.attempt(id, st, eff)
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
// made again, and the earliest pause is announced again. Fetches keep their
// charges and credits.
func (r *Receiver) RestartFetches() []Effect {
	r.announced = time.Time{}
	var eff []Effect
	var next time.Time
	for _, id := range sortedIDs(r.ids) {
		st := r.ids[id]
		if st.phase != phaseFetching {
			continue
		}
		if st.run.tok == 0 {
			next = earliest(next, st.run.pause)
			continue
		}
		delete(r.attempts, st.run.tok)
		eff = r.attempt(id, st, eff)
	}
	if !next.IsZero() {
		eff = r.announce(next, eff)
	}
	return eff
}

// advertiserJoined is called when a peer starts advertising a fetching id:
// a fetch that pauses because every advertiser failed tries it at once.
func (r *Receiver) advertiserJoined(id ArtifactID, st *idState, eff []Effect) []Effect {
	if st.run.tok != 0 {
		return eff
	}
	st.run.streak = 0
	return r.attempt(id, st, eff)
}

// endRun forgets a fetch's policy state and its attempt in flight.
func (r *Receiver) endRun(id ArtifactID, st *idState) {
	if st.run.tok != 0 {
		delete(r.attempts, st.run.tok)
	}
	delete(r.pausing, id)
	st.run = nil
}

// checkRuns verifies the fetch policy's bookkeeping against the phases.
func (r *Receiver) checkRuns() error {
	running := 0
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
		_, paused := r.pausing[id]
		switch {
		case f.tok != 0 && (paused || r.attempts[f.tok] != id):
			return fmt.Errorf("fetch of %x: attempt %d not indexed, or indexed while pausing", []byte(id), f.tok)
		case f.tok == 0 && (!paused || f.pause.IsZero()):
			return fmt.Errorf("fetch of %x has neither an attempt nor a pause", []byte(id))
		}
		if f.tok != 0 {
			running++
		}
		if len(f.avoid) > st.adv.len() {
			return fmt.Errorf("fetch of %x avoids %d peers, %d advertise it", []byte(id), len(f.avoid), st.adv.len())
		}
	}
	if running != len(r.attempts) {
		return fmt.Errorf("%d attempts indexed, %d running", len(r.attempts), running)
	}
	for id := range r.pausing {
		if st, ok := r.ids[id]; !ok || st.phase != phaseFetching {
			return fmt.Errorf("pausing fetch of %x is not fetching", []byte(id))
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

func (r *Receiver) intN(n int) int { return int(r.uint64() % uint64(n)) }
