package broadcast

import (
	"slices"
	"strings"
)

// Effect is an instruction the caller of a core carries out: send, cancel,
// fetch, deliver. Cores return effects as data and never perform I/O.
type Effect interface{ isEffect() }

func (SendUpdate) isEffect()         {}
func (CancelSend) isEffect()         {}
func (RetryAt) isEffect()            {}
func (StartFetch) isEffect()         {}
func (AdvertisersChanged) isEffect() {}
func (CancelFetch) isEffect()        {}
func (Deliver) isEffect()            {}
func (Withdraw) isEffect()           {}

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

func sortedIDs(m map[ArtifactID]*idState) []ArtifactID {
	out := make([]ArtifactID, 0, len(m))
	for id := range m {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}
