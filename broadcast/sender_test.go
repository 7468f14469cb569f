package broadcast

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

var t0 = time.Unix(1_700_000_000, 0)

func newTestSender(t *testing.T, mut func(*SenderConfig)) *Sender {
	t.Helper()
	cfg := DefaultSenderConfig()
	if mut != nil {
		mut(&cfg)
	}
	s, err := NewSender(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func checkS(t *testing.T, s *Sender) {
	t.Helper()
	if err := s.CheckInvariants(); err != nil {
		t.Fatalf("sender invariant: %v", err)
	}
}

func small(id string) Artifact { return Artifact{ID: ArtifactID(id), Payload: []byte("p-" + id)} }
func large(id string) Artifact {
	return Artifact{ID: ArtifactID(id), Attribute: []byte("a"), Payload: []byte(strings.Repeat("x", 4096))}
}

// only returns the effects of type T, in order.
func only[T Effect](eff []Effect) []T {
	var out []T
	for _, e := range eff {
		if x, ok := e.(T); ok {
			out = append(out, x)
		}
	}
	return out
}

func sends(eff []Effect) []SendUpdate   { return only[SendUpdate](eff) }
func cancels(eff []Effect) []CancelSend { return only[CancelSend](eff) }

// ackAll acknowledges every send in eff (and what those acks release) and
// returns all updates the peer ended up receiving.
func ackAll(t *testing.T, s *Sender, eff []Effect) []SlotUpdate {
	t.Helper()
	var got []SlotUpdate
	queue := sends(eff)
	for len(queue) > 0 {
		su := queue[0]
		queue = queue[1:]
		got = append(got, su.Update)
		queue = append(queue, sends(s.Acked(su.Peer, su.Token))...)
		checkS(t, s)
	}
	return got
}

func mustPublish(t *testing.T, s *Sender, a Artifact) []Effect {
	t.Helper()
	eff, err := s.Publish(a)
	if err != nil {
		t.Fatalf("publish %q: %v", a.ID, err)
	}
	checkS(t, s)
	return eff
}

func TestSenderReusesFreedSlotsLowestFirstAndBumpsCommit(t *testing.T) {
	s := newTestSender(t, nil)
	for _, id := range []string{"a", "b", "c"} {
		mustPublish(t, s, small(id))
	}
	if s.Commit() != 3 {
		t.Fatalf("commit after 3 publishes = %d, want 3", s.Commit())
	}
	for _, id := range []string{"c", "a"} {
		if _, err := s.Abort(ArtifactID(id)); err != nil {
			t.Fatal(err)
		}
	}
	if s.Commit() != 5 {
		t.Fatalf("commit after 2 aborts = %d, want 5", s.Commit())
	}
	s.PeerUp("p", 1)
	eff := mustPublish(t, s, small("d"))
	if got := sends(eff); len(got) != 1 || got[0].Update.Slot != 0 || got[0].Update.Commit != 6 {
		t.Fatalf("d should reuse slot 0 at commit 6, got %+v", got)
	}
	eff = mustPublish(t, s, small("e"))
	if got := sends(eff); len(got) != 1 || got[0].Update.Slot != 2 {
		t.Fatalf("e should reuse slot 2, got %+v", got)
	}
}

func TestSenderLiveSlotBoundRefusesAndChangesNothing(t *testing.T) {
	s := newTestSender(t, func(c *SenderConfig) { c.MaxSlots = 2 })
	mustPublish(t, s, small("a"))
	mustPublish(t, s, small("b"))
	commit := s.Commit()
	_, err := s.Publish(small("c"))
	if !errors.Is(err, ErrSlotsExhausted) {
		t.Fatalf("third publish: %v, want ErrSlotsExhausted", err)
	}
	if s.Commit() != commit || s.Live() != 2 || s.Stats().RefusedFull != 1 {
		t.Fatalf("refused publish changed state: commit %d live %d stats %+v", s.Commit(), s.Live(), s.Stats())
	}
	if _, ok := s.Lookup("c"); ok {
		t.Fatal("refused artifact is visible")
	}
	checkS(t, s)
}

func TestSenderPushOrAdvertDecision(t *testing.T) {
	s := newTestSender(t, nil)
	s.PeerUp("p", 1)
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(i*131 + i/251)
		}
		return b
	}
	cases := []struct {
		a    Artifact
		want UpdateKind
	}{
		{small("small"), KindPush},
		{large("large"), KindAdvert},
		{Artifact{ID: "urgent", Attribute: []byte("u"), Payload: random(100 << 10), LatencySensitive: true}, KindPush},
		// Latency-sensitive but above MaxPushSize: advertised all the same.
		{Artifact{ID: "huge", Payload: random(1 << 20), LatencySensitive: true}, KindAdvert},
		{Artifact{ID: "edge", Payload: make([]byte, 1024)}, KindAdvert},
	}
	for _, c := range cases {
		eff := mustPublish(t, s, c.a)
		got := sends(eff)
		if len(got) != 1 || got[0].Update.Kind != c.want {
			t.Fatalf("%s: got %+v, want kind %v", c.a.ID, got, c.want)
		}
		u := got[0].Update.Artifact
		if u.ID != c.a.ID || !bytes.Equal(u.Attribute, c.a.Attribute) {
			t.Fatalf("%s: update names %q with attribute %q", c.a.ID, u.ID, u.Attribute)
		}
		if c.want == KindAdvert && u.Payload != nil {
			t.Fatalf("%s: advert carries the payload", c.a.ID)
		}
		if c.want == KindPush && (!bytes.Equal(u.Payload, c.a.Payload) || u.LatencySensitive != c.a.LatencySensitive) {
			t.Fatalf("%s: push does not carry the published payload and flag", c.a.ID)
		}
	}
}

