package quicremote

import (
	"errors"
	"fmt"
	"sync"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/abcast/abcast/membership"
	"github.com/abcast/abcast/proto/abcastpb"
)

// Dead-letter reasons for requesters.
//
// protoactor answers a request it gives up on with a bare
// DeadLetterResponse, and the future fails with actor.ErrDeadLetter, which
// says nothing of why. The remote keeps that behaviour and, beside it,
// remembers why it failed a local future: because of this node (queue
// full, peer down, unreachable, ...) or because the peer's remote refused
// the message, which it then answers with a RemoteDeadLetter carrying the
// reason instead of a bare DeadLetterResponse (the receiving remote turns
// it back into a DeadLetterResponse for the future or actor). Remote.Result
// returns that reason as a *DeadLetterError.

// DeadLetterError is the error Remote.Result returns for a request the
// remote gave up on. errors.Is(err, actor.ErrDeadLetter) holds, as for
// protoactor's own dead letters.
type DeadLetterError struct {
	Peer   membership.NodeID // the member the request was for
	Target *actor.PID
	Reason DeadLetterReason
	// ByPeer: the peer's remote refused the message (otherwise this
	// node's remote gave up on it before it was delivered there).
	ByPeer bool
}

func (e *DeadLetterError) Error() string {
	by := "this node"
	if e.ByPeer {
		by = "the peer"
	}
	id := ""
	if e.Target != nil {
		id = e.Target.Id
	}
	return fmt.Sprintf("quicremote: message to %q on %s dead-lettered by %s: %s", id, e.Peer.Short(), by, e.Reason)
}

// Unwrap makes errors.Is(err, actor.ErrDeadLetter) hold.
func (e *DeadLetterError) Unwrap() error { return actor.ErrDeadLetter }

// maxReasons bounds the reasons remembered for futures nobody asked
// Result about; the oldest are forgotten first.
const maxReasons = 4096

// reasonTable remembers why local futures failed, by future id, until
// Result takes the reason.
type reasonTable struct {
	mu    sync.Mutex
	m     map[string]*DeadLetterError
	order []string
}

func (t *reasonTable) put(futureID string, e *DeadLetterError) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = make(map[string]*DeadLetterError)
	}
	for len(t.m) >= maxReasons && len(t.order) > 0 {
		delete(t.m, t.order[0])
		t.order = t.order[1:]
	}
	if _, ok := t.m[futureID]; !ok {
		t.order = append(t.order, futureID)
	}
	t.m[futureID] = e
	if len(t.order) > 2*maxReasons { // ids already taken by Result
		live := t.order[:0]
		for _, id := range t.order {
			if _, ok := t.m[id]; ok {
				live = append(live, id)
			}
		}
		t.order = live
	}
}

func (t *reasonTable) take(futureID string) *DeadLetterError {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.m[futureID]
	delete(t.m, futureID)
	return e
}

// Result waits for f, as f.Result does. When f failed with
// actor.ErrDeadLetter because of the remote, the error is a
// *DeadLetterError saying why (which still matches actor.ErrDeadLetter).
// Call it at most once per future: the reason is handed out once.
func (r *Remote) Result(f *actor.Future) (any, error) {
	res, err := f.Result()
	if errors.Is(err, actor.ErrDeadLetter) {
		if e := r.reasons.take(f.PID().Id); e != nil {
			return nil, e
		}
	}
	return res, err
}

// noteFutureFailed remembers why the local future was failed.
func (r *Remote) noteFutureFailed(future *actor.PID, peer membership.NodeID, target *actor.PID, reason DeadLetterReason, byPeer bool) {
	r.reasons.put(future.Id, &DeadLetterError{Peer: peer, Target: target, Reason: reason, ByPeer: byPeer})
}

// remoteDeadLetterReply is what a refused message's sender is answered.
func remoteDeadLetterReply(target *actor.PID, reason DeadLetterReason) *abcastpb.RemoteDeadLetter {
	return &abcastpb.RemoteDeadLetter{Reason: uint32(reason), TargetId: target.Id}
}

// reasonFromWire reads a RemoteDeadLetter's reason; one this node does not
// know is reported as DeadLetterRefused.
func reasonFromWire(v uint32) DeadLetterReason {
	if v < uint32(numDeadLetterReasons) {
		return DeadLetterReason(v)
	}
	return DeadLetterRefused
}
