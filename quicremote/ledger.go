package quicremote

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/abcast/abcast/membership"
)

// What a peer makes this node hold beyond the frames the transport charges:
// its messages waiting in local mailboxes, and its watches on local actors.

// ---- messages waiting in mailboxes ----

// queueLedger keeps each peer's decoded messages charged to its transport
// memory budget (RPC.Reserve) from decoding until their actor has taken
// them from its mailbox, so that what a peer's messages cost us is bounded
// by its budget however many actors it sends to and however slow they
// are.
//
// protoactor says nothing when an actor takes a message, but a mailbox's
// user messages leave it in order and UserMessageCount says how many are
// left. So per target the ledger keeps the charges of the messages the
// remote put there, oldest first; when the mailbox holds k messages, at
// most the newest k of them can still be there, and the older charges are
// given back. Messages local senders put in the same mailbox only make that
// conservative (they keep newer charges a little longer), and a message
// the mailbox refused stays charged until the mailbox drains. The ledger
// looks at its mailboxes every ledgerSweep while it holds anything, and at
// once when a peer's budget has no room left for a message.
type queueLedger struct {
	r *Remote

	mu      sync.Mutex
	targets map[string]*targetCharges
	n       int // messages held, all targets
	// bytes charged now, for Stats.
	bytes atomic.Int64
	wake  chan struct{}
}

// targetCharges are the charges of one local actor's waiting messages.
type targetCharges struct {
	proc actor.Process // the process they were put in: a new one with the same id does not hold them
	mb   actor.Mailbox
	// q holds runs of consecutive messages from one peer, oldest first,
	// from head; msgs is how many messages they hold. A steady stream
	// from one peer is one run, not one entry per message.
	q    []queuedCharge
	head int
	msgs int
	out  []queuedCharge // takeBeyond's result, reused
}

// push adds one message's charge, joining the newest run if it is the
// same peer's.
func (tc *targetCharges) push(c queuedCharge) {
	if k := len(tc.q) - 1; k >= tc.head && tc.q[k].peer == c.peer {
		tc.q[k].cost += c.cost
		tc.q[k].n += c.n
	} else {
		tc.q = append(tc.q, c)
	}
	tc.msgs += c.n
}

// takeBeyond removes and returns the charges of the oldest messages beyond
// the newest keep, those the actor has taken. keep comes from the
// mailbox's counter, which protoactor's default mailbox moves after the
// message itself: a reader can see -1 there, and more than the queue
// holds. A run split in two gives back its cost pro rata (its messages
// came from one peer in one stretch), the remainder with its last message.
// The returned slice is valid until the next call.
func (tc *targetCharges) takeBeyond(keep int) []queuedCharge {
	k := tc.msgs - max(0, keep)
	tc.out = tc.out[:0]
	for k > 0 && tc.head < len(tc.q) {
		run := &tc.q[tc.head]
		if run.n <= k {
			tc.out = append(tc.out, *run)
			k -= run.n
			tc.msgs -= run.n
			tc.head++
			continue
		}
		part := queuedCharge{peer: run.peer, n: k, cost: run.cost * k / run.n}
		run.n -= k
		run.cost -= part.cost
		tc.msgs -= k
		tc.out = append(tc.out, part)
		k = 0
	}
	return tc.out
}

// queuedCharge is the cost of n messages from peer.
type queuedCharge struct {
	peer membership.NodeID
	cost int
	n    int
}

// owedCharge is a delivered message whose charge an incoming stream hands
// to the ledger at the end of its batch.
type owedCharge struct {
	id   string
	proc actor.Process
	mb   actor.Mailbox
	queuedCharge
}

// maxKeptCharges bounds the array a drained target keeps for reuse.
const maxKeptCharges = 4096

// ledgerSweep is how often the ledger looks at the mailboxes it holds
// charges for: the longest a charge outlives its message when the peer's
// budget is not short.
const ledgerSweep = 10 * time.Millisecond

func (l *queueLedger) init(r *Remote) {
	l.r = r
	l.targets = make(map[string]*targetCharges)
	l.wake = make(chan struct{}, 1)
}

// add takes over the charges of messages just put in mailboxes.
func (l *queueLedger) add(owed []owedCharge) {
	if len(owed) == 0 {
		return
	}
	var sum int64
	var back []queuedCharge
	l.mu.Lock()
	wasEmpty := l.n == 0
	for i := range owed {
		o := &owed[i]
		tc := l.targets[o.id]
		switch {
		case tc == nil:
			tc = &targetCharges{proc: o.proc, mb: o.mb}
			l.targets[o.id] = tc
		case tc.proc != o.proc:
			// The id names a new actor: the old one's messages went
			// with it.
			back = append(back, tc.q[tc.head:]...)
			l.n -= tc.msgs
			*tc = targetCharges{proc: o.proc, mb: o.mb}
		}
		tc.push(o.queuedCharge)
		l.n += o.n
		sum += int64(o.cost)
	}
	l.mu.Unlock()
	for _, c := range back {
		sum -= int64(c.cost)
		l.r.rpc.Release(c.peer, c.cost)
	}
	l.bytes.Add(sum)
	if wasEmpty {
		select {
		case l.wake <- struct{}{}:
		default:
		}
	}
}

