package quicremote

import (
	"testing"

	"github.com/abcast/abcast/membership"
)

// The mailbox counter a settle reads can be -1 (protoactor's default
// mailbox counts a message after pushing it, and its reader can take it
// in between) or larger than the charges held: neither may take more
// than the queue holds. Before takeBeyond, a -1 made settle index past
// the queue's end while holding the ledger's lock, and the remote's Close
// hung on it.
func TestTakeBeyondStaysInsideTheQueue(t *testing.T) {
	for _, tc := range []struct {
		held, keep, want int
	}{
		{3, -1, 3}, {3, 0, 3}, {3, 1, 2}, {3, 3, 0}, {3, 7, 0}, {0, -1, 0}, {0, 0, 0},
	} {
		q := &targetCharges{}
		for i := range tc.held {
			// Alternating peers: runs of one message each.
			q.push(queuedCharge{peer: membership.NodeID{byte(i % 2)}, cost: i + 1, n: 1})
		}
		got := q.takeBeyond(tc.keep)
		if len(got) != tc.want {
			t.Errorf("held %d, keep %d: took %d, want %d", tc.held, tc.keep, len(got), tc.want)
		}
		for i, c := range got {
			if c.cost != i+1 {
				t.Errorf("held %d, keep %d: took cost %d at %d, want the oldest first", tc.held, tc.keep, c.cost, i)
			}
		}
		if q.msgs != tc.held-tc.want {
			t.Errorf("held %d, keep %d: %d left, want %d", tc.held, tc.keep, q.msgs, tc.held-tc.want)
		}
		if again := q.takeBeyond(tc.keep); len(again) != 0 && tc.keep >= 0 {
			t.Errorf("held %d, keep %d: a second call took %d more", tc.held, tc.keep, len(again))
		}
	}
}

// Consecutive messages from one peer share a run; taking part of a run
// gives back its cost pro rata, and the whole cost comes back in the end.
func TestChargesOfOnePeerShareARun(t *testing.T) {
	a, b := membership.NodeID{1}, membership.NodeID{2}
	q := &targetCharges{}
	for range 10 {
		q.push(queuedCharge{peer: a, cost: 10, n: 1})
	}
	q.push(queuedCharge{peer: b, cost: 7, n: 1})
	if len(q.q) != 2 || q.msgs != 11 {
		t.Fatalf("%d runs holding %d messages, want 2 holding 11", len(q.q), q.msgs)
	}
	back := map[membership.NodeID]int{}
	for _, c := range q.takeBeyond(4) { // 7 taken: of a's 10
		back[c.peer] += c.cost
	}
	if back[a] != 70 || back[b] != 0 || q.msgs != 4 {
		t.Fatalf("gave back %v, %d left; want a 70, 4 left", back, q.msgs)
	}
	for _, c := range q.takeBeyond(0) {
		back[c.peer] += c.cost
	}
	if back[a] != 100 || back[b] != 7 || q.msgs != 0 {
		t.Fatalf("gave back %v, %d left; want a 100, b 7, none left", back, q.msgs)
	}
}
