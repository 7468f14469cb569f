package broadcast

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"
)

// The fuzz targets read their input as a program of small operations, so
// that the fuzzer explores event orders rather than byte layouts. Whatever
// the order, the cores must not panic and their invariants must hold after
// every step.

type opReader struct {
	data []byte
	pos  int
}

func (r *opReader) next() (byte, bool) {
	if r.pos >= len(r.data) {
		return 0, false
	}
	b := r.data[r.pos]
	r.pos++
	return b, true
}

func (r *opReader) byteOr0() byte {
	b, _ := r.next()
	return b
}

func FuzzSenderEvents(f *testing.F) {
	f.Add([]byte{0, 1, 0, 2, 3, 0, 1, 4, 0, 5, 0, 2, 6, 1})
	f.Add([]byte{3, 1, 0, 1, 0, 9, 1, 0, 4, 0, 4, 0, 2, 1, 3, 1, 8, 0})
	f.Add([]byte{0, 0, 0, 0, 0, 0, 3, 0, 3, 2, 5, 0, 7, 0, 5, 0, 6, 9, 1, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg := DefaultSenderConfig()
		cfg.MaxSlots = 8
		cfg.MaxInFlightPerPeer = 2
		s, err := NewSender(cfg)
		if err != nil {
			t.Fatal(err)
		}
		peers := []PeerID{"p0", "p1", "p2"}
		conns := map[PeerID]ConnID{}
		var tokens []SendUpdate
		now := t0
		r := &opReader{data: data}
		for step := 0; ; step++ {
			op, ok := r.next()
			if !ok {
				return
			}
			arg := r.byteOr0()
			var eff []Effect
			before := s.snapshot()
			// A refused publish or abort changes nothing and sends nothing.
			refused := func(err error, allowed ...error) {
				t.Helper()
				if err == nil {
					return
				}
				for _, a := range allowed {
					if errors.Is(err, a) {
						if after := s.snapshot(); after != before || len(eff) != 0 {
							t.Fatalf("step %d: refused (%v) but changed the sender (effects %v):\n%s\n---\n%s", step, err, eff, before, after)
						}
						return
					}
				}
				t.Fatalf("step %d: unexpected error %v", step, err)
			}
			switch op % 10 {
			case 0:
				id := ArtifactID(fmt.Sprintf("a%d", arg%16))
				size := int(arg) * 40
				if arg == 255 {
					id = "" // invalid
				}
				eff, err = s.Publish(Artifact{ID: id, Payload: make([]byte, size), LatencySensitive: arg%7 == 0})
				refused(err, ErrDuplicate, ErrSlotsExhausted, ErrInvalid)
			case 1:
				eff, err = s.Abort(ArtifactID(fmt.Sprintf("a%d", arg%16)))
				refused(err, ErrUnknownID)
			case 2:
				p := peers[int(arg)%len(peers)]
				if arg&0x80 == 0 {
					conns[p]++
				}
				eff = s.PeerUp(p, conns[p])
			case 3:
				eff = s.PeerDown(peers[int(arg)%len(peers)])
			case 4, 5:
				if len(tokens) > 0 {
					i := int(arg) % len(tokens)
					su := tokens[i]
					tokens = append(tokens[:i], tokens[i+1:]...)
					if op%10 == 4 {
						eff = s.Acked(su.Peer, su.Token)
					} else {
						eff = s.Failed(su.Peer, su.Token, now)
					}
				}
			case 6:
				now = now.Add(time.Duration(arg) * 10 * time.Millisecond)
				eff = s.Tick(now)
			case 7:
				eff = s.RemovePeer(peers[int(arg)%len(peers)])
			case 8:
				// an ack for a token that never existed
				eff = s.Acked(peers[int(arg)%len(peers)], Token(1000+int(arg)))
			default:
				eff = s.Failed(peers[int(arg)%len(peers)], Token(arg), now)
			}
			for _, e := range eff {
				switch e := e.(type) {
				case SendUpdate:
					if e.Update.Kind == KindAdvert && e.Update.Artifact.Payload != nil {
						t.Fatalf("step %d: advert carries a payload", step)
					}
					tokens = append(tokens, e)
				case CancelSend:
					for i, su := range tokens {
						if su.Token == e.Token {
							tokens = append(tokens[:i], tokens[i+1:]...)
							break
						}
					}
				}
			}
			if err := s.CheckInvariants(); err != nil {
				t.Fatalf("step %d (op %d arg %d): %v", step, op%10, arg, err)
			}
		}
	})
}

