package broadcast

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func newTestReceiver(t *testing.T, mut func(*ReceiverConfig), peers ...PeerID) *Receiver {
	t.Helper()
	cfg := DefaultReceiverConfig()
	if mut != nil {
		mut(&cfg)
	}
	r, err := NewReceiver(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range peers {
		r.AddPeer(p)
	}
	return r
}

func checkR(t *testing.T, r *Receiver) {
	t.Helper()
	if err := r.CheckInvariants(); err != nil {
		t.Fatalf("receiver invariant: %v", err)
	}
}

// payloadOf is the payload the tests publish under id.
func payloadOf(id ArtifactID) []byte { return []byte("payload of " + id) }

const testChunk = MinChunkSize

func advert(commit CommitID, slot Slot, id string) SlotUpdate {
	return SlotUpdate{Commit: commit, Slot: slot, Kind: KindAdvert, Artifact: Artifact{ID: ArtifactID(id), Attribute: []byte("attr")},
		Digest: Describe(payloadOf(ArtifactID(id)), testChunk).Digest()}
}

// serve answers attempt a as an honest peer holding payload would.
func serve(a FetchAttempt, payload []byte) Fetched {
	m := Describe(payload, testChunk)
	if a.Chunk == ManifestPart {
		got := Fetched{Manifest: &m}
		if m.Chunks() == 1 {
			got.Data = payload
		}
		return got
	}
	return Fetched{Data: m.Chunk(payload, a.Chunk)}
}

func push(commit CommitID, slot Slot, id string) SlotUpdate {
	return SlotUpdate{Commit: commit, Slot: slot, Kind: KindPush, Artifact: small(id)}
}

func clearedU(commit CommitID, slot Slot) SlotUpdate {
	return SlotUpdate{Commit: commit, Slot: slot, Kind: KindCleared}
}

func apply(t *testing.T, r *Receiver, peer PeerID, conn ConnID, u SlotUpdate) []Effect {
	t.Helper()
	eff, err := r.HandleUpdate(peer, conn, u)
	if err != nil {
		t.Fatalf("update %+v from %s: %v", u, peer, err)
	}
	checkR(t, r)
	return eff
}

func kindsOf(eff []Effect) string {
	s := ""
	for _, e := range eff {
		switch e := e.(type) {
		case FetchAttempt:
			s += fmt.Sprintf("fetch(%s) ", e.ID)
		case CancelFetch:
			s += fmt.Sprintf("cancel(%s) ", e.ID)
		case CancelAttempt:
			s += fmt.Sprintf("cancelattempt(%s) ", e.ID)
		case Deliver:
			s += fmt.Sprintf("deliver(%s from %s) ", e.Artifact.ID, e.From)
		case Withdraw:
			s += fmt.Sprintf("withdraw(%s) ", e.ID)
		default:
			s += fmt.Sprintf("%T ", e)
		}
	}
	return s
}

func expect(t *testing.T, eff []Effect, want string) {
	t.Helper()
	if got := kindsOf(eff); got != want {
		t.Fatalf("effects %q, want %q", got, want)
	}
}

func TestReceiverCommitIDOrdering(t *testing.T) {
	r := newTestReceiver(t, nil, "p")
	expect(t, apply(t, r, "p", 1, advert(5, 0, "a")), "fetch(a) ")
	// Higher commit on the same slot replaces a: a's fetch is cancelled.
	expect(t, apply(t, r, "p", 1, advert(7, 0, "b")), "cancel(a) fetch(b) ")
	// Lower commit is stale, whatever it carries.
	if _, err := r.HandleUpdate("p", 1, advert(6, 0, "c")); !errors.Is(err, ErrStale) {
		t.Fatalf("older commit: %v, want ErrStale", err)
	}
	// Equal commit is stale too (a replay).
	if _, err := r.HandleUpdate("p", 1, advert(7, 0, "b")); !errors.Is(err, ErrStale) {
		t.Fatalf("replayed commit: %v, want ErrStale", err)
	}
	// A newer connection wins even with a lower commit (sender restarted);
	// the displaced b keeps its advertiser until the sender's Sync.
	expect(t, apply(t, r, "p", 2, advert(1, 0, "d")), "fetch(d) ")
	expect(t, apply(t, r, "p", 2, SlotUpdate{Kind: KindSync}), "cancel(b) ")
	// And updates from the old connection are now stale.
	if _, err := r.HandleUpdate("p", 1, advert(100, 3, "e")); !errors.Is(err, ErrStale) {
		t.Fatalf("update on old connection: %v, want ErrStale", err)
	}
	if st := r.PeerStats("p"); st.Stale != 3 || st.Accepted != 3 {
		t.Fatalf("peer stats %+v", st)
	}
}

func TestReceiverSlotLimitRefusesNewSlotsOnly(t *testing.T) {
	r := newTestReceiver(t, func(c *ReceiverConfig) { c.SlotLimit = 2 }, "p", "q")
	apply(t, r, "p", 1, advert(1, 0, "a"))
	apply(t, r, "p", 1, advert(2, 1, "b"))
	if _, err := r.HandleUpdate("p", 1, advert(3, 2, "c")); !errors.Is(err, ErrSlotLimit) {
		t.Fatalf("third slot: %v, want ErrSlotLimit", err)
	}
	// Cleared updates for new slots occupy an entry too, so they are refused.
	if _, err := r.HandleUpdate("p", 1, clearedU(4, 9)); !errors.Is(err, ErrSlotLimit) {
		t.Fatalf("cleared new slot: %v, want ErrSlotLimit", err)
	}
	// Overwriting an existing slot is fine.
	apply(t, r, "p", 1, advert(5, 1, "c"))
	// The limit is per peer.
	apply(t, r, "q", 1, advert(1, 7, "z"))
	if r.Entries("p") != 2 || r.PeerStats("p").OverLimit != 2 {
		t.Fatalf("entries %d stats %+v", r.Entries("p"), r.PeerStats("p"))
	}
}

func TestReceiverOverwriteCancelsOldFetch(t *testing.T) {
	r := newTestReceiver(t, nil, "p")
	aTok := apply(t, r, "p", 1, advert(1, 0, "a"))[0].(FetchAttempt).Token
	expect(t, apply(t, r, "p", 1, advert(2, 0, "b")), "cancel(a) fetch(b) ")
	if eff, err := r.FetchDone(aTok, Fetched{}, time.Second, t0); err != nil || len(eff) != 0 {
		t.Fatalf("late result for cancelled fetch: %v %v", eff, err)
	}
	if r.Stats().LateFetchResults != 1 {
		t.Fatal("late fetch result not counted")
	}
}

func TestReceiverTwoPeersOneFetch(t *testing.T) {
	r := newTestReceiver(t, nil, "p", "q")
	expect(t, apply(t, r, "p", 1, advert(1, 0, "a")), "fetch(a) ")
	expect(t, apply(t, r, "q", 1, advert(9, 4, "a")), "")
	if r.Fetching() != 1 {
		t.Fatalf("%d fetches for one id", r.Fetching())
	}
	// p stops advertising: the fetch goes on with q.
	expect(t, apply(t, r, "p", 1, clearedU(2, 0)), "")
	expect(t, mustFetch(t, r, "a", "q"), "deliver(a from q) ")
	expect(t, apply(t, r, "q", 1, clearedU(10, 4)), "withdraw(a) ")
}

// attemptTo fails id's requests to other peers until one goes to from
// (ticking through pauses) and returns it.
func attemptTo(t *testing.T, r *Receiver, id ArtifactID, from PeerID) FetchAttempt {
	t.Helper()
	now := t0
	for range 100 {
		st, ok := r.ids[id]
		if !ok || st.run == nil {
			t.Fatalf("%s is not fetching: %s", id, r.DescribeID(id))
		}
		f := st.run
		if len(f.reqs) == 0 {
			if f.pause.IsZero() {
				t.Fatalf("%s: no request and no pause: %s", id, r.DescribeID(id))
			}
			now = f.pause
			r.Tick(now)
			checkR(t, r)
			continue
		}
		for _, tok := range sortedKeys(f.reqs) {
			q := f.reqs[tok]
			if q.peer == from {
				return FetchAttempt{ID: id, Peer: q.peer, Token: tok, Digest: f.digest, Chunk: q.chunk}
			}
		}
		r.FetchFailed(sortedKeys(f.reqs)[0], now)
		checkR(t, r)
	}
	t.Fatalf("no attempt of %s went to %s: %s", id, from, r.DescribeID(id))
	return FetchAttempt{}
}

// mustFetch has from serve id's payload until it is delivered and returns
// the last answer's effects.
func mustFetch(t *testing.T, r *Receiver, id ArtifactID, from PeerID) []Effect {
	t.Helper()
	for range 1000 {
		a := attemptTo(t, r, id, from)
		eff, err := r.FetchDone(a.Token, serve(a, payloadOf(id)), time.Millisecond, t0)
		if err != nil {
			t.Fatal(err)
		}
		checkR(t, r)
		if r.IsDelivered(id) {
			return eff
		}
	}
	t.Fatalf("%s not delivered: %s", id, r.DescribeID(id))
	return nil
}

func TestReceiverReadvertiseAfterFinishDeliversAgain(t *testing.T) {
	r := newTestReceiver(t, nil, "p")
	apply(t, r, "p", 1, advert(1, 0, "a"))
	expect(t, mustFetch(t, r, "a", "p"), "deliver(a from p) ")
	r.Consumed()
	expect(t, apply(t, r, "p", 1, clearedU(2, 0)), "withdraw(a) ")
	expect(t, apply(t, r, "p", 1, advert(3, 0, "a")), "fetch(a) ")
	expect(t, mustFetch(t, r, "a", "p"), "deliver(a from p) ")
}

func TestReceiverSameIDInTwoSlotsOfOnePeer(t *testing.T) {
	r := newTestReceiver(t, nil, "p")
	apply(t, r, "p", 1, advert(1, 0, "a"))
	// A second slot with the same id adds a pair, not a peer.
	expect(t, apply(t, r, "p", 1, advert(2, 1, "a")), "")
	expect(t, apply(t, r, "p", 1, clearedU(3, 0)), "")
	expect(t, mustFetch(t, r, "a", "p"), "deliver(a from p) ")
	expect(t, apply(t, r, "p", 1, clearedU(4, 1)), "withdraw(a) ")
}

func TestReceiverTopologyChangeDropsPeerSlots(t *testing.T) {
	r := newTestReceiver(t, nil, "p", "q")
	apply(t, r, "p", 1, advert(1, 0, "a")) // only p
	apply(t, r, "p", 1, advert(2, 1, "b")) // p and q
	apply(t, r, "q", 1, advert(1, 0, "b"))
	apply(t, r, "p", 1, push(3, 2, "c")) // delivered, only p
	eff := r.RemovePeer("p")
	checkR(t, r)
	// b's request to p is cancelled and made to q.
	expect(t, eff, "cancel(a) withdraw(c) cancelattempt(b) fetch(b) ")
	if r.Entries("p") != 0 {
		t.Fatal("removed peer still has entries")
	}
	if _, err := r.HandleUpdate("p", 1, advert(9, 9, "x")); !errors.Is(err, ErrUnknownPeer) {
		t.Fatalf("update from removed peer: %v", err)
	}
}

func TestReceiverPushDeliversAtOnceAndVerifies(t *testing.T) {
	bad := errors.New("bad signature")
	r := newTestReceiver(t, func(c *ReceiverConfig) {
		c.Verify = func(a Artifact) error {
			if string(a.Payload) == "forged" {
				return bad
			}
			return nil
		}
	}, "p", "q")
	expect(t, apply(t, r, "p", 1, push(1, 0, "a")), "deliver(a from p) ")
	// q pushes the same id: no second delivery.
	expect(t, apply(t, r, "q", 1, push(1, 0, "a")), "")
	// A forged push is refused, blamed on the sender, and fetched instead.
	eff, err := r.HandleUpdate("q", 1, SlotUpdate{Commit: 2, Slot: 1, Kind: KindPush, Artifact: Artifact{ID: "f", Payload: []byte("forged")}})
	if !errors.Is(err, ErrMismatch) || !errors.Is(err, bad) {
		t.Fatalf("forged push: %v", err)
	}
	checkR(t, r)
	expect(t, eff, "fetch(f) ")
	// q serves the forged bytes again: refused, and q (whose manifest named
	// them) is not asked for f again; the fetch waits for another advertiser.
	a := attemptTo(t, r, "f", "q")
	eff, err = r.FetchDone(a.Token, serve(a, []byte("forged")), time.Millisecond, t0)
	if !errors.Is(err, ErrMismatch) || !errors.Is(err, bad) {
		t.Fatalf("forged fetch: %v", err)
	}
	checkR(t, r)
	expect(t, eff, "")
	if r.PeerStats("q").Mismatch != 2 || r.Fetching() != 1 || !r.ids["f"].run.stalled {
		t.Fatalf("stats %+v fetching %d: %s", r.PeerStats("q"), r.Fetching(), r.DescribeID("f"))
	}
	// An honest advertiser appears: it is asked at once.
	u := advert(3, 2, "f")
	u.Digest = Describe(payloadOf("f"), testChunk).Digest()
	expect(t, apply(t, r, "p", 1, u), "fetch(f) ")
	expect(t, mustFetch(t, r, "f", "p"), "deliver(f from p) ")
}

func TestReceiverAdmissionDropAndLater(t *testing.T) {
	decision := map[ArtifactID]Decision{"d": Drop, "l": Later}
	r := newTestReceiver(t, func(c *ReceiverConfig) {
		c.Admit = func(id ArtifactID, _ []byte) Decision {
			if d, ok := decision[id]; ok {
				return d
			}
			return Fetch
		}
	}, "p")
	expect(t, apply(t, r, "p", 1, advert(1, 0, "d")), "")
	expect(t, apply(t, r, "p", 1, advert(2, 1, "l")), "")
	expect(t, apply(t, r, "p", 1, push(3, 2, "l2")), "deliver(l2 from p) ")
	expect(t, r.Reevaluate(), "")
	decision["l"] = Fetch
	decision["d"] = Fetch // Drop is final while advertised
	expect(t, r.Reevaluate(), "fetch(l) ")
	checkR(t, r)
	expect(t, r.Reevaluate(), "")
}

func TestReceiverCreditsPauseFetching(t *testing.T) {
	r := newTestReceiver(t, func(c *ReceiverConfig) { c.DeliveryCredits = 2; c.MaxActiveFetches = 10 }, "p")
	expect(t, apply(t, r, "p", 1, advert(1, 0, "a")), "fetch(a) ")
	expect(t, apply(t, r, "p", 1, advert(2, 1, "b")), "fetch(b) ")
	expect(t, apply(t, r, "p", 1, advert(3, 2, "c")), "")
	expect(t, mustFetch(t, r, "a", "p"), "deliver(a from p) ")
	expect(t, mustFetch(t, r, "b", "p"), "deliver(b from p) ")
	// A push while the consumer holds every credit is not held in
	// memory: it is fetched later.
	expect(t, apply(t, r, "p", 1, push(4, 3, "d")), "")
	// Nothing starts until the consumer takes a delivery.
	expect(t, r.Consumed(), "fetch(c) ")
	checkR(t, r)
	expect(t, r.Consumed(), "fetch(d) ")
	checkR(t, r)
}

func TestReceiverSyncDropsEntriesOfOlderConnections(t *testing.T) {
	r := newTestReceiver(t, nil, "p")
	apply(t, r, "p", 1, push(1, 0, "a"))
	apply(t, r, "p", 1, push(2, 1, "b"))
	apply(t, r, "p", 1, clearedU(3, 2))
	// New connection: the sender (maybe restarted) refreshes only slot 1.
	expect(t, apply(t, r, "p", 2, push(1, 1, "b")), "")
	expect(t, apply(t, r, "p", 2, SlotUpdate{Kind: KindSync}), "withdraw(a) ")
	if r.Entries("p") != 1 || r.PeerStats("p").Syncs != 1 {
		t.Fatalf("entries %d stats %+v", r.Entries("p"), r.PeerStats("p"))
	}
}

func TestReceiverClearedSlotKeepsOrder(t *testing.T) {
	// The cleared update overtakes the advert it clears: the advert must not
	// resurrect the slot.
	r := newTestReceiver(t, nil, "p")
	expect(t, apply(t, r, "p", 1, clearedU(2, 0)), "")
	if _, err := r.HandleUpdate("p", 1, advert(1, 0, "a")); !errors.Is(err, ErrStale) {
		t.Fatalf("overtaken advert: %v, want ErrStale", err)
	}
	if r.IDs() != 0 {
		t.Fatal("aborted artifact resurrected")
	}
}

func TestReceiverRejectsInvalidUpdates(t *testing.T) {
	r := newTestReceiver(t, func(c *ReceiverConfig) { c.MaxIDLen = 4; c.MaxAttributeLen = 2 }, "p")
	bad := []SlotUpdate{
		{Commit: 1, Kind: KindAdvert},
		{Commit: 1, Kind: KindAdvert, Artifact: Artifact{ID: "toolong"}},
		{Commit: 1, Kind: KindPush, Artifact: Artifact{ID: "a", Attribute: []byte("big")}},
		{Commit: 1, Kind: UpdateKind(99)},
		{Commit: 1, Kind: 0},
	}
	for _, u := range bad {
		if _, err := r.HandleUpdate("p", 1, u); !errors.Is(err, ErrInvalid) {
			t.Errorf("%+v: %v, want ErrInvalid", u, err)
		}
	}
	if r.PeerStats("p").Invalid != uint64(len(bad)) || r.Entries("p") != 0 {
		t.Fatalf("stats %+v entries %d", r.PeerStats("p"), r.Entries("p"))
	}
	if _, err := r.HandleUpdate("stranger", 1, advert(1, 0, "a")); !errors.Is(err, ErrUnknownPeer) {
		t.Fatalf("unknown peer: %v", err)
	}
	checkR(t, r)
}

func TestReceiverChurnDoesNotGrowFetchQueue(t *testing.T) {
	// A peer replacing ids in one slot while no fetch capacity is free must
	// not grow the queue of waiting ids.
	r := newTestReceiver(t, func(c *ReceiverConfig) { c.DeliveryCredits = 1; c.MaxActiveFetches = 1 }, "p", "q")
	apply(t, r, "q", 1, advert(1, 0, "busy"))
	for i := range 10_000 {
		apply(t, r, "p", 1, advert(CommitID(i+1), 0, fmt.Sprintf("id%d", i)))
	}
	if q := r.peers["p"]; len(q.queue)-q.head > 2*len(q.slots)+64 {
		t.Fatalf("queue holds %d entries for %d slots", len(q.queue)-q.head, len(q.slots))
	}
}

func TestReceiverPeerThatNeverServesCannotStarveOthers(t *testing.T) {
	// G4: a Byzantine peer advertising many ids it never serves ties up at
	// most MaxFetchesPerPeer downloads; an honest peer's id still starts.
	r := newTestReceiver(t, func(c *ReceiverConfig) { c.MaxActiveFetches = 8; c.MaxFetchesPerPeer = 3 }, "byz", "honest")
	for i := range 100 {
		apply(t, r, "byz", 1, advert(CommitID(i+1), Slot(i), fmt.Sprintf("junk%d", i)))
	}
	if r.Fetching() != 3 {
		t.Fatalf("byz got %d fetches, want its cap of 3", r.Fetching())
	}
	expect(t, apply(t, r, "honest", 1, advert(1, 0, "good")), "fetch(good) ")
	// An id both advertise is served through whichever peer has room.
	expect(t, apply(t, r, "byz", 1, advert(200, 100, "shared")), "")
	expect(t, apply(t, r, "honest", 1, advert(2, 1, "shared")), "fetch(shared) ")
}

func TestReceiverRestartFetchesRepeatsRunningOnes(t *testing.T) {
	r := newTestReceiver(t, nil, "p")
	apply(t, r, "p", 1, advert(1, 0, "a"))
	apply(t, r, "p", 1, advert(2, 1, "b"))
	mustFetch(t, r, "a", "p")
	expect(t, r.RestartFetches(), "fetch(b) ")
	checkR(t, r)
}

func TestReceiverRestartedSenderMovingSlotsCausesNoRedelivery(t *testing.T) {
	// A restarted publisher republishes a and b, but in swapped slots. The
	// ids never stop being advertised, so nothing is withdrawn or delivered
	// again.
	r := newTestReceiver(t, nil, "p")
	expect(t, apply(t, r, "p", 1, push(1, 0, "a")), "deliver(a from p) ")
	expect(t, apply(t, r, "p", 1, push(2, 1, "b")), "deliver(b from p) ")
	expect(t, apply(t, r, "p", 1, push(3, 2, "c")), "deliver(c from p) ")
	// New incarnation on connection 2: b in slot 0, a in slot 1; c is gone.
	expect(t, apply(t, r, "p", 2, push(1, 0, "b")), "")
	expect(t, apply(t, r, "p", 2, push(2, 1, "a")), "")
	expect(t, apply(t, r, "p", 2, SlotUpdate{Kind: KindSync}), "withdraw(c) ")
	if r.Entries("p") != 2 {
		t.Fatalf("entries %d, want 2", r.Entries("p"))
	}
	// The displaced entry coming back to its slot is adopted, not re-linked.
	expect(t, apply(t, r, "p", 3, push(1, 0, "x")), "deliver(x from p) ")
	expect(t, apply(t, r, "p", 3, push(2, 0, "b")), "withdraw(x) ")
	expect(t, apply(t, r, "p", 3, push(3, 1, "a")), "")
	expect(t, apply(t, r, "p", 3, SlotUpdate{Kind: KindSync}), "")
}

func TestReceiverLargeAdvertiserSets(t *testing.T) {
	// One id in many slots of several peers: the set switches from its
	// small form to maps and back to empty consistently.
	r := newTestReceiver(t, nil, "p", "q", "s")
	var commit CommitID
	for _, peer := range []PeerID{"p", "q", "s"} {
		for slot := range Slot(12) {
			commit++
			apply(t, r, peer, 1, advert(commit, slot, "a"))
		}
	}
	if got := r.Advertisers("a"); len(got) != 3 {
		t.Fatalf("advertisers %v", got)
	}
	mustFetch(t, r, "a", "q")
	for _, peer := range []PeerID{"p", "q", "s"} {
		for slot := range Slot(12) {
			commit++
			eff := apply(t, r, peer, 1, clearedU(commit, slot))
			if peer == "s" && slot == 11 {
				expect(t, eff, "withdraw(a) ")
			} else {
				expect(t, eff, "")
			}
		}
	}
}

func TestReceiverDisplacedEntryComingBackKeepsTheCurrentOneUntilSync(t *testing.T) {
	// A sender restarts twice without finishing a Sync in between. Its third
	// incarnation puts a back in the slot where the first had it; b, which
	// the second incarnation put there, must stay advertised until the Sync
	// (the third incarnation republishes it elsewhere), not be withdrawn and
	// delivered again.
	r := newTestReceiver(t, nil, "p")
	expect(t, apply(t, r, "p", 1, push(7, 4, "a")), "deliver(a from p) ")
	expect(t, apply(t, r, "p", 2, push(3, 4, "b")), "deliver(b from p) ")
	expect(t, apply(t, r, "p", 3, push(1, 4, "a")), "")
	expect(t, apply(t, r, "p", 3, push(2, 9, "b")), "")
	expect(t, apply(t, r, "p", 3, SlotUpdate{Kind: KindSync}), "")
	if r.Entries("p") != 2 || !r.IsDelivered("a") || !r.IsDelivered("b") {
		t.Fatalf("entries %d, a delivered %v, b delivered %v", r.Entries("p"), r.IsDelivered("a"), r.IsDelivered("b"))
	}
}

func TestReceiverEntriesOfEveryEarlierIncarnationStayUntilSync(t *testing.T) {
	// Three incarnations of a sender before any Sync: b was in slot 3 on
	// connection 2 and was displaced on connection 3; when connection 4
	// overwrites slot 3 again, b must still stay advertised, because the
	// fourth incarnation republishes it (in slot 1) before its Sync.
	r := newTestReceiver(t, nil, "p")
	expect(t, apply(t, r, "p", 2, push(8, 3, "b")), "deliver(b from p) ")
	expect(t, apply(t, r, "p", 3, push(4, 3, "c")), "deliver(c from p) ")
	expect(t, apply(t, r, "p", 4, push(4, 3, "d")), "deliver(d from p) ")
	expect(t, apply(t, r, "p", 4, push(2, 1, "b")), "")
	expect(t, apply(t, r, "p", 4, SlotUpdate{Kind: KindSync}), "withdraw(c) ")
	if r.Entries("p") != 2 {
		t.Fatalf("entries %d after sync, want 2", r.Entries("p"))
	}
}

func TestReceiverOlderConnectionEntriesCountAgainstSlotLimit(t *testing.T) {
	// G4: entries a peer's earlier connection left behind count against
	// SlotLimit, so a peer that reconnects and never Syncs cannot hold
	// twice the bound.
	r := newTestReceiver(t, func(c *ReceiverConfig) { c.SlotLimit = 4 }, "p")
	for i := range 4 {
		apply(t, r, "p", 1, advert(CommitID(i+1), Slot(i), fmt.Sprintf("old%d", i)))
	}
	for i := range 4 {
		apply(t, r, "p", 2, advert(CommitID(i+1), Slot(i), fmt.Sprintf("new%d", i)))
		if r.Entries("p") > 4 || r.IDs() > 4 {
			t.Fatalf("after %d updates on the new connection: %d entries for %d ids, limit 4", i+1, r.Entries("p"), r.IDs())
		}
	}
	// The new connection's ids all stay; what gave way were old entries.
	for i := range 4 {
		if len(r.Advertisers(ArtifactID(fmt.Sprintf("new%d", i)))) != 1 {
			t.Fatalf("new%d not advertised", i)
		}
	}
	// A new slot beyond the bound drops what is left of the old
	// connection rather than refusing a current update.
	apply(t, r, "p", 2, clearedU(9, 3))
	if _, err := r.HandleUpdate("p", 2, advert(10, 7, "more")); !errors.Is(err, ErrSlotLimit) {
		t.Fatalf("fifth current slot: %v, want ErrSlotLimit", err)
	}
	checkR(t, r)
}

func TestReceiverRefusesPushesAboveMaxPushSize(t *testing.T) {
	// G4: a push is unasked-for memory, so a peer may not push more than
	// honest senders ever do; the same artifact advertised is fine.
	r := newTestReceiver(t, func(c *ReceiverConfig) { c.MaxPushSize = 100 }, "p")
	big := SlotUpdate{Commit: 1, Slot: 0, Kind: KindPush, Artifact: Artifact{ID: "big", Payload: make([]byte, 200), LatencySensitive: true}}
	if _, err := r.HandleUpdate("p", 1, big); !errors.Is(err, ErrInvalid) {
		t.Fatalf("oversized push: %v, want ErrInvalid", err)
	}
	if st := r.PeerStats("p"); st.Invalid != 1 || r.Entries("p") != 0 || r.IDs() != 0 {
		t.Fatalf("oversized push left state: stats %+v, entries %d, ids %d", st, r.Entries("p"), r.IDs())
	}
	expect(t, apply(t, r, "p", 1, advert(1, 0, "big")), "fetch(big) ")
	expect(t, apply(t, r, "p", 1, push(2, 1, "small")), "deliver(small from p) ")
}
