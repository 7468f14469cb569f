package actors_test

import (
	"errors"
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/actors/abcasttest"
	"github.com/abcast/abcast/quicremote"
)

// echo answers a StringValue with the same text and the node it runs on.
func echoProps(node int) *actor.Props {
	return actor.PropsFromFunc(func(ctx actor.Context) {
		if m, ok := ctx.Message().(*wrapperspb.StringValue); ok {
			ctx.Respond(wrapperspb.String(fmt.Sprintf("%s from %d", m.Value, node)))
		}
	})
}

// One node is one bus: the user's actors on every node of a subnet reach
// each other by PID over the remote installed on the node's actor system —
// Request, RequestFuture, Watch — while broadcast traffic runs on the same
// connections; a node that dies ends the watches on its actors with
// AddressTerminated. A restarted node's actors come back through the kit's
// OnStart hook.
func TestUserActorsTalkAcrossNodesBesideBroadcast(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := abcasttest.NewSubnet(t, 3, abcasttest.Options{Latency: 10 * time.Millisecond, OnStart: func(i int, node *actors.Node) {
			// Peers may send only the types a node registered.
			node.Remote().RegisterMessages(&wrapperspb.StringValue{})
			if _, err := node.System().Root.SpawnNamed(echoProps(i), "echo"); err != nil {
				t.Errorf("spawn echo on %d: %v", i, err)
			}
		}})
		s.StartAll()
		ch := s.OpenChannel("blocks", abcasttest.ChannelOptions{})
		for i := range 3 {
			publishN(t, ch, i, 20, 20_000, "b")
		}
		sys := s.Node(0).System()
		for j := 1; j < 3; j++ {
			pid := s.Node(0).PID(s.ID(j), "echo")
			if pid.Address == sys.Address() || sys.Address() == "nonhost" {
				t.Fatalf("PID %s of node %d is not remote from node 0 (%s)", pid, j, sys.Address())
			}
			res, err := sys.Root.RequestFuture(pid, wrapperspb.String("ping"), 10*time.Second).Result()
			if err != nil {
				t.Fatalf("request to node %d: %v", j, err)
			}
			if got := res.(*wrapperspb.StringValue).Value; got != fmt.Sprintf("ping from %d", j) {
				t.Fatalf("reply %q", got)
			}
		}
		ch.AssertDelivered(t, time.Minute)

		// A type node 1 did not register is refused, and the requester
		// learns why.
		_, err := s.Node(0).Remote().Result(sys.Root.RequestFuture(s.Node(0).PID(s.ID(1), "echo"), wrapperspb.Int64(7), 10*time.Second))
		var dl *quicremote.DeadLetterError
		if !errors.As(err, &dl) || dl.Reason != quicremote.DeadLetterUndecodable || !errors.Is(err, actor.ErrDeadLetter) {
			t.Fatalf("unregistered type: %v, want a dead letter saying undecodable", err)
		}

		// abcast's own actors (a channel's, the node's supervisor) are
		// unreachable from other members, whatever they send.
		for _, id := range []string{ch.On(1).PID().Id, ch.On(1).PID().Id + "/sender", "abcast"} {
			_, err := s.Node(0).Remote().Result(sys.Root.RequestFuture(s.Node(0).PID(s.ID(1), id), wrapperspb.String("x"), 10*time.Second))
			if !errors.As(err, &dl) || dl.Reason != quicremote.DeadLetterHidden {
				t.Fatalf("message to node 1's %s: %v, want refused as hidden", id, err)
			}
		}

		// A watcher on node 0 watches node 2's echo; node 2 dies.
		terminated := make(chan *actor.Terminated, 1)
		target := s.Node(0).PID(s.ID(2), "echo")
		_, err = sys.Root.SpawnNamed(actor.PropsFromFunc(func(ctx actor.Context) {
			switch m := ctx.Message().(type) {
			case *actor.Started:
				ctx.Watch(target)
			case *actor.Terminated:
				terminated <- m
			}
		}), "watcher")
		if err != nil {
			t.Fatal(err)
		}
		gone := make(chan *quicremote.EndpointTerminated, 4)
		sub := sys.EventStream.Subscribe(func(evt any) {
			if e, ok := evt.(*quicremote.EndpointTerminated); ok {
				select {
				case gone <- e:
				default:
				}
			}
		})
		defer sys.EventStream.Unsubscribe(sub)
		time.Sleep(time.Second)
		s.Kill(2)
		select {
		case m := <-terminated:
			if m.Who.Id != "echo" || m.Why != actor.TerminatedReason_AddressTerminated {
				t.Fatalf("terminated %v (%v), want echo with AddressTerminated", m.Who, m.Why)
			}
		case <-time.After(time.Minute):
			t.Fatal("watch of a dead node's actor did not end")
		}
		select {
		case e := <-gone:
			if e.Peer != s.ID(2) {
				t.Fatalf("endpoint terminated for %s, want node 2", e.Peer.Short())
			}
		case <-time.After(time.Minute):
			t.Fatal("the EventStream never said node 2 was gone")
		}
		// Restarted, node 2's echo is back (OnStart) and answers again.
		s.Start(2)
		if err := abcasttest.Eventually(time.Minute, func() error {
			_, err := sys.Root.RequestFuture(target, wrapperspb.String("again"), time.Second).Result()
			return err
		}); err != nil {
			t.Fatalf("restarted node's actor: %v", err)
		}
		if st := s.Node(0).Stats().Remote; st.Sent == 0 || st.Received == 0 {
			t.Fatalf("remote counted nothing: %+v", st)
		}
		ch.AssertDelivered(t, time.Minute)
	})
}