// okPayload is what honest peers publish under id in the fuzz target.
func okPayload(id ArtifactID) []byte { return []byte("ok") }

func FuzzReceiverEvents(f *testing.F) {
	f.Add([]byte{0, 1, 1, 0, 2, 3, 0, 1, 5, 0, 6, 0})
	f.Add([]byte{0, 0, 0, 9, 4, 1, 0, 9, 4, 7, 2, 1, 3, 0, 8, 2})
	f.Add([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20})
	f.Fuzz(runReceiverProgram)
}

// runReceiverProgram runs one fuzz input against a receiver.
func runReceiverProgram(t *testing.T, data []byte) {
	cfg := DefaultReceiverConfig()
	cfg.SlotLimit = 6
	cfg.MaxActiveFetches = 3
	cfg.MaxFetchesPerPeer = 2
	cfg.DeliveryCredits = 4
	cfg.MaxIDLen = 8
	cfg.MaxPushSize = 64
	cfg.Admit = func(id ArtifactID, attr []byte) Decision {
		if len(attr) == 0 {
			return Fetch
		}
		return Decision(1 + attr[0]%3)
	}
	cfg.Verify = func(a Artifact) error {
		if string(a.Payload) == "bad" {
			return errors.New("bad")
		}
		return nil
	}
	r, err := NewReceiver(cfg)
	if err != nil {
		t.Fatal(err)
	}
	peers := []PeerID{"p0", "p1", "p2"}
	for _, p := range peers {
		r.AddPeer(p)
	}
	delivered := map[ArtifactID]bool{}
	fetching := map[ArtifactID]bool{}
	var attempts []FetchAttempt
	now := t0
	rd := &opReader{data: data}
	for step := 0; ; step++ {
		op, ok := rd.next()
		if !ok {
			return
		}
		a, b := rd.byteOr0(), rd.byteOr0()
		peer := peers[int(a)%len(peers)]
		id := ArtifactID(fmt.Sprintf("i%d", b%8))
		var eff []Effect
		tables, runs := r.snapshot(), r.runsSnapshot()
		unchanged := func(what string, err error, withRuns bool) {
			t.Helper()
			if r.snapshot() != tables || (withRuns && r.runsSnapshot() != runs) {
				t.Fatalf("step %d: %s refused (%v) but changed the receiver:\n%s%s\n---\n%s%s", step, what, err, tables, runs, r.snapshot(), r.runsSnapshot())
			}
		}
		switch op % 11 {
		case 0, 1, 2:
			kind := UpdateKind(1 + b%5) // includes KindSync and an invalid kind
			u := SlotUpdate{Commit: CommitID(a / 3), Slot: Slot(b % 9), Kind: kind,
				Artifact: Artifact{ID: id, Attribute: []byte{a}, Payload: []byte("ok")}}
			if kind == KindAdvert && b&0x20 != 0 {
				u.Digest = Describe(okPayload(id), MinChunkSize).Digest()
			}
			switch {
			case b&0x80 != 0:
				u.Artifact.Payload = []byte("bad")
			case b&0x40 != 0 && kind == KindPush:
				u.Artifact.Payload = make([]byte, cfg.MaxPushSize) // over the limit once encoded
			}
			var err error
			eff, err = r.HandleUpdate(peer, ConnID(a%3), u)
			switch {
			case err == nil:
			case errors.Is(err, ErrStale), errors.Is(err, ErrSlotLimit), errors.Is(err, ErrInvalid), errors.Is(err, ErrUnknownPeer):
				// "A refused update changes nothing."
				unchanged("update", err, true)
				if len(eff) != 0 {
					t.Fatalf("step %d: refused update (%v) had effects %v", step, err, eff)
				}
			case errors.Is(err, ErrMismatch):
				// The advert part stands; the pushed copy is not delivered.
				for _, e := range eff {
					if d, ok := e.(Deliver); ok && d.Artifact.ID == u.Artifact.ID {
						t.Fatalf("step %d: push that failed verification was delivered", step)
					}
				}
			default:
				t.Fatalf("step %d: unexpected error %v", step, err)
			}
		case 3:
			if len(attempts) == 0 {
				break
			}
			i := int(a) % len(attempts)
			at := attempts[i]
			attempts = append(attempts[:i], attempts[i+1:]...)
			switch b % 4 {
			case 0, 1:
				payload := okPayload(at.ID)
				if b&0x40 != 0 {
					payload = []byte("bad")
				}
				got := serve(at, payload)
				if b&0x10 != 0 && got.Data != nil {
					got.Data = []byte("garbled")
				}
				var err error
				eff, err = r.FetchDone(at.Token, got, time.Duration(b)*time.Millisecond, now)
				if err != nil {
					if !errors.Is(err, ErrMismatch) {
						t.Fatalf("step %d: unexpected error %v", step, err)
					}
					// Wrong bytes change no table: only the fetch's
					// choice of peer moves on.
					unchanged("fetched artifact", err, false)
					for _, e := range eff {
						if _, ok := e.(Deliver); ok {
							t.Fatalf("step %d: wrong bytes delivered something: %v", step, eff)
						}
					}
				}
			case 2:
				eff = r.FetchFailed(at.Token, now)
			default:
				eff = r.FetchInvalid(at.Token, now)
			}
		case 4:
			eff = r.Consumed()
		case 5:
			eff = r.Reevaluate()
		case 6:
			eff = r.RemovePeer(peer)
		case 7:
			r.AddPeer(peer)
		case 9:
			now = now.Add(time.Duration(b) * 20 * time.Millisecond)
			eff = r.Tick(now)
		case 10:
			eff = r.RestartFetches()
			attempts = nil
		default:
			var err error
			eff, err = r.HandleUpdate(peer, ConnID(a%3), SlotUpdate{Kind: KindSync})
			if err != nil {
				if !errors.Is(err, ErrStale) && !errors.Is(err, ErrUnknownPeer) {
					t.Fatalf("step %d: sync: %v", step, err)
				}
				unchanged("sync", err, true)
			}
		}
		for _, e := range eff {
			switch e := e.(type) {
			case CancelAttempt:
				attempts = slices.DeleteFunc(attempts, func(a FetchAttempt) bool { return a.Token == e.Token })
			case Deliver:
				if delivered[e.Artifact.ID] {
					t.Fatalf("step %d: %s delivered twice", step, e.Artifact.ID)
				}
				if string(e.Artifact.Payload) == "bad" {
					t.Fatalf("step %d: unverified payload delivered", step)
				}
				delivered[e.Artifact.ID] = true
				delete(fetching, e.Artifact.ID)
			case Withdraw:
				if !delivered[e.ID] {
					t.Fatalf("step %d: withdraw of undelivered %s", step, e.ID)
				}
				delete(delivered, e.ID)
			case FetchAttempt:
				if delivered[e.ID] {
					t.Fatalf("step %d: fetch of %s which is delivered", step, e.ID)
				}
				fetching[e.ID] = true
				attempts = append(attempts, e)
			case CancelFetch:
				if !fetching[e.ID] {
					t.Fatalf("step %d: cancel of %s which is not fetching", step, e.ID)
				}
				delete(fetching, e.ID)
			}
		}
		if err := r.CheckInvariants(); err != nil {
			t.Fatalf("step %d (op %d): %v", step, op%11, err)
		}
	}
}