func TestSenderDuplicatePublishAndUnknownAbortAreCountedNoOps(t *testing.T) {
	s := newTestSender(t, nil)
	mustPublish(t, s, small("a"))
	if _, err := s.Publish(small("a")); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("duplicate publish: %v", err)
	}
	if _, err := s.Abort("zzz"); !errors.Is(err, ErrUnknownID) {
		t.Fatalf("unknown abort: %v", err)
	}
	if _, err := s.Abort("a"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Abort("a"); !errors.Is(err, ErrUnknownID) {
		t.Fatalf("second abort: %v", err)
	}
	st := s.Stats()
	if st.DuplicatePublish != 1 || st.UnknownAbort != 2 || s.Commit() != 2 {
		t.Fatalf("stats %+v commit %d", st, s.Commit())
	}
	checkS(t, s)
}

func TestSenderCoalescesToNewestStateBeforeSending(t *testing.T) {
	s := newTestSender(t, func(c *SenderConfig) { c.MaxInFlightPerPeer = 1 })
	s.PeerUp("p", 1)
	first := sends(mustPublish(t, s, small("blocker"))) // occupies the one in-flight place
	mustPublish(t, s, small("a"))
	if _, err := s.Abort("a"); err != nil {
		t.Fatal(err)
	}
	mustPublish(t, s, small("b")) // reuses a's slot
	got := ackAll(t, s, []Effect{first[0]})
	// blocker, then one update for slot 1 carrying b: a was never sent, so
	// neither a nor its clearing costs anything.
	if len(got) != 2 || got[1].Slot != 1 || got[1].Artifact.ID != "b" {
		t.Fatalf("updates %+v, want blocker then b in slot 1", got)
	}
}

func TestSenderCancelsSupersededInFlightUpdate(t *testing.T) {
	s := newTestSender(t, nil)
	s.PeerUp("p", 1)
	s.PeerUp("q", 1)
	eff := mustPublish(t, s, large("a"))
	sent := sends(eff)
	if len(sent) != 2 {
		t.Fatalf("want one send per peer, got %+v", sent)
	}
	eff, err := s.Abort("a")
	if err != nil {
		t.Fatal(err)
	}
	checkS(t, s)
	c := cancels(eff)
	if len(c) != 2 || c[0].Token != sent[0].Token || c[1].Token != sent[1].Token {
		t.Fatalf("abort should cancel both transmissions, got %+v", c)
	}
	// Both peers may have received the advert, so both get cleared.
	cleared := sends(eff)
	if len(cleared) != 2 || cleared[0].Update.Kind != KindCleared {
		t.Fatalf("want cleared to both peers, got %+v", cleared)
	}
	// A late ack of the cancelled transmission is ignored.
	if e := s.Acked("p", sent[0].Token); len(e) != 0 {
		t.Fatalf("late ack produced %+v", e)
	}
	if s.Stats().UnknownTokens != 1 {
		t.Fatalf("late ack not counted: %+v", s.Stats())
	}
	checkS(t, s)
}

