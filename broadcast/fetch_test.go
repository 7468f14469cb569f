package broadcast

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func attempts(eff []Effect) []FetchAttempt { return only[FetchAttempt](eff) }
func retries(eff []Effect) []RetryAt       { return only[RetryAt](eff) }

func oneAttempt(t *testing.T, eff []Effect) FetchAttempt {
	t.Helper()
	a := attempts(eff)
	if len(a) != 1 {
		t.Fatalf("want one attempt, got %s", kindsOf(eff))
	}
	return a[0]
}

func fetchCfg(c *ReceiverConfig) {
	c.FetchTimeoutMin, c.FetchTimeoutMax = time.Second, 8*time.Second
	c.FetchBackoffMin, c.FetchBackoffMax = 100*time.Millisecond, 2*time.Second
}

func TestFetchTriesEveryAdvertiserOnceThenPausesWithJitteredBackoff(t *testing.T) {
	r := newTestReceiver(t, fetchCfg, "p", "q", "s")
	apply(t, r, "p", 1, advert(1, 0, "a"))
	apply(t, r, "q", 1, advert(1, 0, "a"))
	apply(t, r, "s", 1, advert(1, 0, "a"))
	// p started the fetch alone; q and s joined while its attempt ran.
	at := r.ids["a"].run
	if at.tok == 0 || at.peer != "p" {
		t.Fatalf("first attempt %+v", at)
	}
	now := t0
	seen := map[PeerID]bool{"p": true}
	tok := at.tok
	for i := 0; i < 2; i++ {
		eff := r.FetchFailed(tok, now)
		checkR(t, r)
		a := oneAttempt(t, eff)
		if seen[a.Peer] {
			t.Fatalf("attempt %d went to %s again before the others were tried", i+2, a.Peer)
		}
		seen[a.Peer] = true
		tok = a.Token
	}
	// The whole round failed: the fetch pauses, and says until when.
	eff := r.FetchFailed(tok, now)
	checkR(t, r)
	if len(attempts(eff)) != 0 || len(retries(eff)) != 1 {
		t.Fatalf("after a failed round: %s, want only a RetryAt", kindsOf(eff))
	}
	// Backoff after 3 attempts: 100ms<<3 = 800ms, jittered into [400, 800].
	pause := retries(eff)[0].At.Sub(now)
	if pause < 400*time.Millisecond || pause > 800*time.Millisecond {
		t.Fatalf("pause %v, want 400..800ms", pause)
	}
	// Early ticks start nothing and name the pause again.
	eff = r.Tick(now.Add(pause / 2))
	if len(attempts(eff)) != 0 || len(retries(eff)) != 1 || retries(eff)[0].At != now.Add(pause) {
		t.Fatalf("early tick: %s", kindsOf(eff))
	}
	a := oneAttempt(t, r.Tick(now.Add(pause)))
	checkR(t, r)
	// The second round gets a doubled timeout.
	if a.Timeout != 2*time.Second {
		t.Fatalf("second round timeout %v, want 2s", a.Timeout)
	}
	if r.PeerStats("p").FetchFailures+r.PeerStats("q").FetchFailures+r.PeerStats("s").FetchFailures != 3 {
		t.Fatalf("failures not counted per peer")
	}
}

func TestFetchTimeoutDoublesPerRoundUpToItsCap(t *testing.T) {
	r := newTestReceiver(t, fetchCfg, "p")
	a := oneAttempt(t, apply(t, r, "p", 1, advert(1, 0, "a")))
	now := t0
	var got []time.Duration
	for range 6 {
		got = append(got, a.Timeout)
		eff := r.FetchFailed(a.Token, now)
		now = retries(eff)[0].At
		a = oneAttempt(t, r.Tick(now))
		checkR(t, r)
	}
	if fmt.Sprint(got) != "[1s 2s 4s 8s 8s 8s]" {
		t.Fatalf("timeouts %v", got)
	}
}

func TestFetchAvoidsPeerThatServedWrongBytes(t *testing.T) {
	r := newTestReceiver(t, func(c *ReceiverConfig) {
		fetchCfg(c)
		c.Verify = func(a Artifact) error {
			if string(a.Payload) == "forged" {
				return errors.New("forged")
			}
			return nil
		}
	}, "byz", "honest")
	apply(t, r, "byz", 1, advert(1, 0, "a"))
	apply(t, r, "honest", 1, advert(1, 0, "a"))
	tok := attemptTo(t, r, "a", "byz")
	now := t0
	eff, err := r.FetchDone(tok, Artifact{ID: "a", Payload: []byte("forged")}, now)
	if !errors.Is(err, ErrMismatch) {
		t.Fatalf("forged artifact: %v", err)
	}
	checkR(t, r)
	// The honest peer is asked next, and keeps being asked while it fails:
	// byz is skipped for four rounds, not one.
	for i := range 6 {
		a := oneAttempt(t, eff)
		if a.Peer != "honest" {
			t.Fatalf("attempt %d after wrong bytes went to %s", i, a.Peer)
		}
		eff = r.FetchFailed(a.Token, now)
		if rs := retries(eff); len(rs) > 0 {
			now = rs[0].At
			eff = r.Tick(now)
		}
		checkR(t, r)
	}
	if st := r.PeerStats("byz"); st.Mismatch != 1 {
		t.Fatalf("byz stats %+v", st)
	}
}

