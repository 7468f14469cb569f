package actors_test

import (
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/actors/abcasttest"
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

		// A watcher on node 0 watches node 2's echo; node 2 dies.
		terminated := make(chan *actor.Terminated, 1)
		target := s.Node(0).PID(s.ID(2), "echo")
		_, err := sys.Root.SpawnNamed(actor.PropsFromFunc(func(ctx actor.Context) {
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
