package broadcast

import (
	"fmt"
	"testing"
)

// Issue 15, target 5: with more peers than delivery credits, every peer's
// guaranteed first download used to take the credits, and each push of a
// small artifact then fell back to a fetch (at N=71, 100 B artifacts took
// seconds). A push is now handed over while the consumer keeps up,
// whatever fetches run.
func TestReceiverPushDeliveredWhileGuaranteedFetchesRun(t *testing.T) {
	const peers = 80
	var names []PeerID
	for i := range peers {
		names = append(names, PeerID(fmt.Sprintf("p%02d", i)))
	}
	r := newTestReceiver(t, func(c *ReceiverConfig) { c.DeliveryCredits = 64; c.MaxActiveFetches = 32 }, names...)
	for i, p := range names[:peers-1] {
		// Every peer's first download starts: it is guaranteed.
		expect(t, apply(t, r, p, 1, advert(1, 0, fmt.Sprintf("big%d", i))), fmt.Sprintf("fetch(big%d) ", i))
	}
	if r.Fetching() != peers-1 {
		t.Fatalf("%d fetches running, want %d", r.Fetching(), peers-1)
	}
	expect(t, apply(t, r, names[peers-1], 1, push(1, 0, "small")), "deliver(small from p79) ")
	checkR(t, r)
}
