package quicremote_test

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/abcast/abcast/quicremote"
)

// echoProps answers a StringValue with the same text and panics on "panic".
// started counts its Started messages (restarts included).
func echoProps(started *atomic.Int32) *actor.Props {
	return actor.PropsFromFunc(func(c actor.Context) {
		switch m := c.Message().(type) {
		case *actor.Started:
			if started != nil {
				started.Add(1)
			}
		case *wrapperspb.StringValue:
			if m.Value == "panic" {
				panic("told to panic")
			}
			c.Respond(wrapperspb.String(m.Value))
		}
	})
}

func spawnNamed(t *testing.T, sys *actor.ActorSystem, props *actor.Props, name string) *actor.PID {
	t.Helper()
	pid, err := sys.Root.SpawnNamed(props, name)
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

func request(t *testing.T, sys *actor.ActorSystem, pid *actor.PID, msg any) any {
	t.Helper()
	res, err := sys.Root.RequestFuture(pid, msg, 10*time.Second).Result()
	if err != nil {
		t.Fatalf("request to %v: %v", pid, err)
	}
	return res
}

// The actor system's address is the node id, and PIDs of another member's
// actors route over QUIC: Send, RequestFuture, Respond to a remote sender,
// Forward (the original sender is kept), headers.
func TestRemoteSendRequestRespondForward(t *testing.T) {
	c := newRCluster(t, 2, rclusterOpts{})
	a, b := c.nodes[0], c.nodes[1]
	if a.sys.Address() != a.id.ID.String() || quicremote.RemoteOf(a.sys) != a.remote {
		t.Fatalf("address %q, remote %p", a.sys.Address(), quicremote.RemoteOf(a.sys))
	}
	c.waitMesh()

	spawnNamed(t, b.sys, echoProps(nil), "echo")
	echoAtB := a.remote.PID(b.id.ID, "echo")

	t.Run("RequestFuture", func(t *testing.T) {
		res := request(t, a.sys, echoAtB, wrapperspb.String("hello"))
		if s, ok := res.(*wrapperspb.StringValue); !ok || s.Value != "hello" {
			t.Fatalf("got %#v", res)
		}
	})

	t.Run("SendWithHeader", func(t *testing.T) {
		col := spawnCollector(t, b.sys, "col", 10)
		seen := make(chan string, 1)
		hdrProps := actor.PropsFromFunc(func(ctx actor.Context) {
			if s, ok := ctx.Message().(*wrapperspb.StringValue); ok {
				seen <- s.Value + "/" + ctx.MessageHeader().Get("trace")
			}
		})
		spawnNamed(t, b.sys, hdrProps, "hdr")
		a.sys.Root.Send(a.remote.PID(b.id.ID, "col"), wrapperspb.String("one-way"))
		if m := recv(t, col.ch, 10*time.Second, "one-way message"); m.(*wrapperspb.StringValue).Value != "one-way" {
			t.Fatalf("got %#v", m)
		}
		env := &actor.MessageEnvelope{Message: wrapperspb.String("x")}
		env.SetHeader("trace", "t-1")
		a.sys.Root.Send(a.remote.PID(b.id.ID, "hdr"), env)
		if got := recv(t, seen, 10*time.Second, "message with header"); got != "x/t-1" {
			t.Fatalf("got %q", got)
		}
	})

	t.Run("RespondToRemoteSender", func(t *testing.T) {
		// An actor on b asks a's echo; the answer comes back to it.
		spawnNamed(t, a.sys, echoProps(nil), "echo-a")
		got := make(chan string, 1)
		asker := actor.PropsFromFunc(func(ctx actor.Context) {
			switch m := ctx.Message().(type) {
			case *actor.PID:
				ctx.Request(m, wrapperspb.String("ask"))
			case *wrapperspb.StringValue:
				got <- m.Value + " at " + ctx.Self().Address
			}
		})
		askerPID := spawnNamed(t, b.sys, asker, "asker")
		a.sys.Root.Send(a.remote.PID(b.id.ID, askerPID.Id), a.sys.NewLocalPID("echo-a"))
		want := "ask at " + b.id.ID.String()
		if s := recv(t, got, 10*time.Second, "answer to remote asker"); s != want {
			t.Fatalf("got %q want %q", s, want)
		}
	})

	t.Run("Forward", func(t *testing.T) {
		// a's future asks a's forwarder, which forwards to b's echo; the
		// echo answers the future directly.
		fwd := actor.PropsFromFunc(func(ctx actor.Context) {
			if _, ok := ctx.Message().(*wrapperspb.StringValue); ok {
				ctx.Forward(echoAtB)
			}
		})
		fwdPID := spawnNamed(t, a.sys, fwd, "fwd")
		res := request(t, a.sys, fwdPID, wrapperspb.String("via forward"))
		if s, ok := res.(*wrapperspb.StringValue); !ok || s.Value != "via forward" {
			t.Fatalf("got %#v", res)
		}
	})

	t.Run("UnknownLocalTargetFailsFast", func(t *testing.T) {
		start := time.Now()
		_, err := a.sys.Root.RequestFuture(a.remote.PID(b.id.ID, "nobody"), wrapperspb.String("?"), 10*time.Second).Result()
		if !errors.Is(err, actor.ErrDeadLetter) || time.Since(start) > 5*time.Second {
			t.Fatalf("err %v after %v, want a dead letter at once", err, time.Since(start))
		}
	})
	// Acknowledgements come at most 2 ms after a batch.
	c.eventually("acknowledged batches", func() bool {
		s := a.remote.Stats()
		return s.Sent > 0 && s.Batches > 0 && b.remote.Stats().Received > 0
	})
}

// Messages from one actor to another arrive in the order they were sent,
// 10,000 of them across the QUIC remote.
func TestRemoteOrdering10k(t *testing.T) {
	c := newRCluster(t, 2, rclusterOpts{})
	a, b := c.nodes[0], c.nodes[1]
	c.waitMesh()
	const n = 10000
	col := spawnCollector(t, b.sys, "col", n+10)
	target := a.remote.PID(b.id.ID, "col")
	sender := actor.PropsFromFunc(func(ctx actor.Context) {
		if _, ok := ctx.Message().(*actor.Started); ok {
			for i := 0; i < n; i++ {
				ctx.Send(target, wrapperspb.Int64(int64(i)))
			}
		}
	})
	a.sys.Root.Spawn(sender)
	for i := 0; i < n; i++ {
		m := recv(t, col.ch, 20*time.Second, "ordered message")
		if got := m.(*wrapperspb.Int64Value).Value; got != int64(i) {
			t.Fatalf("message %d arrived as number %d", got, i)
		}
	}
	s := a.remote.Stats()
	t.Logf("%d messages in %d batches", s.Sent, s.Batches)
	if s.TotalDeadLetters() != 0 {
		t.Fatalf("dead letters: %+v", s.DeadLetters)
	}
}

// A remote child that panics is restarted by its supervisor, and messages
// sent to it afterwards are still delivered.
func TestRemoteChildPanicRestartsUnderSupervisor(t *testing.T) {
	bubble(t, 2, rclusterOpts{}, func(t *testing.T, c *rcluster) {
		a, b := c.nodes[0], c.nodes[1]
		c.waitMesh()
		var started atomic.Int32
		var restarts atomic.Int32
		decider := func(reason any) actor.Directive {
			restarts.Add(1)
			return actor.RestartDirective
		}
		parent := actor.PropsFromFunc(func(ctx actor.Context) {
			if _, ok := ctx.Message().(*wrapperspb.StringValue); ok {
				child, err := ctx.SpawnNamed(echoProps(&started), "child")
				if err != nil {
					panic(err)
				}
				ctx.Respond(child)
			}
		}, actor.WithSupervisor(actor.NewOneForOneStrategy(10, time.Minute, decider)))
		// The parent's own strategy governs its child.
		spawnNamed(t, b.sys, parent, "parent")
		childPID, ok := request(t, a.sys, a.remote.PID(b.id.ID, "parent"), wrapperspb.String("spawn")).(*actor.PID)
		if !ok || childPID.Address != b.id.ID.String() {
			t.Fatalf("child pid %v", childPID)
		}
		if res := request(t, a.sys, childPID, wrapperspb.String("before")); res.(*wrapperspb.StringValue).Value != "before" {
			t.Fatalf("before: %v", res)
		}
		a.sys.Root.Send(childPID, wrapperspb.String("panic"))
		for i := 0; i < 20; i++ {
			if res := request(t, a.sys, childPID, wrapperspb.String("after")); res.(*wrapperspb.StringValue).Value != "after" {
				t.Fatalf("after: %v", res)
			}
		}
		if restarts.Load() != 1 || started.Load() != 2 {
			t.Fatalf("restarts %d, started %d; want 1 and 2", restarts.Load(), started.Load())
		}
	})
}

// Stop and Poison work across nodes, with their futures, where the
// target's node allows it.
func TestRemoteStopAndPoison(t *testing.T) {
	bubble(t, 2, rclusterOpts{remote: func(_ int, rc *quicremote.Config) { rc.AllowRemoteStop = true }}, func(t *testing.T, c *rcluster) {
		a, b := c.nodes[0], c.nodes[1]
		c.waitMesh()
		for _, name := range []string{"s1", "s2", "p1", "p2"} {
			spawnNamed(t, b.sys, echoProps(nil), name)
		}
		gone := func(name string) bool {
			_, ok := b.sys.ProcessRegistry.GetLocal(name)
			return !ok
		}
		at := func(name string) *actor.PID { return a.remote.PID(b.id.ID, name) }

		if err := a.sys.Root.StopFuture(at("s1")).Wait(); err != nil {
			t.Fatal(err)
		}
		if !gone("s1") {
			t.Fatal("s1 still registered after StopFuture")
		}
		if err := a.sys.Root.PoisonFuture(at("p1")).Wait(); err != nil {
			t.Fatal(err)
		}
		if !gone("p1") {
			t.Fatal("p1 still registered after PoisonFuture")
		}
		a.sys.Root.Stop(at("s2"))
		a.sys.Root.Poison(at("p2"))
		c.eventually("s2 and p2 to stop", func() bool { return gone("s2") && gone("p2") })
	})
}

// Watch delivers Terminated with the actor's reason when a remote actor
// stops; after Unwatch nothing arrives. Watching an actor that does not
// exist gives NotFound.
func TestRemoteWatchUnwatch(t *testing.T) {
	bubble(t, 2, rclusterOpts{}, func(t *testing.T, c *rcluster) {
		a, b := c.nodes[0], c.nodes[1]
		c.waitMesh()
		spawnNamed(t, b.sys, echoProps(nil), "w1")
		spawnNamed(t, b.sys, echoProps(nil), "w2")
		spawnNamed(t, b.sys, echoProps(nil), "probe")
		at := func(name string) *actor.PID { return a.remote.PID(b.id.ID, name) }

		type cmd struct {
			watch, unwatch *actor.PID
			done           chan struct{}
		}
		terms := make(chan *actor.Terminated, 10)
		watcher := actor.PropsFromFunc(func(ctx actor.Context) {
			switch m := ctx.Message().(type) {
			case *actor.Terminated:
				terms <- m
			case cmd:
				if m.watch != nil {
					ctx.Watch(m.watch)
				}
				if m.unwatch != nil {
					ctx.Unwatch(m.unwatch)
				}
				close(m.done)
			}
		})
		wpid := a.sys.Root.Spawn(watcher)
		do := func(cm cmd) {
			cm.done = make(chan struct{})
			a.sys.Root.Send(wpid, cm)
			<-cm.done
		}

		do(cmd{watch: at("w1")})
		do(cmd{watch: at("w2")})
		do(cmd{unwatch: at("w2")})
		// The Watch/Unwatch travel in order before this round trip's request.
		request(t, a.sys, at("probe"), wrapperspb.String("sync"))
		b.sys.Root.Stop(b.sys.NewLocalPID("w1"))
		term := recv(t, terms, 10*time.Second, "Terminated for w1")
		if term.Who.Id != "w1" || term.Why != actor.TerminatedReason_Stopped {
			t.Fatalf("got %v", term)
		}
		if err := b.sys.Root.StopFuture(b.sys.NewLocalPID("w2")).Wait(); err != nil {
			t.Fatal(err)
		}
		// w2's Terminated, had it been sent, would precede this answer on
		// the b→a path... unless it was still being sent; a round trip through
		// b's queue to a settles that.
		request(t, a.sys, at("probe"), wrapperspb.String("sync"))
		select {
		case m := <-terms:
			t.Fatalf("unexpected %v after Unwatch", m)
		default:
		}

		do(cmd{watch: at("never-existed")})
		term = recv(t, terms, 10*time.Second, "Terminated for a missing actor")
		if term.Who.Id != "never-existed" || term.Why != actor.TerminatedReason_NotFound {
			t.Fatalf("got %v", term)
		}
	})
}

// PIDs naming a non-member or a malformed address resolve to dead letters:
// requests fail at once, nothing is queued.
func TestRemoteNonMemberAddressIsDeadLetter(t *testing.T) {
	bubble(t, 2, rclusterOpts{}, func(t *testing.T, c *rcluster) {
		a := c.nodes[0]
		c.waitMesh()
		outsider := newIdentity(t)
		for _, addr := range []string{outsider.ID.String(), "127.0.0.1:1234", "NOT-HEX", a.id.ID.String()[:63] + "G"} {
			_, err := a.sys.Root.RequestFuture(actor.NewPID(addr, "x"), wrapperspb.String("?"), 10*time.Second).Result()
			if !errors.Is(err, actor.ErrDeadLetter) {
				t.Fatalf("%s: %v, want dead letter", addr, err)
			}
		}
		if s := a.remote.Stats(); s.Queued != 0 || s.Sent != 0 {
			t.Fatalf("stats %+v", s)
		}
	})
}