func TestSenderAbortSendsNothingToPeersThatNeverHeldTheSlot(t *testing.T) {
	s := newTestSender(t, nil)
	s.PeerUp("p", 1)
	mustPublish(t, s, small("a"))
	s.PeerDown("p")
	// q joins while a is live but disconnected from p
	eff, err := s.Abort("a")
	if err != nil {
		t.Fatal(err)
	}
	if len(sends(eff)) != 0 {
		t.Fatalf("abort sent %+v while peer is down", eff)
	}
	// p was sent a (so may hold it): on reconnect it gets the cleared update.
	got := ackAll(t, s, s.PeerUp("p", 2))
	if len(got) != 2 || got[0].Kind != KindCleared || got[1].Kind != KindSync {
		t.Fatalf("after reconnect p got %+v, want cleared then sync", got)
	}
	// A peer that never saw the slot gets only the sync.
	got = ackAll(t, s, s.PeerUp("fresh", 1))
	if len(got) != 1 || got[0].Kind != KindSync {
		t.Fatalf("fresh peer got %+v, want only sync", got)
	}
}

func TestSenderOnlySuccessfulResponsesCountAndFailureBacksOff(t *testing.T) {
	s := newTestSender(t, nil)
	s.PeerUp("p", 1)
	sent := sends(mustPublish(t, s, small("a")))
	eff := s.Failed("p", sent[0].Token, t0)
	checkS(t, s)
	var retry RetryAt
	for _, e := range eff {
		if r, ok := e.(RetryAt); ok {
			retry = r
		}
	}
	if retry.At != t0.Add(250*time.Millisecond) {
		t.Fatalf("retry at %v, want t0+250ms (effects %+v)", retry.At, eff)
	}
	if len(sends(eff)) != 0 {
		t.Fatal("resent during backoff")
	}
	early := s.Tick(t0.Add(100 * time.Millisecond))
	if len(sends(early)) != 0 {
		t.Fatal("resent before backoff ended")
	}
	// A tick before the pause ends names the pause again, so a caller that
	// keeps only one timer does not lose this peer's retry.
	if len(early) != 1 || early[0].(RetryAt).At != t0.Add(250*time.Millisecond) {
		t.Fatalf("early tick returned %+v, want the pending RetryAt", early)
	}
	again := sends(s.Tick(t0.Add(250 * time.Millisecond)))
	if len(again) != 1 || again[0].Update.Artifact.ID != "a" {
		t.Fatalf("after backoff got %+v", again)
	}
	// Second failure doubles the pause.
	eff = s.Failed("p", again[0].Token, t0.Add(time.Second))
	if r := eff[0].(RetryAt); r.At != t0.Add(time.Second+500*time.Millisecond) {
		t.Fatalf("second retry at %v", r.At)
	}
	checkS(t, s)
}

func TestSenderBackoffIsCapped(t *testing.T) {
	s := newTestSender(t, func(c *SenderConfig) { c.RetryBackoffMax = time.Second })
	s.PeerUp("p", 1)
	tok := sends(mustPublish(t, s, small("a")))[0].Token
	now := t0
	var last RetryAt
	for range 10 {
		last = s.Failed("p", tok, now)[0].(RetryAt)
		now = last.At
		tok = sends(s.Tick(now))[0].Token
	}
	if got := s.Failed("p", tok, now)[0].(RetryAt).At.Sub(now); got != time.Second {
		t.Fatalf("pause %v, want capped at 1s", got)
	}
}

func TestSenderResendsEverythingToReconnectedPeer(t *testing.T) {
	// Reference scenario: resend to a reconnected peer — at once, not on a poll.
	s := newTestSender(t, nil)
	eff := s.PeerUp("p", 1) // nothing to resync: the Sync goes out at once
	for _, id := range []string{"a", "b", "c"} {
		eff = append(eff, mustPublish(t, s, small(id))...)
	}
	got := ackAll(t, s, eff)
	if len(got) != 4 { // a, b, c, sync
		t.Fatalf("first connection got %d updates: %+v", len(got), got)
	}
	s.PeerDown("p")
	if _, err := s.Abort("b"); err != nil {
		t.Fatal(err)
	}
	checkS(t, s)
	got = ackAll(t, s, s.PeerUp("p", 2))
	kinds := map[Slot]UpdateKind{}
	for _, u := range got[:len(got)-1] {
		kinds[u.Slot] = u.Kind
	}
	if len(got) != 4 || kinds[0] != KindPush || kinds[1] != KindCleared || kinds[2] != KindPush || got[3].Kind != KindSync {
		t.Fatalf("reconnect sent %+v, want a, cleared b, c, then sync", got)
	}
	// A stale (older) connection event changes nothing.
	if eff := s.PeerUp("p", 1); eff != nil {
		t.Fatalf("older conn produced %+v", eff)
	}
	// Everything acknowledged: nothing pending.
	if s.Pending("p") != 0 || s.InFlight("p") != 0 {
		t.Fatalf("pending %d inflight %d", s.Pending("p"), s.InFlight("p"))
	}
}

