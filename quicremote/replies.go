package quicremote

import (
	"crypto/rand"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/abcast/abcast/membership"
)

// Replies to local futures.
//
// protoactor names a future "future$N" with N from a counter, and a future
// takes the first message that reaches it. Sent as they are, a member that
// can guess N could answer another member's requests. So a request whose
// sender is a local future travels with a reply alias instead: a random id
// ("reply$" and 26 base32 characters, 130 bits) that stands for the future,
// names the one member the request went to, and takes one message. A
// peer's message to a future's own id, to an alias it was not given, or to
// an alias already answered is refused and counted (ForgedReplies).
//
// The alias is registered as a local process too, so that an actor of this
// node that is handed the alias (the asked member forwarded the request
// back here) can answer it; local actors are trusted.

const (
	replyAliasPrefix = "reply$"
	futurePrefix     = "future$"
)

// replyAlias stands for future towards peer.
type replyAlias struct {
	r      *Remote
	pid    *actor.PID
	future *actor.PID
	peer   membership.NodeID
	done   atomic.Bool // answered or failed: it takes nothing more
}

var _ actor.Process = (*replyAlias)(nil)

// replyTable holds the live aliases.
type replyTable struct {
	mu      sync.Mutex
	aliases map[string]*replyAlias
	sweepAt int
}

func isLocalFuture(r *Remote, pid *actor.PID) bool {
	return strings.HasPrefix(pid.Id, futurePrefix) && (pid.Address == r.addr || pid.Address == protoactorLocalAddress)
}

// newAlias registers an alias for future's request to peer.
func (r *Remote) newAlias(future *actor.PID, peer membership.NodeID) *replyAlias {
	a := &replyAlias{r: r, future: future, peer: peer}
	for {
		pid, ok := r.system.ProcessRegistry.Add(a, replyAliasPrefix+rand.Text())
		if ok {
			a.pid = pid
			break
		}
	}
	t := &r.replies
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.aliases == nil {
		t.aliases = make(map[string]*replyAlias)
		t.sweepAt = 1024
	}
	t.aliases[a.pid.Id] = a
	if len(t.aliases) >= t.sweepAt {
		// Futures that timed out or were answered another way have left
		// the registry; their aliases go too, so the table stays as small
		// as the live futures.
		for id, old := range t.aliases {
			if _, live := r.system.ProcessRegistry.GetLocal(old.future.Id); !live && !old.done.Load() {
				delete(t.aliases, id)
				r.system.ProcessRegistry.Remove(old.pid)
			}
		}
		t.sweepAt = 2*len(t.aliases) + 1024
	}
	return a
}

// alias returns the live alias id, or nil.
func (r *Remote) alias(id string) *replyAlias {
	t := &r.replies
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.aliases[id]
}

// forget unregisters a.
func (a *replyAlias) forget() {
	t := &a.r.replies
	t.mu.Lock()
	if t.aliases[a.pid.Id] == a {
		delete(t.aliases, a.pid.Id)
	}
	t.mu.Unlock()
	a.r.system.ProcessRegistry.Remove(a.pid)
}

// claim takes the alias's one answer; false if it was already taken.
func (a *replyAlias) claim() bool {
	if !a.done.CompareAndSwap(false, true) {
		return false
	}
	a.forget()
	return true
}

// answer hands msg to the future, once.
func (a *replyAlias) answer(msg any) bool {
	if !a.claim() {
		return false
	}
	if proc, ok := a.r.system.ProcessRegistry.GetLocal(a.future.Id); ok {
		proc.SendUserMessage(a.future, msg)
	}
	return true
}

// SendUserMessage is a local actor answering (trusted).
func (a *replyAlias) SendUserMessage(_ *actor.PID, msg any) { a.answer(msg) }

// SendSystemMessage: an alias never watches anything, so no system message
// is meant for it.
func (a *replyAlias) SendSystemMessage(*actor.PID, any) {}

// Stop forgets the alias.
func (a *replyAlias) Stop(*actor.PID) { a.claim() }

// failingAliases claims every live alias of peer (so a late answer is
// refused) and returns them.
func (r *Remote) failingAliases(peer membership.NodeID) []*replyAlias {
	t := &r.replies
	t.mu.Lock()
	var out []*replyAlias
	for _, a := range t.aliases {
		if a.peer == peer && !a.done.Load() {
			out = append(out, a)
		}
	}
	t.mu.Unlock()
	n := 0
	for _, a := range out {
		if a.claim() {
			out[n] = a
			n++
		}
	}
	return out[:n]
}

// failFutures answers each alias's future with a dead letter, for reason.
func (r *Remote) failFutures(as []*replyAlias, reason DeadLetterReason) {
	for _, a := range as {
		if proc, ok := r.system.ProcessRegistry.GetLocal(a.future.Id); ok {
			r.ctr.failedFutures.Add(1)
			r.noteFutureFailed(a.future, a.peer, nil, reason, false)
			proc.SendUserMessage(a.future, &actor.DeadLetterResponse{})
		}
	}
}
