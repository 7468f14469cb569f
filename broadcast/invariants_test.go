package broadcast

import (
	"strings"
	"testing"
	"time"
)

// Mutation tests for CheckInvariants: each invariant is broken on purpose
// in a freshly built state, and CheckInvariants must report that very
// invariant. Without them a CheckInvariants that returns nil would leave
// every other test green.

// invariantReceiver builds a receiver holding every kind of state the
// invariants speak of: entries of three peers, one of them moved to a
// newer connection (so it has legacy entries), ids queued, fetching with an
// attempt in flight, pausing between attempts, and delivered.
func invariantReceiver(t *testing.T) *Receiver {
	t.Helper()
	r := newTestReceiver(t, func(c *ReceiverConfig) {
		c.SlotLimit = 8
		c.MaxActiveFetches = 1
		c.MaxFetchesPerPeer = 1
		c.DeliveryCredits = 6
		c.FetchTimeoutMin, c.FetchTimeoutMax = time.Second, time.Second
	}, "p", "q", "s", "u")
	apply(t, r, "p", 1, advert(1, 0, "a"))
	apply(t, r, "p", 1, advert(2, 1, "b"))
	apply(t, r, "p", 1, advert(3, 2, "c"))
	apply(t, r, "p", 1, push(4, 3, "d"))
	apply(t, r, "q", 1, advert(1, 0, "a"))
	apply(t, r, "q", 1, advert(2, 1, "e"))
	apply(t, r, "s", 1, advert(1, 0, "g"))
	apply(t, r, "p", 2, advert(1, 0, "f")) // a@1 stays as p's legacy entry
	// s's only fetch fails: it pauses.
	r.FetchFailed(sortedKeys(r.ids["g"].run.reqs)[0], t0)
	// u's fetch of a large artifact holds its manifest and one chunk, and
	// asks for two more.
	big := bigPayload(1)
	m := attempts(apply(t, r, "u", 1, advertOf(1, 0, "h", big)))[0]
	as := attempts(answer(t, r, m, big, t0))
	answer(t, r, as[0], big, t0)
	checkR(t, r)
	return r
}

// idIn returns an id in phase ph (and, if fetching, with or without an
// attempt in flight).
func idIn(t *testing.T, r *Receiver, ph phase, attempting bool) (ArtifactID, *idState) {
	t.Helper()
	for _, id := range sortedIDs(r.ids) {
		st := r.ids[id]
		if st.phase == ph && (ph != phaseFetching || (len(st.run.reqs) != 0) == attempting) {
			return id, st
		}
	}
	t.Fatalf("no id in phase %d (attempting %v)", ph, attempting)
	return "", nil
}

