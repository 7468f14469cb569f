package broadcast

import (
	"cmp"
	"slices"
	"strings"
	"time"
)

// Effect is an instruction the caller of a core carries out: send, cancel,
// fetch, deliver. Cores return effects as data and never perform I/O.
type Effect interface{ isEffect() }

func (SendUpdate) isEffect()    {}
func (CancelSend) isEffect()    {}
func (RetryAt) isEffect()       {}
func (FetchAttempt) isEffect()  {}
func (CancelFetch) isEffect()   {}
func (CancelAttempt) isEffect() {}
func (Deliver) isEffect()       {}
func (Withdraw) isEffect()      {}

// RetryAt asks the caller to call the core's Tick at or after At. Both cores
// follow one time contract: the caller keeps a single timer per core, set to
// the earliest At it was given that has not passed, and calls Tick(now) when
// it fires. A core returns a RetryAt whenever a call makes its earliest
// deadline earlier than any it announced since the last Tick, and every Tick
// ends with a RetryAt for the earliest deadline still pending, so a later
// deadline is never lost by keeping only the earliest timer. Peer is the
// sender's peer that is backing off; the receiver leaves it empty.
type RetryAt struct {
	Peer PeerID
	At   time.Time
}

func sortPeers(ids []PeerID) {
	slices.SortFunc(ids, func(a, b PeerID) int { return strings.Compare(string(a), string(b)) })
}

// sortCancels orders CancelSend effects by token, so output built from map
// iteration is deterministic.
func sortCancels(eff []Effect) {
	slices.SortFunc(eff, func(a, b Effect) int {
		ca, _ := a.(CancelSend)
		cb, _ := b.(CancelSend)
		switch {
		case ca.Token < cb.Token:
			return -1
		case ca.Token > cb.Token:
			return 1
		}
		return 0
	})
}

func sortedSlots(m map[Slot]*entry) []Slot {
	out := make([]Slot, 0, len(m))
	for s := range m {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

func sortedIDs(m map[ArtifactID]*idState) []ArtifactID { return sortedKeys(m) }

// sortedKeys returns m's keys in order, so that output built from map
// iteration is deterministic.
func sortedKeys[K cmp.Ordered, V any](m map[K]V) []K {
	out := make([]K, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Coalesce removes from a batch of effects every SendUpdate that a later
// CancelSend in the same batch cancels, together with that CancelSend: the
// update was superseded before it left, so performing both would only
// spend bandwidth on a state no peer needs. Callers that apply several
// events before performing their effects (a burst of publishes and aborts,
// say) pass the concatenated effects through it. Order is kept otherwise.
func Coalesce(eff []Effect) []Effect {
	sent := make(map[Token]bool)
	dropped := make(map[Token]bool)
	for _, e := range eff {
		switch e := e.(type) {
		case SendUpdate:
			sent[e.Token] = true
		case CancelSend:
			if sent[e.Token] {
				dropped[e.Token] = true
			}
		}
	}
	if len(dropped) == 0 {
		return eff
	}
	out := eff[:0:0]
	for _, e := range eff {
		switch x := e.(type) {
		case SendUpdate:
			if dropped[x.Token] {
				continue
			}
		case CancelSend:
			if dropped[x.Token] {
				continue
			}
		}
		out = append(out, e)
	}
	return out
}
