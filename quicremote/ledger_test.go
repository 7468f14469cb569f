package quicremote

import "testing"

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
			q.q = append(q.q, queuedCharge{cost: i + 1})
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
		if left := len(q.q) - q.head; left != tc.held-tc.want {
			t.Errorf("held %d, keep %d: %d left, want %d", tc.held, tc.keep, left, tc.held-tc.want)
		}
		if again := q.takeBeyond(tc.keep); len(again) != 0 && tc.keep >= 0 {
			t.Errorf("held %d, keep %d: a second call took %d more", tc.held, tc.keep, len(again))
		}
	}
}