func TestReceiverCheckInvariantsReportsEachBrokenInvariant(t *testing.T) {
	cases := []struct {
		name, want string
		breakIt    func(t *testing.T, r *Receiver)
	}{
		{"slot limit", "above limit 1", func(t *testing.T, r *Receiver) { r.cfg.SlotLimit = 1 }},
		{"legacy also current", "both current and legacy", func(t *testing.T, r *Receiver) {
			r.peers["p"].legacy["b"] = legacyEntry{slot: 1, conn: 1}
		}},
		{"legacy from the current connection", "not older than", func(t *testing.T, r *Receiver) {
			r.peers["p"].legacy["a"] = legacyEntry{slot: 0, conn: 2}
		}},
		{"legacy id unknown", "legacy slot 7 holds", func(t *testing.T, r *Receiver) {
			r.peers["p"].legacy["ghost"] = legacyEntry{slot: 7, conn: 1}
		}},
		{"legacy pair missing", "lacks legacy", func(t *testing.T, r *Receiver) {
			r.ids["a"].adv.remove(advKey{"p", 0})
		}},
		{"entry id unknown", "which has no advertiser set", func(t *testing.T, r *Receiver) {
			r.peers["q"].slots[9] = &entry{conn: 1, commit: 9, id: "ghost", filled: true}
		}},
		{"entry pair missing", "lacks (q, 1)", func(t *testing.T, r *Receiver) {
			r.ids["e"].adv.remove(advKey{"q", 1})
			r.ids["e"].adv.add(advKey{"q", 5})
		}},
		{"empty advertiser set", "empty advertiser set", func(t *testing.T, r *Receiver) {
			r.ids["ghost"] = &idState{decision: Drop}
		}},
		{"advertiser set larger than the tables", "advertiser set has 3 pairs, tables 2", func(t *testing.T, r *Receiver) {
			r.ids["a"].adv.add(advKey{"s", 42})
		}},
		{"advertiser set internally inconsistent", "inconsistent", func(t *testing.T, r *Receiver) {
			r.ids["d"].adv.peers = map[PeerID]int{}
		}},
		{"fetching without a Fetch decision", "fetching with decision", func(t *testing.T, r *Receiver) {
			_, st := idIn(t, r, phaseFetching, true)
			st.decision = Later
		}},
		{"fetch counter", "fetch counter", func(t *testing.T, r *Receiver) { r.fetching++ }},
		{"active fetch bound", "fetches above limit", func(t *testing.T, r *Receiver) { r.cfg.MaxActiveFetches = -2 }},
		{"credit bound", "credits in use", func(t *testing.T, r *Receiver) { r.waiting = -1 }},
		{"queued counter", "queued counter", func(t *testing.T, r *Receiver) { r.queued++ }},
		{"charged to a non-advertiser", "charged to", func(t *testing.T, r *Receiver) {
			_, st := idIn(t, r, phaseFetching, true)
			st.charged = "zz"
		}},
		{"queued id not in its advertiser's queue", "is not in the queue", func(t *testing.T, r *Receiver) {
			p := r.peers["p"]
			p.queue, p.head = nil, 0
		}},
		{"queued although a fetch may start", "may start a fetch", func(t *testing.T, r *Receiver) {
			r.cfg.MaxActiveFetches, r.cfg.MaxFetchesPerPeer = 10, 10
		}},
		{"fetch state outside fetching", "not fetching but has fetch state", func(t *testing.T, r *Receiver) {
			r.ids["d"].run = &fetchRun{}
		}},
		{"fetching without fetch state", "has no fetch state", func(t *testing.T, r *Receiver) {
			_, st := idIn(t, r, phaseFetching, true)
			st.run = nil
		}},
		{"attempt not indexed", "not indexed", func(t *testing.T, r *Receiver) {
			_, st := idIn(t, r, phaseFetching, true)
			delete(r.attempts, sortedKeys(st.run.reqs)[0])
		}},
		{"pause not indexed", "but pausing", func(t *testing.T, r *Receiver) {
			id, _ := idIn(t, r, phaseFetching, false)
			delete(r.pausing, id)
		}},
		{"neither attempt nor pause", "neither an attempt, nor a pause", func(t *testing.T, r *Receiver) {
			id, st := idIn(t, r, phaseFetching, false)
			delete(r.pausing, id)
			st.run.pause = time.Time{}
		}},
		{"requests above FetchParallel", "requests, above 1", func(t *testing.T, r *Receiver) { r.cfg.FetchParallel = 1 }},
		{"requests above FetchWindow", "(window 1)", func(t *testing.T, r *Receiver) { r.cfg.FetchWindow = 1 }},
		{"held bytes above MaxFetchSize", "bytes, above 1", func(t *testing.T, r *Receiver) { r.cfg.MaxFetchSize = 1 }},
		{"run's per-peer request count", "requests counted", func(t *testing.T, r *Receiver) { r.ids["h"].run.peer("u").inflight++ }},
		{"peer's request bytes", "bytes counted", func(t *testing.T, r *Receiver) { r.peers["u"].inflightBytes++ }},
		{"chunks without a manifest", "without a manifest", func(t *testing.T, r *Receiver) { r.ids["g"].run.held = 1 }},
		{"held chunk not matching the manifest", "does not match its manifest", func(t *testing.T, r *Receiver) {
			r.ids["h"].run.chunks[0][0] ^= 1
		}},
		{"data of a chunk not held", "keeps data of chunk 5", func(t *testing.T, r *Receiver) {
			r.ids["h"].run.chunks[5] = []byte{1}
		}},
		{"chunk asked without a request", "chunk 5 state 1, 0 requests", func(t *testing.T, r *Receiver) {
			r.ids["h"].run.state[5] = chunkAsked
		}},
		{"missing counter", "missing and", func(t *testing.T, r *Receiver) { r.ids["h"].run.missing++ }},
		{"stray attempt", "attempts indexed", func(t *testing.T, r *Receiver) {
			id, _ := idIn(t, r, phaseFetching, true)
			r.attempts[9999] = id
		}},
		{"pausing id that is not fetching", "pausing fetch of", func(t *testing.T, r *Receiver) {
			r.pausing["d"] = struct{}{}
		}},
		{"per-peer fetch count", "fetches counted", func(t *testing.T, r *Receiver) { r.peers["q"].active++ }},
		{"supplier's reservation not counted", "bytes reserved counted", func(t *testing.T, r *Receiver) { r.assembly["u"]++ }},
		{"reservation above MaxFetchBytesPerPeer", "bound 1", func(t *testing.T, r *Receiver) { r.cfg.MaxFetchBytesPerPeer = 1 }},
		{"manifest kept without its reservation", "keeps a manifest of", func(t *testing.T, r *Receiver) { r.ids["h"].run.reserved-- }},
		{"reservation without a manifest", "reserves 5 bytes", func(t *testing.T, r *Receiver) {
			r.ids["g"].run.reserved, r.ids["g"].run.supplier = 5, "s"
		}},
		{"waiting for room, not listed", "listed false", func(t *testing.T, r *Receiver) {
			r.ids["g"].run.budgetWait, r.ids["g"].run.need = true, 1
		}},
		{"listed as waiting for room", "listed true", func(t *testing.T, r *Receiver) { r.budgetWaiting["g"] = struct{}{} }},
		{"waiting for room with a manifest", "waits for room with", func(t *testing.T, r *Receiver) {
			r.ids["h"].run.budgetWait, r.ids["h"].run.need = true, 1
			r.budgetWaiting["h"] = struct{}{}
		}},
		{"fetch queue bound", "fetch queue of", func(t *testing.T, r *Receiver) {
			p := r.peers["q"]
			for range 200 {
				p.queue = append(p.queue, "e")
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := invariantReceiver(t)
			c.breakIt(t, r)
			err := r.CheckInvariants()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("broken %q: CheckInvariants returned %v, want an error mentioning %q", c.name, err, c.want)
			}
		})
	}
}