// settle gives back the charges of messages their actors have taken (and
// of actors that are gone), and returns the bytes given back.
func (l *queueLedger) settle() int {
	back, total := l.collect()
	if total > 0 {
		l.bytes.Add(-int64(total))
		for peer, n := range back {
			l.r.rpc.Release(peer, n)
		}
	}
	return total
}

// collect removes the charges settle gives back, per peer. The lock is
// released by a defer: a panic here must not leave the ledger locked for
// releaseAll, or Close would wait on it forever.
func (l *queueLedger) collect() (map[membership.NodeID]int, int) {
	back := make(map[membership.NodeID]int)
	total := 0
	l.mu.Lock()
	defer l.mu.Unlock()
	for id, tc := range l.targets {
		keep, alive := 0, false
		if tc.mb != nil {
			if p, ok := l.r.system.ProcessRegistry.GetLocal(id); ok && p == tc.proc {
				keep, alive = tc.mb.UserMessageCount(), true
			}
		}
		for _, c := range tc.takeBeyond(keep) {
			back[c.peer] += c.cost
			total += c.cost
			l.n -= c.n
		}
		switch {
		case tc.head == len(tc.q) && alive && len(tc.q) <= maxKeptCharges:
			// Drained, but its actor lives and will likely get more:
			// keep the queue's array (a steady stream to one actor
			// otherwise grew a new one after every sweep).
			tc.q, tc.head = tc.q[:0], 0
		case tc.head == len(tc.q):
			delete(l.targets, id)
		case tc.head > len(tc.q)/2:
			tc.q = tc.q[:copy(tc.q, tc.q[tc.head:])]
			tc.head = 0
		}
	}
	return back, total
}

// releaseAll gives back every charge (the remote is closing).
func (l *queueLedger) releaseAll() {
	l.mu.Lock()
	for _, tc := range l.targets {
		tc.mb = nil
	}
	l.mu.Unlock()
	l.settle()
}

// run settles every ledgerSweep while the ledger holds charges, until ctx
// ends.
func (l *queueLedger) run(ctx context.Context) {
	defer l.releaseAll()
	for {
		select {
		case <-l.wake:
		case <-ctx.Done():
			return
		}
		t := time.NewTimer(ledgerSweep)
		for {
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return
			}
			l.settle()
			l.mu.Lock()
			empty := l.n == 0
			l.mu.Unlock()
			if empty {
				break
			}
			t.Reset(ledgerSweep)
		}
	}
}

// ---- watches peers hold on local actors ----

// errTooManyWatches refuses a Watch beyond MaxWatchesPerPeer.
var errTooManyWatches = errors.New("the peer holds MaxWatchesPerPeer watches on this node's actors")

// incomingWatches records the watches each peer holds on local actors, to
// bound them (MaxWatchesPerPeer): protoactor keeps every watcher in the
// watched actor's state, and a peer can name watchers of any id. A record
// ends with the peer's Unwatch, with the Terminated the actor sends it, and
// with the peer leaving the member set (its watches are then taken off the
// actors).
type incomingWatches struct {
	mu sync.Mutex
	by map[membership.NodeID]map[watchKey]struct{}
}

// add records peer's watch of watchee by watcher, reporting false when it
// is new and the peer already holds limit.
func (w *incomingWatches) add(peer membership.NodeID, watchee, watcher string, limit int) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	k := watchKey{watchee, watcher}
	m := w.by[peer]
	if _, ok := m[k]; ok {
		return true
	}
	if len(m) >= limit {
		return false
	}
	if m == nil {
		if w.by == nil {
			w.by = make(map[membership.NodeID]map[watchKey]struct{})
		}
		m = make(map[watchKey]struct{})
		w.by[peer] = m
	}
	m[k] = struct{}{}
	return true
}

func (w *incomingWatches) remove(peer membership.NodeID, watchee, watcher string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if m := w.by[peer]; m != nil {
		delete(m, watchKey{watchee, watcher})
		if len(m) == 0 {
			delete(w.by, peer)
		}
	}
}

// drop forgets peer's watches and returns them.
func (w *incomingWatches) drop(peer membership.NodeID) []watchKey {
	w.mu.Lock()
	defer w.mu.Unlock()
	m := w.by[peer]
	delete(w.by, peer)
	keys := make([]watchKey, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	return keys
}

// dropWatchesOf takes a departed member's watches off the local actors.
func (r *Remote) dropWatchesOf(peer membership.NodeID) {
	addr := peer.String()
	for _, k := range r.watches.drop(peer) {
		pid := actor.NewPID(r.addr, k.watchee)
		if proc, ok := r.system.ProcessRegistry.GetLocal(k.watchee); ok {
			proc.SendSystemMessage(pid, &actor.Unwatch{Watcher: actor.NewPID(addr, k.watcher)})
		}
	}
}
