package actors_test

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/actors/abcasttest"
	"github.com/abcast/abcast/broadcast"
)

// consumerFunc is a consumer actor whose behaviour the test sets per
// message: it confirms every event unless act says otherwise.
type consumerFunc func(ctx actor.Context, ev actors.Event)

func (f consumerFunc) Receive(ctx actor.Context) {
	if ev, ok := ctx.Message().(actors.Event); ok {
		f(ctx, ev)
	}
}

func consumerProps(f func(ctx actor.Context, ev actors.Event)) func(int) *actor.Props {
	return func(int) *actor.Props {
		return actor.PropsFromProducer(func() actor.Actor { return consumerFunc(f) })
	}
}

func publishN(t *testing.T, ch *abcasttest.Channel, node, n, size int, prefix string) {
	t.Helper()
	for k := range n {
		id := broadcast.ArtifactID(fmt.Sprintf("%s-%d-%d", prefix, node, k))
		for {
			err := ch.Publish(node, broadcast.Artifact{ID: id, Payload: payloadOf(id, size)})
			if err == nil {
				break
			}
			if !errors.Is(err, actors.ErrBusy) {
				t.Fatal(err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func payloadOf(id broadcast.ArtifactID, size int) []byte {
	p := make([]byte, size)
	copy(p, id)
	return p
}

// G1 at the application's edge: a consumer actor that crashes on the
// first hand-over of every Delivered (thousands of crashes, each
// restarted by its supervisor) still confirms every live artifact exactly
// once, and the channel keeps its delivery credits (a leak of one per
// crash would stop it after DeliveryCredits crashes).
func TestConsumerActorCrashingOnEveryDeliveryLosesNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := abcasttest.NewSubnet(t, 2, abcasttest.Options{Latency: 5 * time.Millisecond})
		s.StartAll()
		var crashes atomic.Int64
		ch := s.OpenChannel("blocks", abcasttest.ChannelOptions{ConsumerProps: consumerProps(func(ctx actor.Context, ev actors.Event) {
			if d, ok := ev.(*actors.Delivered); ok && d.Attempt == 1 {
				crashes.Add(1)
				panic("consumer bug on first sight")
			}
			actors.Confirm(ctx)
		})})
		n := 2000
		if raceEnabled {
			n = 200
		}
		publishN(t, ch, 0, n, 100, "a")
		ch.AssertDelivered(t, 10*time.Minute)
		if crashes.Load() < int64(n) {
			t.Fatalf("%d crashes for %d artifacts: the consumer did not see each one first", crashes.Load(), n)
		}
		if got := ch.Recorder(1).TotalDeliveries(); got != n {
			t.Fatalf("%d deliveries recorded, want %d exactly once each", got, n)
		}
		// The recorder sees a confirmation as the consumer makes it; the
		// channel's counters follow once the confirmation reached its
		// actor, so they are polled. Credits are whole in the end: the
		// receiver holds no delivery credit out.
		var st actors.ChannelStats
		err := abcasttest.Eventually(time.Minute, func() error {
			st = ch.On(1).Stats()
			if st.Delivered != uint64(n) || st.Unconfirmed != 0 || st.CreditsOut != 0 {
				return fmt.Errorf("channel counts %d confirmed deliveries, %d unconfirmed, %d delivery credits out", st.Delivered, st.Unconfirmed, st.CreditsOut)
			}
			return nil
		})
		t.Logf("crashes %d, redeliveries %d, lost %d, timeouts %d", crashes.Load(), st.Redeliveries, st.ConsumerLost, st.ConsumerTimeouts)
		if err != nil {
			t.Fatal(err)
		}
	})
}

// A consumer actor that is stopped loses nothing: its events wait, with
// their credits, until an actor of the same name runs again, and then
// each is confirmed exactly once.
func TestConsumerStoppedAndRespawnedGetsEverything(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := abcasttest.NewSubnet(t, 2, abcasttest.Options{Latency: 5 * time.Millisecond})
		s.StartAll()
		ch := s.OpenChannel("blocks", abcasttest.ChannelOptions{ConsumerProps: consumerProps(func(ctx actor.Context, ev actors.Event) {
			actors.Confirm(ctx)
		})})
		publishN(t, ch, 0, 50, 3000, "before")
		ch.AssertDelivered(t, time.Minute)
		sys := s.Node(1).System()
		pid := sys.NewLocalPID("consumer-blocks")
		if err := sys.Root.StopFuture(pid).Wait(); err != nil {
			t.Fatal(err)
		}
		publishN(t, ch, 0, 200, 3000, "while-stopped")
		time.Sleep(30 * time.Second)
		if err := ch.CheckDelivered(); err == nil {
			t.Fatal("delivered with no consumer running")
		}
		if u := ch.On(1).Stats().Unconfirmed; u == 0 {
			t.Fatal("nothing waits for the stopped consumer")
		}
		ch.SpawnConsumer(1)
		ch.AssertDelivered(t, time.Minute)
		if got := ch.Recorder(1).TotalDeliveries(); got != 250 {
			t.Fatalf("%d deliveries recorded, want 250", got)
		}
		// The channel's counters follow the confirmations (polled).
		if err := abcasttest.Eventually(time.Minute, func() error {
			if st := ch.On(1).Stats(); st.CreditsOut != 0 {
				return fmt.Errorf("%d credits out", st.CreditsOut)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	})
}

// A consumer slower than ConsumerTimeout gets the event again; it skips
// what it has already confirmed (same Seq), as the contract says, so the
// application takes every artifact exactly once.
func TestConsumerSlowerThanTimeoutGetsRedeliveries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := actors.DefaultConfig()
		cfg.ConsumerTimeout = 2 * time.Second
		s := abcasttest.NewSubnet(t, 2, abcasttest.Options{Config: cfg, Latency: 5 * time.Millisecond})
		s.StartAll()
		ch := s.OpenChannel("blocks", abcasttest.ChannelOptions{ConsumerProps: consumerProps(func(ctx actor.Context, ev actors.Event) {
			if d, ok := ev.(*actors.Delivered); ok && d.Attempt == 1 && d.Seq%3 == 0 {
				time.Sleep(5 * time.Second) // longer than ConsumerTimeout
			}
			actors.Confirm(ctx)
		})})
		publishN(t, ch, 0, 30, 100, "slow")
		ch.AssertDelivered(t, 10*time.Minute)
		st := ch.On(1).Stats()
		if st.ConsumerTimeouts == 0 || ch.Recorder(1).Redelivered() == 0 {
			t.Fatalf("no timeouts (%d) or redeliveries seen (%d)", st.ConsumerTimeouts, ch.Recorder(1).Redelivered())
		}
		if got := ch.Recorder(1).TotalDeliveries(); got != 30 {
			t.Fatalf("%d deliveries recorded, want 30", got)
		}
	})
}