// invariantSender builds a sender with live, free, acknowledged, queued,
// in-flight and resync slots and a peer that is down.
func invariantSender(t *testing.T) *Sender {
	t.Helper()
	s := newTestSender(t, func(c *SenderConfig) { c.MaxInFlightPerPeer = 2; c.MaxSlots = 10 })
	for _, id := range []string{"a", "b", "c", "d", "e"} {
		mustPublish(t, s, small(id))
	}
	if _, err := s.Abort("b"); err != nil { // slot 1 free
		t.Fatal(err)
	}
	ackAll(t, s, s.PeerUp("q", 1)) // q holds everything
	s.PeerUp("p", 1)               // p: two in flight, the rest queued for resync
	s.PeerUp("down", 1)
	s.PeerDown("down")
	checkS(t, s)
	return s
}

// slotWhere returns the first slot of peer whose state satisfies ok.
func slotWhere(t *testing.T, s *Sender, peer PeerID, ok func(*peerSlot) bool) Slot {
	t.Helper()
	for i := range s.peers[peer].slots {
		if ok(&s.peers[peer].slots[i]) {
			return Slot(i)
		}
	}
	t.Fatalf("no slot of %s in the wanted state", peer)
	return 0
}

func inFlight(ps *peerSlot) bool { return ps.inflight != 0 }
func queued(ps *peerSlot) bool   { return ps.queued }

