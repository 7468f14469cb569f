package quicremote_test

import (
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/abcast/abcast/quicremote"
)

// An incoming stream remembers what its targets resolved to, but every
// remembered verdict follows what changed since, on the same stream: an
// actor hidden after its first message is refused, one unhidden is
// reached again, a stopped actor's messages are refused as for an actor
// that does not exist, and a new actor under the same name gets them. The
// remote's own processes (the spawn service included) stay out of reach
// for system messages too.
func TestTargetTableFollowsChanges(t *testing.T) {
	bubble(t, 2, rclusterOpts{}, func(t *testing.T, c *rcluster) {
		a, x := c.nodes[0], c.nodes[1]
		c.waitMesh()
		col := spawnCollector(t, a.sys, "t", 10)
		raw := openRaw(t, x, a)
		str := func(s string) *wrapperspb.StringValue { return wrapperspb.String(s) }
		expect := func(ch chan any, want string) {
			t.Helper()
			if m := recv(t, ch, 10*time.Second, want); m.(*wrapperspb.StringValue).Value != want {
				t.Fatalf("got %v, want %s", m, want)
			}
		}
		nothing := func(ch chan any) {
			t.Helper()
			c.eventually("nothing delivered", func() bool { return len(ch) == 0 })
		}
		dead := func(reason quicremote.DeadLetterReason, want uint64) {
			t.Helper()
			if n := a.remote.Stats().DeadLetters[reason]; n != want {
				t.Fatalf("%v dead letters: %d, want %d", reason, n, want)
			}
		}

		raw.send(envTo(t, "t", str("first")))
		expect(col.ch, "first")

		a.remote.Hide(col.pid)
		raw.send(envTo(t, "t", str("hidden")))
		nothing(col.ch)
		dead(quicremote.DeadLetterHidden, 1)

		a.remote.Unhide(col.pid)
		raw.send(envTo(t, "t", str("unhidden")))
		expect(col.ch, "unhidden")

		if err := a.sys.Root.StopFuture(col.pid).Wait(); err != nil {
			t.Fatal(err)
		}
		raw.send(envTo(t, "t", str("stopped")))
		nothing(col.ch)
		dead(quicremote.DeadLetterNotFound, 1)

		again := spawnCollector(t, a.sys, "t", 10)
		raw.send(envTo(t, "t", str("respawned")))
		expect(again.ch, "respawned")

		// A Watch on the spawn service is answered as for a hidden actor.
		raw.send(sysTo(t, "quicremote$activator", &actor.Watch{Watcher: actor.NewPID(x.id.ID.String(), "w")}))
		dead(quicremote.DeadLetterHidden, 2)
	})
}
