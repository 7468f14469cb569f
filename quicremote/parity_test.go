package quicremote_test

import (
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/abcast/abcast/actors/actorkit"
	"github.com/abcast/abcast/membership"
	"github.com/abcast/abcast/proto/abcastpb"
	"github.com/abcast/abcast/quicremote"
	"github.com/abcast/abcast/quicremote/transport"
)

// Parity with protoactor's stock remote (issue 13 point 5): remote spawn,
// endpoint events, a JSON serializer, dead-letter reasons for requesters.

// Remote spawn of a registered kind: the PID works; names, kinds, members
// and the per-member bound give clear errors; the spawning member may
// stop what it spawned, another may not.
func TestRemoteSpawnAcrossNodes(t *testing.T) {
	bubble(t, 3, rclusterOpts{phantoms: 1, remote: func(_ int, rc *quicremote.Config) {
		rc.MaxSpawnsPerPeer = 3
		rc.ConnectGrace = time.Minute
	}}, func(t *testing.T, c *rcluster) {
		a, b, x := c.nodes[0], c.nodes[1], c.nodes[2]
		c.waitMesh()
		if err := b.remote.Register("echo", echoProps(nil)); err != nil {
			t.Fatal(err)
		}
		pid, err := a.remote.SpawnNamed(b.id.ID, "e1", "echo", 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if pid.Address != b.id.ID.String() || pid.Id != "e1" {
			t.Fatalf("spawned %v", pid)
		}
		if res := request(t, a.sys, pid, wrapperspb.String("hi")); res.(*wrapperspb.StringValue).Value != "hi" {
			t.Fatalf("spawned actor answered %v", res)
		}
		anon, err := a.remote.Spawn(b.id.ID, "echo", 5*time.Second)
		if err != nil || anon.Address != b.id.ID.String() {
			t.Fatalf("Spawn: %v, %v", anon, err)
		}
		for _, tc := range []struct {
			node       membership.NodeID
			name, kind string
			want       error
		}{
			{b.id.ID, "e1", "echo", quicremote.ErrNameTaken},
			{b.id.ID, "e2", "nope", quicremote.ErrUnknownKind},
			{b.id.ID, "a/b", "echo", quicremote.ErrSpawnRefused},
			{b.id.ID, "quicremote$activator", "echo", quicremote.ErrSpawnRefused},
			{b.id.ID, "future$1", "echo", quicremote.ErrSpawnRefused},
			{newIdentity(t).ID, "e3", "echo", quicremote.ErrNotMember},
		} {
			if _, err := a.remote.SpawnNamed(tc.node, tc.name, tc.kind, 5*time.Second); !errors.Is(err, tc.want) {
				t.Fatalf("SpawnNamed(%q, %q): %v, want %v", tc.name, tc.kind, err, tc.want)
			}
		}
		if !errors.Is(quicremote.ErrNameTaken, actor.ErrNameExists) || !errors.Is(quicremote.ErrSpawnTimeout, actor.ErrTimeout) {
			t.Fatal("spawn errors do not wrap protoactor's")
		}
		// A third spawn reaches the bound of 3 (e1, anon, e3); a fourth
		// is refused until one stops.
		if _, err := a.remote.SpawnNamed(b.id.ID, "e3", "echo", 5*time.Second); err != nil {
			t.Fatal(err)
		}
		if _, err := a.remote.SpawnNamed(b.id.ID, "e4", "echo", 5*time.Second); !errors.Is(err, quicremote.ErrSpawnRefused) {
			t.Fatalf("spawn past MaxSpawnsPerPeer: %v", err)
		}
		// x may not stop a's actor; a may.
		x.sys.Root.Stop(x.remote.PID(b.id.ID, "e1"))
		request(t, a.sys, pid, wrapperspb.String("still there"))
		c.eventually("x's Stop refused", func() bool { return b.remote.Stats().RefusedSystem == 1 })
		if err := a.sys.Root.StopFuture(pid).Wait(); err != nil {
			t.Fatal(err)
		}
		c.eventually("e1 gone", func() bool {
			_, ok := b.sys.ProcessRegistry.GetLocal("e1")
			return !ok
		})
		if _, err := a.remote.SpawnNamed(b.id.ID, "e4", "echo", 5*time.Second); err != nil {
			t.Fatalf("spawn after one stopped: %v", err)
		}
		// This node itself.
		if err := a.remote.Register("echo", echoProps(nil)); err != nil {
			t.Fatal(err)
		}
		if self, err := a.remote.SpawnNamed(a.id.ID, "mine", "echo", time.Second); err != nil || self.Address != a.id.ID.String() {
			t.Fatalf("spawn on this node: %v, %v", self, err)
		}
		// A member that is not up: no answer within the timeout.
		start := time.Now()
		_, err = a.remote.SpawnNamed(c.phantom[0].ID, "p", "echo", 2*time.Second)
		if !errors.Is(err, quicremote.ErrSpawnTimeout) || time.Since(start) != 2*time.Second {
			t.Fatalf("spawn on a member that is not up: %v after %v", err, time.Since(start))
		}
	})
}

// A member that goes down while a spawn waits: the error says so.
func TestRemoteSpawnPeerDown(t *testing.T) {
	bubble(t, 2, rclusterOpts{}, func(t *testing.T, c *rcluster) {
		a, b := c.nodes[0], c.nodes[1]
		c.waitMesh()
		c.mem.Disconnect(a.id.ID, b.id.ID)
		synctest.Wait()
		_, err := a.remote.SpawnNamed(b.id.ID, "x", "echo", time.Minute)
		var dl *quicremote.DeadLetterError
		if !errors.As(err, &dl) || dl.Reason != quicremote.DeadLetterUnreachable || dl.ByPeer || !errors.Is(err, actor.ErrDeadLetter) {
			t.Fatalf("spawn on a member that is down: %v", err)
		}
	})
}

// Remote.Result says why a request was dead-lettered, whether this node's
// remote or the peer's gave up, and the error still matches
// actor.ErrDeadLetter; an actor asking the same gets protoactor's
// DeadLetterResponse.
func TestRemoteDeadLetterReasons(t *testing.T) {
	bubble(t, 2, rclusterOpts{phantoms: 1, remote: func(_ int, rc *quicremote.Config) {
		rc.ConnectGrace = time.Second
	}}, func(t *testing.T, c *rcluster) {
		a, b := c.nodes[0], c.nodes[1]
		c.waitMesh()
		b.remote.Hide(spawnNamed(t, b.sys, echoProps(nil), "internal"))
		ask := func(pid *actor.PID) error {
			_, err := a.remote.Result(a.sys.Root.RequestFuture(pid, wrapperspb.String("?"), time.Minute))
			return err
		}
		for _, tc := range []struct {
			pid    *actor.PID
			reason quicremote.DeadLetterReason
			byPeer bool
		}{
			{a.remote.PID(b.id.ID, "internal"), quicremote.DeadLetterHidden, true},
			{a.remote.PID(b.id.ID, "nobody"), quicremote.DeadLetterNotFound, true},
			{a.remote.PID(c.phantom[0].ID, "x"), quicremote.DeadLetterUnreachable, false},
		} {
			err := ask(tc.pid)
			var dl *quicremote.DeadLetterError
			if !errors.As(err, &dl) || dl.Reason != tc.reason || dl.ByPeer != tc.byPeer || !errors.Is(err, actor.ErrDeadLetter) {
				t.Fatalf("request to %v: %v, want %v (by the peer: %v)", tc.pid.Id, err, tc.reason, tc.byPeer)
			}
			if !strings.Contains(err.Error(), tc.reason.String()) {
				t.Fatalf("error %q does not say %q", err, tc.reason)
			}
		}
		// Waiting on a member that goes down.
		spawnNamed(t, b.sys, actor.PropsFromFunc(func(actor.Context) {}), "silent")
		f := a.sys.Root.RequestFuture(a.remote.PID(b.id.ID, "silent"), wrapperspb.String("?"), time.Minute)
		time.Sleep(10 * time.Millisecond) // delivered and acknowledged
		synctest.Wait()
		c.mem.Disconnect(a.id.ID, b.id.ID)
		var dl *quicremote.DeadLetterError
		if _, err := a.remote.Result(f); !errors.As(err, &dl) || dl.Reason != quicremote.DeadLetterPeerDown {
			t.Fatalf("request to a member that went down: %v", err)
		}
		c.mem.Connect(a.id.ID, b.id.ID)
		c.waitMesh()
		// An actor that asks gets protoactor's answer.
		got := make(chan any, 1)
		a.sys.Root.Spawn(actor.PropsFromFunc(func(ctx actor.Context) {
			switch m := ctx.Message().(type) {
			case *actor.Started:
				ctx.Request(a.remote.PID(b.id.ID, "internal"), wrapperspb.String("?"))
			case *actor.DeadLetterResponse:
				got <- m
			}
		}))
		if m := recv(t, got, time.Minute, "the actor's dead letter answer").(*actor.DeadLetterResponse); m.Target.GetId() != "internal" {
			t.Fatalf("dead letter answer %v", m)
		}
	})
}

type greetingJSON struct {
	Text string
	N    int
}

type pointJSON struct{ X, Y int }

// The JSON serializer carries registered Go values (pointers and values)
// both ways, request and answer; an unregistered type is not sent, and a
// payload with too many JSON values is refused before decoding.
func TestRemoteJSONSerializerRoundTrip(t *testing.T) {
	newJSON := func() *quicremote.JSONSerializer {
		js := quicremote.NewJSONSerializer(1)
		if err := js.Register("test.Greeting", &greetingJSON{}); err != nil {
			t.Fatal(err)
		}
		if err := js.Register("test.Point", pointJSON{}); err != nil {
			t.Fatal(err)
		}
		if err := js.Register("test.Greeting", &pointJSON{}); err == nil {
			t.Fatal("a name registered twice")
		}
		return js
	}
	bubble(t, 2, rclusterOpts{remote: func(_ int, rc *quicremote.Config) {
		rc.Serializers = []quicremote.Serializer{newJSON()}
	}}, func(t *testing.T, c *rcluster) {
		a, b := c.nodes[0], c.nodes[1]
		c.waitMesh()
		spawnNamed(t, b.sys, actor.PropsFromFunc(func(ctx actor.Context) {
			switch m := ctx.Message().(type) {
			case *greetingJSON:
				ctx.Respond(pointJSON{X: m.N, Y: len(m.Text)})
			case pointJSON:
				ctx.Respond(&greetingJSON{Text: "point", N: m.X + m.Y})
			}
		}), "json")
		target := a.remote.PID(b.id.ID, "json")
		if res := request(t, a.sys, target, &greetingJSON{Text: "héllo", N: 7}); res != (pointJSON{X: 7, Y: 6}) {
			t.Fatalf("answer %#v", res)
		}
		if res := request(t, a.sys, target, pointJSON{X: 1, Y: 2}); *res.(*greetingJSON) != (greetingJSON{Text: "point", N: 3}) {
			t.Fatalf("answer %#v", res)
		}
		if _, err := a.remote.Result(a.sys.Root.RequestFuture(target, struct{ Z int }{1}, time.Minute)); !errors.Is(err, actor.ErrDeadLetter) {
			t.Fatalf("unregistered type: %v", err)
		}
		// A hostile peer: 100,000 JSON values in 200 KB.
		raw := openRaw(t, a, b)
		hostile := []byte("[" + strings.Repeat("0,", 100000) + "0]")
		raw.send(&abcastpb.ActorEnvelope{TargetId: "json", SerializerId: 1, TypeName: "test.Point", Payload: hostile})
		if n := b.remote.Stats().DeadLetters[quicremote.DeadLetterDecodeLimit]; n != 1 {
			t.Fatalf("decode-limit dead letters %d, want 1", n)
		}
	})
}

// Endpoint events: a member connecting and disconnecting is published on
// the actor system's EventStream; a remote started after its transport
// already connected reports the connections it finds and carries messages
// at once.
func TestRemoteEndpointEventsAndLateStart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idA, idB := newIdentity(t), newIdentity(t)
		snap, err := membership.NewSnapshot(1, idA.Member("10.0.0.1:1"), idB.Member("10.0.0.2:1"))
		if err != nil {
			t.Fatal(err)
		}
		net := transport.NewMemNetwork()
		start := func(id *membership.Identity, late bool) (*actor.ActorSystem, *quicremote.Remote, *transport.MemTransport, chan any) {
			src, _ := membership.NewStaticSource(snap)
			sys := actorkit.NewActorSystem(remoteLogger(t), id.ID.String())
			cfg := quicremote.DefaultConfig()
			cfg.Messages = testMessages
			r, err := quicremote.New(sys, id.ID, membership.LatestMembers(src), cfg, remoteLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			events := make(chan any, 10)
			sys.EventStream.Subscribe(func(ev any) {
				switch ev.(type) {
				case *quicremote.EndpointConnected, *quicremote.EndpointTerminated:
					events <- ev
				}
			})
			// The node creates the transport first and hands events to
			// the remote from then on; before Start they are ignored.
			tr, err := net.NewTransport(transport.DefaultConfig(), id.ID, src, r.PeerEvent)
			if err != nil {
				t.Fatal(err)
			}
			if late {
				synctest.Wait() // connected, events delivered and ignored
				if len(tr.Peers()) != 1 {
					t.Fatal("transport not connected before the remote starts")
				}
			}
			if err := r.Start(tr); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				r.Close()
				tr.Close()
				time.Sleep(2 * time.Second) // protoactor's dead-letter log throttle
			})
			return sys, r, tr, events
		}
		sysB, _, _, eventsB := start(idB, false)
		sysA, rA, _, eventsA := start(idA, true)
		spawnNamed(t, sysB, echoProps(nil), "echo")
		expect := func(events chan any, connected bool, peer membership.NodeID) {
			t.Helper()
			synctest.Wait()
			select {
			case ev := <-events:
				switch e := ev.(type) {
				case *quicremote.EndpointConnected:
					if !connected || e.Peer != peer || e.Address != peer.String() || e.ConnID == 0 {
						t.Fatalf("got %+v", e)
					}
				case *quicremote.EndpointTerminated:
					if connected || e.Peer != peer || e.Err == nil {
						t.Fatalf("got %+v", e)
					}
				}
			default:
				t.Fatalf("no event (want connected %v)", connected)
			}
			select {
			case ev := <-events:
				t.Fatalf("extra event %+v", ev)
			default:
			}
		}
		expect(eventsA, true, idB.ID)
		expect(eventsB, true, idA.ID)
		if res := request(t, sysA, rA.PID(idB.ID, "echo"), wrapperspb.String("late")); res.(*wrapperspb.StringValue).Value != "late" {
			t.Fatalf("answer %v", res)
		}
		net.Disconnect(idA.ID, idB.ID)
		expect(eventsA, false, idB.ID)
		expect(eventsB, false, idA.ID)
		net.Connect(idA.ID, idB.ID)
		expect(eventsA, true, idB.ID)
		expect(eventsB, true, idA.ID)
		if s := rA.Stats(); s.EndpointEventsDropped != 0 {
			t.Fatalf("dropped %d", s.EndpointEventsDropped)
		}
	})
}
