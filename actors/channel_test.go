package actors_test

import (
	"errors"
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/actors/abcasttest"
	"github.com/abcast/abcast/broadcast"
)

// When abcast's supervision gives up on a channel (its sender keeps
// crashing), the channel does not linger half-alive: ChannelFailed is
// published on the EventStream, its calls fail with ErrChannelFailed, its
// stats and the node's Health say so — and the name can be opened again.
func TestChannelGivenUpIsReported(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := abcasttest.NewSubnet(t, 2, abcasttest.Options{Latency: 5 * time.Millisecond})
		s.StartAll()
		failed := make(chan *actors.ChannelFailed, 1)
		sub := s.Node(0).System().EventStream.Subscribe(func(evt any) {
			if f, ok := evt.(*actors.ChannelFailed); ok {
				select {
				case failed <- f:
				default:
				}
			}
		})
		defer s.Node(0).System().EventStream.Unsubscribe(sub)
		ch := s.OpenChannel("blocks", abcasttest.ChannelOptions{})
		s.PanicWhen(func(node int, kind, channel string, _ any) bool { return node == 0 && kind == "sender" })
		// Every publish wakes the sender, which crashes: past MaxRestarts the
		// channel's actor escalates, the node's supervisor restarts it, and
		// past its own limit gives up.
		var f *actors.ChannelFailed
		if err := abcasttest.Eventually(time.Minute, func() error {
			_ = ch.On(0).Publish(broadcast.Artifact{ID: broadcast.ArtifactID(fmt.Sprint(time.Now().UnixNano())), Payload: []byte("x")})
			select {
			case f = <-failed:
				return nil
			default:
				return errors.New("no ChannelFailed yet from crashing senders")
			}
		}); err != nil {
			t.Fatal(err)
		}
		if f.Channel != "blocks" || f.Node != s.ID(0) {
			t.Fatalf("event %+v", f)
		}
		if err := ch.On(0).Publish(broadcast.Artifact{ID: "after", Payload: []byte("x")}); !errors.Is(err, actors.ErrChannelFailed) {
			t.Fatalf("publish on a failed channel: %v", err)
		}
		if err := s.Node(0).Health(); !errors.Is(err, actors.ErrChannelFailed) {
			t.Fatalf("health: %v", err)
		}
		if !ch.On(0).Stats().Failed {
			t.Fatal("stats do not say failed")
		}
		if s.Node(0).Stats().GiveUps == 0 {
			t.Fatal("no give-up counted")
		}
		s.ClearPanics()
		again, err := s.Node(0).OpenChannel(actors.ChannelConfig{Name: "blocks", Consume: func(ev actors.Event) {}})
		if err != nil {
			t.Fatalf("reopen after failure: %v", err)
		}
		if err := again.Publish(broadcast.Artifact{ID: "fresh", Payload: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		if err := s.Node(0).Health(); err != nil {
			t.Fatalf("health after reopening: %v", err)
		}
	})
}