func TestSenderSyncWaitsForResyncAcks(t *testing.T) {
	s := newTestSender(t, nil)
	mustPublish(t, s, small("a"))
	mustPublish(t, s, small("b"))
	sent := sends(s.PeerUp("p", 1))
	if len(sent) != 2 {
		t.Fatalf("want a and b, got %+v", sent)
	}
	if got := sends(s.Acked("p", sent[0].Token)); len(got) != 0 {
		t.Fatalf("sync sent before every resync slot was acked: %+v", got)
	}
	// A publish after connecting is not part of the resync.
	mustPublish(t, s, small("c"))
	got := sends(s.Acked("p", sent[1].Token))
	if len(got) != 1 || got[0].Update.Kind != KindSync {
		t.Fatalf("want sync once a and b are acked, got %+v", got)
	}
	checkS(t, s)
}

func TestSenderRespectsInFlightLimit(t *testing.T) {
	s := newTestSender(t, func(c *SenderConfig) { c.MaxInFlightPerPeer = 3 })
	ackAll(t, s, s.PeerUp("p", 1))
	var eff []Effect
	for i := range 10 {
		eff = append(eff, mustPublish(t, s, small(string(rune('a'+i))))...)
	}
	if n := len(sends(eff)); n != 3 {
		t.Fatalf("%d sends with limit 3", n)
	}
	if s.InFlight("p") != 3 || s.Pending("p") != 7 {
		t.Fatalf("inflight %d pending %d", s.InFlight("p"), s.Pending("p"))
	}
	if got := ackAll(t, s, eff); len(got) != 10 {
		t.Fatalf("got %d updates, want 10", len(got))
	}
}

func TestSenderRemovePeerCancelsItsTransmissions(t *testing.T) {
	s := newTestSender(t, nil)
	ackAll(t, s, s.PeerUp("p", 1))
	sent := sends(mustPublish(t, s, small("a")))
	eff := s.RemovePeer("p")
	if c := cancels(eff); len(c) != 1 || c[0].Token != sent[0].Token {
		t.Fatalf("remove cancelled %+v", c)
	}
	if len(s.Peers()) != 0 {
		t.Fatal("peer not forgotten")
	}
	// Later changes send nothing to the removed peer.
	if eff := mustPublish(t, s, small("b")); len(eff) != 0 {
		t.Fatalf("removed peer still sent %+v", eff)
	}
}

func TestSenderConfigValidation(t *testing.T) {
	bad := []func(*SenderConfig){
		func(c *SenderConfig) { c.MaxSlots = 0 },
		func(c *SenderConfig) { c.PushThreshold = -1 },
		func(c *SenderConfig) { c.MaxInFlightPerPeer = 0 },
		func(c *SenderConfig) { c.RetryBackoffMin = 0 },
		func(c *SenderConfig) { c.RetryBackoffMax = c.RetryBackoffMin / 2 },
		func(c *SenderConfig) { c.MaxPushSize = c.PushThreshold - 1 },
		func(c *SenderConfig) { c.UpdateTimeout = 0 },
		func(c *SenderConfig) { c.UpdateTimeoutPerMiB = -1 },
		func(c *SenderConfig) { c.UpdateTimeoutMax = c.UpdateTimeout / 2 },
	}
	for i, mut := range bad {
		cfg := DefaultSenderConfig()
		mut(&cfg)
		if _, err := NewSender(cfg); !errors.Is(err, ErrInvalid) {
			t.Errorf("case %d: %v, want ErrInvalid", i, err)
		}
	}
	if _, err := NewSender(DefaultSenderConfig()); err != nil {
		t.Fatal(err)
	}
}

func TestEncodedSizeMatchesProtobufFormula(t *testing.T) {
	// 1 tag + 1 len + 1 byte id; 1 + 2 + 200 payload; flag 2.
	a := Artifact{ID: "x", Payload: make([]byte, 200), LatencySensitive: true}
	if got := EncodedSize(a); got != 3+203+2 {
		t.Fatalf("EncodedSize = %d", got)
	}
}

