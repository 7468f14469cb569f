package actors

import (
	"fmt"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

// strategy is how abcast's supervisors treat a crashing child: restart it
// (counted), up to maxRestarts within window; past that the failure is
// escalated (giveUp false) — the supervisor itself fails and its own
// parent decides, the way a failure nobody can handle travels up a tree —
// or the child is stopped (giveUp true: the top of our tree, where the
// stop is reported as a failed channel).
//
// protoactor's one-for-one strategy stops a child quietly once it is over
// its limit, and its decider cannot tell a restart from that stop; a
// stopped link, fetch or consumer actor would leave its channel
// half-alive, so we count and decide here.
type strategy struct {
	n           *Node
	maxRestarts int
	window      time.Duration
	giveUp      bool
}

var _ actor.SupervisorStrategy = (*strategy)(nil)

func (n *Node) childStrategy() *strategy {
	return &strategy{n: n, maxRestarts: n.cfg.MaxRestarts, window: n.cfg.RestartWindow}
}

func (n *Node) topStrategy() *strategy {
	return &strategy{n: n, maxRestarts: n.cfg.MaxRestarts, window: n.cfg.RestartWindow, giveUp: true}
}

func (s *strategy) HandleFailure(_ *actor.ActorSystem, sup actor.Supervisor, child *actor.PID, rs *actor.RestartStatistics, reason, message any) {
	rs.Fail()
	n := s.n
	if rs.NumberOfFailures(s.window) <= s.maxRestarts {
		n.restarts.Add(1)
		n.log.Warn().Str("actor", child.Id).Str("reason", fmt.Sprint(reason)).Int("failures", rs.FailureCount()).
			Msg("actor crashed; restarting it")
		sup.RestartChildren(child)
		return
	}
	rs.Reset()
	n.giveUps.Add(1)
	if s.giveUp {
		n.log.Error().Str("actor", child.Id).Str("reason", fmt.Sprint(reason)).Int("limit", s.maxRestarts).Dur("window", s.window).
			Msg("actor crashed too often; stopping it")
		if c := n.channelOfActor(child); c != nil {
			c.markFailed(reason)
		}
		sup.StopChildren(child)
		return
	}
	n.log.Error().Str("actor", child.Id).Str("reason", fmt.Sprint(reason)).Int("limit", s.maxRestarts).Dur("window", s.window).
		Msg("actor crashed too often; escalating to its supervisor's parent")
	if c := n.channelOfActor(child); c != nil {
		c.noteCrash(reason)
	}
	sup.EscalateFailure(fmt.Errorf("%s crashed more than %d times in %v: %v", child.Id, s.maxRestarts, s.window, reason), message)
}