// Close stops a channel on one node: its artifacts are withdrawn at the
// peers, and re-opening the name works and delivers again both ways.
func TestChannelCloseAndReopen(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := abcasttest.NewSubnet(t, 3, abcasttest.Options{Latency: 10 * time.Millisecond})
		s.StartAll()
		ch := s.OpenChannel("blocks", abcasttest.ChannelOptions{})
		for i := range 3 {
			publishN(t, ch, i, 5, 3000, "first")
		}
		ch.AssertDelivered(t, time.Minute)
		closed := ch.On(2)
		if err := closed.Close(); err != nil {
			t.Fatal(err)
		}
		if err := closed.Publish(broadcast.Artifact{ID: "late", Payload: []byte("x")}); !errors.Is(err, actors.ErrChannelClosed) {
			t.Fatalf("publish on a closed channel: %v", err)
		}
		// The others drop what node 2 advertised.
		if err := abcasttest.Eventually(time.Minute, func() error {
			for i := range 2 {
				for _, id := range ch.Recorder(i).Held() {
					if len(id) > 8 && id[:8] == "first-2-" {
						return fmt.Errorf("node %d still holds %s", i, id)
					}
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		// Re-opening: a fresh channel of the same name, delivering both ways.
		rec := abcasttest.NewRecorder()
		reopened, err := s.Node(2).OpenChannel(actors.ChannelConfig{Name: "blocks", Consume: rec.Consume})
		if err != nil {
			t.Fatal(err)
		}
		if err := reopened.Publish(broadcast.Artifact{ID: "second-2", Payload: []byte("again")}); err != nil {
			t.Fatal(err)
		}
		if err := abcasttest.Eventually(time.Minute, func() error {
			if _, ok := ch.Recorder(0).Holds("second-2"); !ok {
				return errors.New("node 0 lacks second-2")
			}
			if len(rec.Held()) != 10 {
				return fmt.Errorf("reopened node holds %d of the others' 10", len(rec.Held()))
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if held := reopened.Held(); len(held) != 10 {
			t.Fatalf("Held lists %d artifacts, want 10", len(held))
		}
	})
}

// A channel opened long after its node connected catches up at once: its
// first delivery comes within a few round trips, not after the peers'
// backoff.
func TestLateChannelCatchesUpWithinRoundTrips(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const oneWay = 50 * time.Millisecond
		s := abcasttest.NewSubnet(t, 3, abcasttest.Options{Latency: oneWay})
		s.StartAll()
		ch := s.OpenChannel("blocks", abcasttest.ChannelOptions{})
		publishN(t, ch, 0, 3, 200, "early")
		publishN(t, ch, 1, 3, 5000, "early")
		time.Sleep(40 * time.Second)
		rec := abcasttest.NewRecorder()
		start := time.Now()
		late, err := s.Node(2).NewChannel(actors.ChannelConfig{Name: "late", Consume: rec.Consume})
		if err != nil {
			t.Fatal(err)
		}
		other := make([]*actors.Channel, 2)
		for i := range 2 {
			if other[i], err = s.Node(i).OpenChannel(actors.ChannelConfig{Name: "late", Consume: func(actors.Event) {}}); err != nil {
				t.Fatal(err)
			}
			if err := other[i].Publish(broadcast.Artifact{ID: broadcast.ArtifactID(fmt.Sprint("late-", i)), Payload: make([]byte, 5000)}); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(20 * time.Second) // the others run alone a while
		start = time.Now()
		if _, err := s.Node(2).System().Root.SpawnNamed(late.Props(), "late-channel"); err != nil {
			t.Fatal(err)
		}
		if err := abcasttest.Eventually(time.Minute, func() error {
			if len(rec.Held()) < 2 {
				return fmt.Errorf("late channel holds %d of 2", len(rec.Held()))
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		rtt := 2 * oneWay
		t.Logf("late channel's first two artifacts (one pushed, one fetched) after %v (RTT %v)", took, rtt)
		if took > 6*rtt {
			t.Fatalf("late channel caught up after %v, more than 6 RTT", took)
		}
		if err := ch.WaitDelivered(time.Minute); err != nil {
			t.Fatal(err)
		}
	})
}

// The actor-native API: a user's supervisor spawns the channel, and the
// user's actors publish, abort, reevaluate, subscribe and list by message,
// with typed replies carrying the same errors as the Go methods.
func TestChannelByMessagesUnderUsersSupervisor(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := abcasttest.NewSubnet(t, 2, abcasttest.Options{Latency: 5 * time.Millisecond})
		s.StartAll()
		peer := s.OpenChannel("blocks", abcasttest.ChannelOptions{})
		_ = peer
		node := s.Node(1)
		// Our node's channel is declared with a small slot limit, and run
		// by an actor of the user's.
		scfg := broadcast.DefaultSenderConfig()
		scfg.MaxSlots = 2
		got := make(chan actors.Event, 10)
		consumer, err := node.System().Root.SpawnNamed(actor.PropsFromFunc(func(ctx actor.Context) {
			if ev, ok := ctx.Message().(actors.Event); ok {
				got <- ev
				actors.Confirm(ctx)
			}
		}), "my-consumer")
		if err != nil {
			t.Fatal(err)
		}
		_ = consumer
		// The peer's channel object on node 1 already exists (OpenChannel on
		// the subnet); use another name for ours.
		ch, err := node.NewChannel(actors.ChannelConfig{Name: "mine", Sender: &scfg})
		if err != nil {
			t.Fatal(err)
		}
		type started struct{ pid *actor.PID }
		pids := make(chan *actor.PID, 1)
		sup, err := node.System().Root.SpawnNamed(actor.PropsFromFunc(func(ctx actor.Context) {
			if _, ok := ctx.Message().(*actor.Started); ok {
				pids <- ctx.Spawn(ch.Props())
			}
		}), "user-supervisor")
		if err != nil {
			t.Fatal(err)
		}
		chPID := <-pids
		if chPID.Id[:len(sup.Id)] != sup.Id {
			t.Fatalf("channel actor %s is not under the user's supervisor %s", chPID, sup)
		}
		root := node.System().Root
		ask := func(msg any) any {
			t.Helper()
			res, err := root.RequestFuture(chPID, msg, time.Second).Result()
			if err != nil {
				t.Fatalf("%T: %v", msg, err)
			}
			return res
		}
		if r := ask(&actors.Subscribe{Consumer: consumer}).(*actors.Subscribed); r.Err != nil {
			t.Fatal(r.Err)
		}
		if r := ask(&actors.Subscribe{Consumer: node.System().NewLocalPID("ghost")}).(*actors.Subscribed); !errors.Is(r.Err, actors.ErrNotLocal) {
			t.Fatalf("subscribe to a ghost: %v", r.Err)
		}
		for _, id := range []broadcast.ArtifactID{"a", "b"} {
			if r := ask(&actors.Publish{Artifact: broadcast.Artifact{ID: id, Payload: []byte(id)}}).(*actors.Published); r.Err != nil || r.ID != id {
				t.Fatalf("publish %s: %+v", id, r)
			}
		}
		if r := ask(&actors.Publish{Artifact: broadcast.Artifact{ID: "a", Payload: []byte("a")}}).(*actors.Published); !errors.Is(r.Err, broadcast.ErrDuplicate) {
			t.Fatalf("duplicate: %v", r.Err)
		}
		if r := ask(&actors.Publish{Artifact: broadcast.Artifact{ID: "c", Payload: []byte("c")}}).(*actors.Published); !errors.Is(r.Err, broadcast.ErrSlotsExhausted) {
			t.Fatalf("third with two slots: %v", r.Err)
		}
		if r := ask(&actors.Abort{ID: "a"}).(*actors.Aborted); r.Err != nil {
			t.Fatal(r.Err)
		}
		if r := ask(&actors.Abort{ID: "zzz"}).(*actors.Aborted); !errors.Is(r.Err, broadcast.ErrUnknownID) {
			t.Fatalf("abort unknown: %v", r.Err)
		}
		if r := ask(&actors.Reevaluate{}).(*actors.Reevaluated); r.Err != nil {
			t.Fatal(r.Err)
		}
		// The peer opens "mine" too and publishes; our consumer gets it.
		theirs, err := s.Node(0).OpenChannel(actors.ChannelConfig{Name: "mine", Consume: func(actors.Event) {}})
		if err != nil {
			t.Fatal(err)
		}
		if err := theirs.Publish(broadcast.Artifact{ID: "from-0", Payload: []byte("hi")}); err != nil {
			t.Fatal(err)
		}
		select {
		case ev := <-got:
			if d, ok := ev.(*actors.Delivered); !ok || d.Artifact.ID != "from-0" {
				t.Fatalf("got %#v", ev)
			}
		case <-time.After(time.Minute):
			t.Fatal("nothing delivered to the subscribed consumer")
		}
		if err := abcasttest.Eventually(time.Second, func() error {
			h := ask(&actors.ListHeld{}).(*actors.Held)
			if len(h.Artifacts) != 1 || h.Artifacts[0].ID != "from-0" || !h.Artifacts[0].Confirmed {
				return fmt.Errorf("held %+v", h.Artifacts)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if st := ask(&actors.GetStats{}).(*actors.ChannelStats); st.Live != 1 {
			t.Fatalf("stats: live %d, want 1", st.Live)
		}
		// Stopping the user's supervisor stops the channel: closed, not failed.
		if err := root.StopFuture(sup).Wait(); err != nil {
			t.Fatal(err)
		}
		<-ch.Done()
		if err := ch.Err(); !errors.Is(err, actors.ErrChannelClosed) {
			t.Fatalf("after the supervisor stopped: %v", err)
		}
		if err := node.Health(); err != nil {
			t.Fatalf("health: %v", err)
		}
	})
}

// A consumer PID of another actor system, or one no actor answers, is
// refused when the channel is declared.
func TestChannelRefusesConsumerThatIsNotLocal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := abcasttest.NewSubnet(t, 2, abcasttest.Options{})
		s.StartAll()
		other := s.Node(1).System().NewLocalPID("somebody")
		for _, pid := range []*actor.PID{other, s.Node(0).System().NewLocalPID("nobody")} {
			_, err := s.Node(0).OpenChannel(actors.ChannelConfig{Name: "x", ConsumerPID: pid})
			if !errors.Is(err, actors.ErrNotLocal) {
				t.Fatalf("consumer %s: %v", pid, err)
			}
		}
	})
}