func TestSenderCheckInvariantsReportsEachBrokenInvariant(t *testing.T) {
	cases := []struct {
		name, want string
		breakIt    func(t *testing.T, s *Sender)
	}{
		{"slot commit beyond the table's", "beyond table commit", func(t *testing.T, s *Sender) { s.slots[0].commit = s.commit + 1 }},
		{"live slot not indexed", "not indexed by its id", func(t *testing.T, s *Sender) { delete(s.byID, "a") }},
		{"live counter", "live slots", func(t *testing.T, s *Sender) { s.live++ }},
		{"slot neither live nor free", "free 1 + live 4", func(t *testing.T, s *Sender) { s.slots = append(s.slots, slotState{}) }},
		{"free list holds a live slot", "free list holds live or repeated", func(t *testing.T, s *Sender) { s.free[0] = 0 }},
		{"live bound", "above MaxSlots", func(t *testing.T, s *Sender) { s.cfg.MaxSlots = 1 }},
		{"in-flight bound", "in flight above", func(t *testing.T, s *Sender) { s.cfg.MaxInFlightPerPeer = 1 }},
		{"down with transmissions", "is down with transmissions", func(t *testing.T, s *Sender) { s.peers["p"].up = false }},
		{"acknowledged beyond the slot's commit", "acked commit", func(t *testing.T, s *Sender) {
			s.peers["q"].slots[0].acked = s.slots[0].commit + 1
		}},
		{"queued flag without a queue entry", "marked queued but not in queue", func(t *testing.T, s *Sender) {
			s.peers["q"].slots[0].queued = true
		}},
		{"queued and in flight", "both queued and in flight", func(t *testing.T, s *Sender) {
			p := s.peers["p"]
			slot := slotWhere(t, s, "p", inFlight)
			p.slots[slot].queued = true
			p.queue = append(p.queue, slot)
		}},
		{"pending although acknowledged", "pending although its newest state is acknowledged", func(t *testing.T, s *Sender) {
			slot := slotWhere(t, s, "p", queued)
			s.peers["p"].slots[slot].acked = s.slots[slot].commit
		}},
		{"in-flight token not indexed", "in-flight token", func(t *testing.T, s *Sender) {
			s.peers["p"].slots[slotWhere(t, s, "p", inFlight)].inflight = 9999
		}},
		{"needed slot neither queued nor in flight", "needs sending but is neither", func(t *testing.T, s *Sender) {
			s.peers["p"].slots[slotWhere(t, s, "p", queued)].queued = false
		}},
		{"resync counter", "resync count", func(t *testing.T, s *Sender) { s.peers["p"].resyncLeft++ }},
		{"stray token", "points at slot", func(t *testing.T, s *Sender) {
			s.peers["q"].inflight[8888] = 0
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := invariantSender(t)
			c.breakIt(t, s)
			err := s.CheckInvariants()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("broken %q: CheckInvariants returned %v, want an error mentioning %q", c.name, err, c.want)
			}
		})
	}
}

func TestReceiverConfigValidation(t *testing.T) {
	bad := []func(*ReceiverConfig){
		func(c *ReceiverConfig) { c.SlotLimit = 0 },
		func(c *ReceiverConfig) { c.MaxIDLen = 0 },
		func(c *ReceiverConfig) { c.MaxAttributeLen = -1 },
		func(c *ReceiverConfig) { c.MaxPushSize = 0 },
		func(c *ReceiverConfig) { c.MaxActiveFetches = 0 },
		func(c *ReceiverConfig) { c.MaxFetchesPerPeer = 0 },
		func(c *ReceiverConfig) { c.DeliveryCredits = 0 },
		func(c *ReceiverConfig) { c.FetchTimeoutMin = 0 },
		func(c *ReceiverConfig) { c.FetchTimeoutMax = c.FetchTimeoutMin / 2 },
		func(c *ReceiverConfig) { c.FetchBackoffMin = 0 },
		func(c *ReceiverConfig) { c.FetchBackoffMax = c.FetchBackoffMin / 2 },
	}
	for i, mut := range bad {
		cfg := DefaultReceiverConfig()
		mut(&cfg)
		if _, err := NewReceiver(cfg); err == nil {
			t.Errorf("case %d: %+v accepted", i, cfg)
		}
	}
	if _, err := NewReceiver(DefaultReceiverConfig()); err != nil {
		t.Fatal(err)
	}
}