func TestFetchInvalidResponseIsABadResponseNotAFailure(t *testing.T) {
	r := newTestReceiver(t, fetchCfg, "p", "q")
	apply(t, r, "p", 1, advert(1, 0, "a"))
	apply(t, r, "q", 1, advert(1, 0, "a"))
	eff := r.FetchInvalid(attemptTo(t, r, "a", "p"), t0)
	checkR(t, r)
	if a := oneAttempt(t, eff); a.Peer != "q" {
		t.Fatalf("after a bad response from p the fetch asked %s", a.Peer)
	}
	if st := r.PeerStats("p"); st.BadResponses != 1 || st.FetchFailures != 0 {
		t.Fatalf("p stats %+v, want one bad response and no failure", st)
	}
}

func TestFetchPauseEndsWhenANewAdvertiserJoins(t *testing.T) {
	r := newTestReceiver(t, fetchCfg, "p", "q")
	a := oneAttempt(t, apply(t, r, "p", 1, advert(1, 0, "a")))
	if rs := retries(r.FetchFailed(a.Token, t0)); len(rs) != 1 {
		t.Fatalf("no pause after the only advertiser failed")
	}
	checkR(t, r)
	// q appears while the fetch pauses: it is asked at once.
	if b := oneAttempt(t, apply(t, r, "q", 1, advert(1, 0, "a"))); b.Peer != "q" {
		t.Fatalf("new advertiser not asked: %+v", b)
	}
}

func TestFetchCancelledWhenNoLongerAdvertisedIgnoresLateOutcomes(t *testing.T) {
	r := newTestReceiver(t, fetchCfg, "p")
	a := oneAttempt(t, apply(t, r, "p", 1, advert(1, 0, "a")))
	expect(t, apply(t, r, "p", 1, clearedU(2, 0)), "cancel(a) ")
	if eff := r.FetchFailed(a.Token, t0); len(eff) != 0 {
		t.Fatalf("late failure produced %s", kindsOf(eff))
	}
	if eff, err := r.FetchDone(a.Token, Artifact{ID: "a"}, t0); len(eff) != 0 || err != nil {
		t.Fatalf("late result produced %s, %v", kindsOf(eff), err)
	}
	if r.Stats().LateFetchResults != 2 || r.IDs() != 0 {
		t.Fatalf("stats %+v ids %d", r.Stats(), r.IDs())
	}
	checkR(t, r)
}

func TestFetchRetryAtAnnouncesOnlyEarlierDeadlines(t *testing.T) {
	r := newTestReceiver(t, fetchCfg, "p")
	a := oneAttempt(t, apply(t, r, "p", 1, advert(1, 0, "a")))
	b := oneAttempt(t, apply(t, r, "p", 1, advert(2, 1, "b")))
	first := retries(r.FetchFailed(a.Token, t0))
	if len(first) != 1 {
		t.Fatal("first pause not announced")
	}
	// A later pause is not announced: the caller's timer is earlier.
	if later := retries(r.FetchFailed(b.Token, t0.Add(time.Second))); len(later) != 0 {
		t.Fatalf("later pause announced: %+v", later)
	}
	checkR(t, r)
	// When the timer fires, the tick retries a and names b's pause.
	eff := r.Tick(first[0].At)
	if got := attempts(eff); len(got) != 1 || got[0].ID != "a" {
		t.Fatalf("tick at a's pause: %s", kindsOf(eff))
	}
	if rs := retries(eff); len(rs) != 1 || !rs[0].At.After(t0.Add(time.Second)) {
		t.Fatalf("tick did not name b's pause: %+v", rs)
	}
}

func TestFetchRestartRepeatsAttemptsWithNewTokens(t *testing.T) {
	r := newTestReceiver(t, fetchCfg, "p")
	a := oneAttempt(t, apply(t, r, "p", 1, advert(1, 0, "a")))
	b := oneAttempt(t, apply(t, r, "p", 1, advert(2, 1, "b")))
	pause := retries(r.FetchFailed(b.Token, t0))[0]
	eff := r.RestartFetches()
	checkR(t, r)
	got := attempts(eff)
	if len(got) != 1 || got[0].ID != "a" || got[0].Token == a.Token {
		t.Fatalf("restart: %s", kindsOf(eff))
	}
	if rs := retries(eff); len(rs) != 1 || rs[0].At != pause.At {
		t.Fatalf("restart did not announce b's pause again: %s", kindsOf(eff))
	}
	if eff := r.FetchFailed(a.Token, t0); len(eff) != 0 {
		t.Fatalf("outcome of a forgotten attempt produced %s", kindsOf(eff))
	}
}

func TestFetchFirstPickDependsOnSeed(t *testing.T) {
	// Receivers with different seeds spread their first attempts over the
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
		return oneAttempt(t, r.Reevaluate()).Peer
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