// A consumer stopped for good: its events wait; Subscribe binds another
// actor, which gets all of them.
func TestConsumerResubscribedToAnotherActor(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := abcasttest.NewSubnet(t, 2, abcasttest.Options{Latency: 5 * time.Millisecond})
		s.StartAll()
		ch := s.OpenChannel("blocks", abcasttest.ChannelOptions{ConsumerProps: consumerProps(func(ctx actor.Context, ev actors.Event) {
			actors.Confirm(ctx)
		})})
		sys := s.Node(1).System()
		if err := sys.Root.StopFuture(sys.NewLocalPID("consumer-blocks")).Wait(); err != nil {
			t.Fatal(err)
		}
		publishN(t, ch, 0, 40, 100, "x")
		time.Sleep(10 * time.Second)
		got := make(chan broadcast.ArtifactID, 100)
		other, err := sys.Root.SpawnNamed(actor.PropsFromFunc(func(ctx actor.Context) {
			if d, ok := ctx.Message().(*actors.Delivered); ok {
				got <- d.Artifact.ID
			}
			actors.Confirm(ctx)
		}), "another-consumer")
		if err != nil {
			t.Fatal(err)
		}
		// By message, as an actor would; the reply says it took.
		res, err := sys.Root.RequestFuture(ch.On(1).PID(), &actors.Subscribe{Consumer: other}, time.Second).Result()
		if err != nil || res.(*actors.Subscribed).Err != nil {
			t.Fatalf("subscribe: %v %v", res, err)
		}
		seen := map[broadcast.ArtifactID]bool{}
		for len(seen) < 40 {
			select {
			case id := <-got:
				if seen[id] {
					t.Fatalf("%s delivered twice", id)
				}
				seen[id] = true
			case <-time.After(time.Minute):
				t.Fatalf("only %d of 40 delivered to the new consumer", len(seen))
			}
		}
		// A PID no local actor answers is refused.
		if err := ch.On(1).Subscribe(sys.NewLocalPID("nobody")); !errors.Is(err, actors.ErrNotLocal) {
			t.Fatalf("subscribe to a missing actor: %v", err)
		}
	})
}

// A Consume function that panics does not confirm: the event comes again
// after a pause and nothing is lost or delivered twice.
func TestConsumeFunctionPanicIsNotAConfirmation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := abcasttest.NewSubnet(t, 2, abcasttest.Options{Latency: 5 * time.Millisecond})
		s.StartAll()
		ch := s.OpenChannel("blocks", abcasttest.ChannelOptions{Consume: func(int) func(actors.Event) {
			return func(ev actors.Event) {
				if d, ok := ev.(*actors.Delivered); ok && d.Attempt < 3 {
					panic("not yet")
				}
			}
		}})
		publishN(t, ch, 0, 100, 100, "f")
		ch.AssertDelivered(t, 5*time.Minute)
		st := ch.On(1).Stats()
		if st.ConsumerPanics < 200 {
			t.Fatalf("%d panics, want two per artifact", st.ConsumerPanics)
		}
		if got := ch.Recorder(1).TotalDeliveries(); got != 100 {
			t.Fatalf("%d deliveries recorded, want 100", got)
		}
	})
}
