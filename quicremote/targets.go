package quicremote

import (
	"strings"
	"weak"

	"github.com/asynkron/protoactor-go/actor"
)

// targetTable is one incoming stream's memory of the targets its
// envelopes named: the PID handed to the local process, what kind of
// target the id is, whether it is hidden, and the actor's process. A
// stream mostly carries messages for a few actors, so each is looked up in
// protoactor's registry (a hash of the id and a lock) once, not once per
// message. Nothing here widens what a peer may reach: every entry is
// checked again against what can change (see targetEntry).
type targetTable struct {
	last *targetEntry
	m    map[string]*targetEntry
}

// maxStreamTargets bounds a stream's table; when it is full it starts
// afresh. A peer naming ever new ids costs a lookup each, as without it.
const maxStreamTargets = 256

type targetKind uint8

const (
	targetActor     targetKind = iota // any other process
	targetReply                       // a reply alias (replies.go)
	targetActivator                   // the remote's spawn service
	targetFuture                      // a local future's own id
)

// targetEntry is what a target id resolved to. The verdicts that may
// change are kept with what they were decided against:
//   - hidden, against the hidden set of the time (Hide and Unhide replace
//     the set, so a new set means deciding again);
//   - proc, the actor's process, only while it is alive: protoactor marks
//     a process dead when it stops, and a stopped actor's id may be taken
//     by a new one. It is held weakly, so the table never keeps a stopped
//     actor's process (and its mailbox) in memory. Processes other than
//     actors' are looked up every time.
type targetEntry struct {
	pid      actor.PID // handed out by address; entries are never copied
	kind     targetKind
	internal bool // protoactor's or the remote's own process (the activator too)
	hidden   bool
	hiddenIn *map[string]struct{}
	proc     weak.Pointer[actor.ActorProcess]
}

// entry returns the entry for the envelope's target, making it on first
// sight. Its PID is the one handed to the local process for every message
// to that target.
func (t *targetTable) entry(r *Remote, env *rawEnvelope) *targetEntry {
	if e := t.last; e != nil && e.pid.RequestId == env.targetReq && e.pid.Id == string(env.targetID) {
		return e
	}
	e := t.m[string(env.targetID)]
	if e == nil || e.pid.RequestId != env.targetReq {
		e = newTargetEntry(r, env)
		if e.kind == targetReply {
			// Every reply has an alias of its own: nothing to remember.
			return e
		}
		if t.m == nil || len(t.m) >= maxStreamTargets {
			t.m = make(map[string]*targetEntry)
		}
		t.m[e.pid.Id] = e
	}
	t.last = e
	return e
}

func newTargetEntry(r *Remote, env *rawEnvelope) *targetEntry {
	id := string(env.targetID)
	e := &targetEntry{pid: actor.PID{Address: r.addr, Id: id, RequestId: env.targetReq}}
	switch {
	case strings.HasPrefix(id, replyAliasPrefix):
		e.kind = targetReply
	case id == activatorID:
		e.kind = targetActivator
	case strings.HasPrefix(id, futurePrefix):
		e.kind = targetFuture
	}
	e.internal = internalProcess(id)
	return e
}

// isHidden reports whether peers may not reach e (Hide, or one of
// protoactor's or the remote's own processes).
func (e *targetEntry) isHidden(r *Remote) bool {
	if e.internal {
		return true
	}
	set := r.hidden.m.Load()
	if set != e.hiddenIn || e.hiddenIn == nil {
		e.hidden, e.hiddenIn = coveredBy(set, e.pid.Id), set
	}
	return e.hidden
}

// process returns e's local process and whether there is one (the
// dead-letter process if not).
func (e *targetEntry) process(r *Remote) (actor.Process, bool) {
	if ap := e.proc.Value(); ap != nil && !processDead(ap) {
		return ap, true
	}
	p, found := r.system.ProcessRegistry.GetLocal(e.pid.Id)
	e.proc = weak.Pointer[actor.ActorProcess]{}
	if ap, ok := p.(*actor.ActorProcess); ok && found && deadKnown && !processDead(ap) {
		e.proc = weak.Make(ap)
	}
	return p, found
}
