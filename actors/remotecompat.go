package actors

import (
	"github.com/asynkron/protoactor-go/actor"

	"github.com/abcast/abcast/quicremote"
)

// hideFromPeers makes pid and its descendants unreachable from other
// members, where the remote supports it.
func hideFromPeers(r *quicremote.Remote, pid *actor.PID) {
	if h, ok := any(r).(interface{ Hide(*actor.PID) }); ok {
		h.Hide(pid)
	}
}

func unhideFromPeers(r *quicremote.Remote, pid *actor.PID) {
	if h, ok := any(r).(interface{ Unhide(*actor.PID) }); ok {
		h.Unhide(pid)
	}
}
