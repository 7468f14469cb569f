package quicremote_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/abcast/abcast/internal/poll"
	"github.com/abcast/abcast/proto/abcastpb"
	"github.com/abcast/abcast/quicremote"
)

// Issue 16, "memory accounting": what a peer's messages cost while they
// wait in local mailboxes is charged to its budget until the target takes
// them, and the watches a peer may place on local actors are bounded.

// blockedActors spawns n actors named prefix0.. on sys whose default
// (unbounded) mailboxes fill: each blocks on its first message until
// release is closed.
func blockedActors(t *testing.T, sys *actor.ActorSystem, prefix string, n int, release <-chan struct{}) []func() actor.Mailbox {
	t.Helper()
	var mbs []func() actor.Mailbox
	for i := range n {
		props, mb := capturedMailbox(actor.PropsFromFunc(func(ctx actor.Context) {
			if _, ok := ctx.Message().(*wrapperspb.StringValue); ok {
				<-release
			}
		}))
		spawnNamed(t, sys, props, fmt.Sprintf("%s%d", prefix, i))
		mbs = append(mbs, mb)
	}
	return mbs
}

// A peer that sends to many slow actors cannot make the node hold more in
// their mailboxes than its budget: each waiting message stays charged until
// its actor takes it, so once the budget is spent further messages are
// refused (DeadLetterDecodeLimit); as the actors drain, the charges come
// back. Without this, each target held up to MaxTargetBacklog messages
// uncharged, without bound in the number of targets.
func TestSecQueuedMessagesChargedUntilTaken(t *testing.T) {
	const budgetBytes = 1 << 20
	const targets, perTarget, size = 8, 40, 8 << 10 // 2.5 MiB offered
	budget := &budgetRPC{limit: budgetBytes}
	bubble(t, 2, budget.onNode0(), func(t *testing.T, c *rcluster) {
		a, x := c.nodes[0], c.nodes[1]
		c.waitMesh()
		release := make(chan struct{})
		var once sync.Once
		unblock := func() { once.Do(func() { close(release) }) }
		defer unblock()
		mbs := blockedActors(t, a.sys, "slow", targets, release)
		raw := openRaw(t, x, a)
		body := strings.Repeat("q", size)
		for range perTarget {
			var envs []*abcastpb.ActorEnvelope
			for k := range targets {
				envs = append(envs, envTo(t, fmt.Sprintf("slow%d", k), wrapperspb.String(body)))
			}
			raw.send(envs...)
		}
		queued := 0
		for _, mb := range mbs {
			queued += mb().UserMessageCount()
		}
		held := budget.held.Load()
		s := a.remote.Stats()
		t.Logf("offered %d messages of %d KiB to %d blocked actors: %d queued (%.1f MiB), budget held %.1f MiB of %.1f MiB, decode-limit dead letters %d",
			targets*perTarget, size>>10, targets, queued, float64(queued*size)/(1<<20), float64(held)/(1<<20), float64(budgetBytes)/(1<<20), s.DeadLetters[quicremote.DeadLetterDecodeLimit])
		if queued*size > budgetBytes {
			t.Fatalf("mailboxes hold %d bytes of the peer's messages, its budget is %d", queued*size, budgetBytes)
		}
		if held < int64(queued*size) {
			t.Fatalf("budget holds %d bytes while %d bytes of the peer's messages wait in mailboxes", held, queued*size)
		}
		if s.DeadLetters[quicremote.DeadLetterDecodeLimit] == 0 {
			t.Fatal("no message refused although the budget was spent")
		}
		if q := a.remote.Stats().QueuedBytes; q != held {
			t.Fatalf("Stats.QueuedBytes %d, the budget holds %d", q, held)
		}
		// The ledger looks at the mailboxes every few milliseconds: poll.
		unblock()
		poll.Until(t, time.Second, "the charges to come back once the actors took their messages", func() bool {
			return budget.held.Load() == 0 && a.remote.Stats().QueuedBytes == 0
		})
	})
}

// A peer may watch local actors only up to MaxWatchesPerPeer at once;
// further watches are refused and counted. Each watch is an entry in the
// watched actor's state, so without a bound a peer could grow it with
// watchers of any made-up id. Unwatch and the Terminated sent when the
// actor stops give the slots back.
func TestSecIncomingWatchesBounded(t *testing.T) {
	const limit = 100
	bubble(t, 2, rclusterOpts{remote: func(_ int, rc *quicremote.Config) { rc.MaxWatchesPerPeer = limit }}, func(t *testing.T, c *rcluster) {
		a, x := c.nodes[0], c.nodes[1]
		c.waitMesh()
		spawnNamed(t, a.sys, echoProps(nil), "watched")
		raw := openRaw(t, x, a)
		watch := func(from, to int) {
			var envs []*abcastpb.ActorEnvelope
			for i := from; i < to; i++ {
				envs = append(envs, sysTo(t, "watched", &actor.Watch{Watcher: &actor.PID{Address: x.id.ID.String(), Id: fmt.Sprintf("w%d", i)}}))
			}
			raw.send(envs...)
		}
		watch(0, 3*limit)
		s := a.remote.Stats()
		if s.WatchesRefused != 2*limit {
			t.Fatalf("%d watches refused of %d beyond the limit %d", s.WatchesRefused, 2*limit, limit)
		}
		// Unwatch frees slots.
		var envs []*abcastpb.ActorEnvelope
		for i := range 10 {
			envs = append(envs, sysTo(t, "watched", &actor.Unwatch{Watcher: &actor.PID{Address: x.id.ID.String(), Id: fmt.Sprintf("w%d", i)}}))
		}
		raw.send(envs...)
		watch(1000, 1010)
		if s := a.remote.Stats(); s.WatchesRefused != 2*limit {
			t.Fatalf("watches after 10 unwatches: %d refused in all, want still %d", s.WatchesRefused, 2*limit)
		}
		watch(2000, 2001)
		if s := a.remote.Stats(); s.WatchesRefused != 2*limit+1 {
			t.Fatalf("a watch beyond the limit again: %d refused, want %d", s.WatchesRefused, 2*limit+1)
		}
		// The actor stops: its Terminated to each watcher ends the
		// records, and the peer may watch as many again.
		a.sys.Root.Stop(actor.NewPID(a.sys.Address(), "watched"))
		c.eventually("the watched actor to stop", func() bool {
			_, ok := a.sys.ProcessRegistry.GetLocal("watched")
			return !ok
		})
		spawnNamed(t, a.sys, echoProps(nil), "watched")
		watch(3000, 3000+limit)
		if s := a.remote.Stats(); s.WatchesRefused != 2*limit+1 {
			t.Fatalf("after the watched actor stopped: %d refused, want still %d", s.WatchesRefused, 2*limit+1)
		}
	})
}