func TestSenderResetTransmissionsResendsInFlight(t *testing.T) {
	s := newTestSender(t, nil)
	ackAll(t, s, s.PeerUp("p", 1))
	first := sends(mustPublish(t, s, small("a")))
	eff := s.ResetTransmissions()
	checkS(t, s)
	again := sends(eff)
	if len(again) != 1 || again[0].Token == first[0].Token || again[0].Update.Artifact.ID != "a" {
		t.Fatalf("reset sent %+v", again)
	}
	if got := s.Acked("p", first[0].Token); got != nil {
		t.Fatalf("ack of forgotten token produced %+v", got)
	}
}

func TestCoalesceDropsUpdatesCancelledInTheSameBatch(t *testing.T) {
	s := newTestSender(t, nil)
	ackAll(t, s, s.PeerUp("p", 1))
	var eff []Effect
	e1, _ := s.Publish(large("a"))
	eff = append(eff, e1...)
	e2, _ := s.Publish(small("b"))
	eff = append(eff, e2...)
	e3, _ := s.Abort("a")
	eff = append(eff, e3...)
	checkS(t, s)
	out := Coalesce(eff)
	got := sends(out)
	// a's advert and its cancel vanish; b remains, and so does the small
	// cleared update for a's slot: the core counted a as possibly held when
	// it emitted the advert, and a cleared slot the peer never filled is
	// harmless to it.
	if len(cancels(out)) != 0 {
		t.Fatalf("cancels survived: %+v", out)
	}
	for _, su := range got {
		if su.Update.Artifact.ID == "a" {
			t.Fatalf("superseded advert of a still sent: %+v", got)
		}
	}
	if len(got) != 2 || got[0].Update.Artifact.ID != "b" || got[1].Update.Kind != KindCleared {
		t.Fatalf("coalesced sends %+v, want b then cleared", got)
	}
	// The acks of what was sent leave the sender consistent.
	for _, su := range got {
		s.Acked(su.Peer, su.Token)
		checkS(t, s)
	}
	if s.Pending("p") != 0 || s.InFlight("p") != 0 {
		t.Fatalf("pending %d in flight %d", s.Pending("p"), s.InFlight("p"))
	}
}

func TestSenderUpdateTimeoutGrowsPerFailedAttemptOfTheSameState(t *testing.T) {
	s := newTestSender(t, func(c *SenderConfig) {
		c.RetryBackoffMax = time.Second
		c.UpdateTimeout, c.UpdateTimeoutPerMiB, c.UpdateTimeoutMax = time.Second, 0, 5*time.Second
	})
	ackAll(t, s, s.PeerUp("p", 1))
	su := sends(mustPublish(t, s, large("a")))[0]
	now := t0
	for _, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second} {
		if su.Timeout != want {
			t.Fatalf("timeout %v, want %v", su.Timeout, want)
		}
		r := s.Failed("p", su.Token, now)[0].(RetryAt)
		now = r.At
		su = sends(s.Tick(now))[0]
	}
	// A new state of the slot starts again from the base.
	eff, _ := s.Abort("a")
	eff = append(eff, mustPublish(t, s, large("b"))...)
	checkS(t, s)
	got := sends(eff)
	if len(got) == 0 {
		t.Fatal("nothing sent for the new states")
	}
	for _, e := range got {
		if e.Timeout != time.Second {
			t.Fatalf("new state %v sent with timeout %v", e.Update.Kind, e.Timeout)
		}
	}
}

func TestSenderUpdateTimeoutGrowsProRataWithSize(t *testing.T) {
	s := newTestSender(t, func(c *SenderConfig) {
		c.UpdateTimeout, c.UpdateTimeoutPerMiB, c.UpdateTimeoutMax = time.Second, 4*time.Second, time.Minute
	})
	ackAll(t, s, s.PeerUp("p", 1))
	a := Artifact{ID: "half", Payload: make([]byte, 512<<10), LatencySensitive: true}
	su := sends(mustPublish(t, s, a))[0]
	want := time.Second + time.Duration(int64(4*time.Second)*int64(EncodedSize(a))>>20)
	if su.Update.Kind != KindPush || su.Timeout != want || su.Timeout < 3*time.Second {
		t.Fatalf("push of 512 KiB: %v with timeout %v, want %v (about 3 s)", su.Update.Kind, su.Timeout, want)
	}
}
