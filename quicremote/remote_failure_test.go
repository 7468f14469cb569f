package quicremote_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/abcast/abcast/actors/actorkit"
	"github.com/abcast/abcast/quicremote/transport"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/abcast/abcast/membership"
	"github.com/abcast/abcast/proto/abcastpb"
	"github.com/abcast/abcast/quicremote"
)

// termWatcher spawns an actor that watches every PID it is sent and reports
// each Terminated it receives.
func termWatcher(t *testing.T, sys *actor.ActorSystem) (watch func(*actor.PID), terms chan *actor.Terminated) {
	t.Helper()
	terms = make(chan *actor.Terminated, 100)
	type watchCmd struct {
		pid  *actor.PID
		done chan struct{}
	}
	pid := sys.Root.Spawn(actor.PropsFromFunc(func(ctx actor.Context) {
		switch m := ctx.Message().(type) {
		case watchCmd:
			ctx.Watch(m.pid)
			close(m.done)
		case *actor.Terminated:
			terms <- m
		}
	}))
	return func(p *actor.PID) {
		done := make(chan struct{})
		sys.Root.Send(pid, watchCmd{p, done})
		<-done
	}, terms
}

// expectTerms reads n Terminated messages with reason why, then checks
// that no further one is waiting.
func expectTerms(t *testing.T, terms chan *actor.Terminated, n int, why actor.TerminatedReason) {
	t.Helper()
	for i := 0; i < n; i++ {
		m := recv(t, terms, 10*time.Second, fmt.Sprintf("Terminated %d of %d", i+1, n))
		if m.Why != why {
			t.Fatalf("Terminated for %v with %v, want %v", m.Who, m.Why, why)
		}
	}
	select {
	case m := <-terms:
		t.Fatalf("extra Terminated %v", m)
	default:
	}
}

// A node killed in the middle of request/response traffic: requests
// waiting on it fail at once (not at their timeout), watchers of its actors
// get exactly one Terminated with AddressTerminated each, and traffic
// between the survivors goes on.
func TestRemoteNodeKilledMidConversation(t *testing.T) {
	c := newRCluster(t, 3, rclusterOpts{})
	a, b, d := c.nodes[0], c.nodes[1], c.nodes[2]
	c.waitMesh()

	// b's "sink" takes requests and never answers; "echo" answers.
	const waiting = 20
	arrived := make(chan struct{}, waiting)
	spawnNamed(t, b.sys, actor.PropsFromFunc(func(ctx actor.Context) {
		if _, ok := ctx.Message().(*wrapperspb.StringValue); ok {
			arrived <- struct{}{}
		}
	}), "sink")
	spawnNamed(t, b.sys, echoProps(nil), "echo")
	spawnNamed(t, d.sys, echoProps(nil), "echo")

	watch, terms := termWatcher(t, a.sys)
	watch(a.remote.PID(b.id.ID, "sink"))
	watch(a.remote.PID(b.id.ID, "echo"))
	watch(a.remote.PID(d.id.ID, "echo"))

	// A conversation in progress: answered requests, then some that wait.
	for i := 0; i < 10; i++ {
		request(t, a.sys, a.remote.PID(b.id.ID, "echo"), wrapperspb.String("x"))
	}
	futures := make([]*actor.Future, waiting)
	for i := range futures {
		futures[i] = a.sys.Root.RequestFuture(a.remote.PID(b.id.ID, "sink"), wrapperspb.String("wait"), 30*time.Second)
	}
	for range waiting {
		recv(t, arrived, 10*time.Second, "a request at b")
	}
	// A future watching b's actor via StopFuture-style watch ends too.
	stopFut := actor.NewFuture(a.sys, 30*time.Second)
	a.sys.Root.Send(a.remote.PID(b.id.ID, "echo"), &actor.MessageEnvelope{Message: wrapperspb.String("late"), Sender: stopFut.PID()})

	killed := time.Now()
	c.kill(b)
	for i, f := range futures {
		if _, err := f.Result(); !errors.Is(err, actor.ErrDeadLetter) {
			t.Fatalf("future %d: %v, want a dead letter", i, err)
		}
	}
	// The "late" request was either answered before the kill or failed.
	if res, err := stopFut.Result(); err != nil && !errors.Is(err, actor.ErrDeadLetter) {
		t.Fatalf("late request: %v %v", res, err)
	}
	if d := time.Since(killed); d > 5*time.Second {
		t.Fatalf("futures failed after %v, not at once", d)
	}
	expectTerms(t, terms, 2, actor.TerminatedReason_AddressTerminated)
	// Each waiting request failed one of two ways: its batch was not yet
	// acknowledged (a send-failed dead letter answers it) or it was, and
	// the PeerDown failed its future.
	if s := a.remote.Stats(); s.AddressTerminated != 2 || s.FailedFutures+s.DeadLetters[quicremote.DeadLetterSendFailed] < waiting {
		t.Fatalf("stats %+v", s)
	}

	// Survivors still talk; the watch on d is untouched.
	request(t, a.sys, a.remote.PID(d.id.ID, "echo"), wrapperspb.String("still here"))
	d.sys.Root.Stop(d.sys.NewLocalPID("echo"))
	expectTerms(t, terms, 1, actor.TerminatedReason_Stopped)
	// Requests to the dead node fail fast from now on too.
	start := time.Now()
	if _, err := a.sys.Root.RequestFuture(a.remote.PID(b.id.ID, "echo"), wrapperspb.String("?"), 30*time.Second).Result(); !errors.Is(err, actor.ErrDeadLetter) {
		t.Fatalf("request to dead node: %v", err)
	}
	t.Logf("request to a dead node failed after %v", time.Since(start))
}

// A partition ends every watch across it with AddressTerminated once, fails
// the requests in flight, and once healed new messages flow; nothing is
// delivered twice.
func TestRemotePartitionHealsWithoutDuplicates(t *testing.T) {
	bubble(t, 2, rclusterOpts{remote: func(_ int, rc *quicremote.Config) {
		rc.ConnectGrace = 100 * time.Millisecond
	}}, func(t *testing.T, c *rcluster) {
		a, b := c.nodes[0], c.nodes[1]
		c.waitMesh()
		col := spawnCollector(t, b.sys, "col", 10000)
		spawnNamed(t, b.sys, echoProps(nil), "echo")
		watch, terms := termWatcher(t, a.sys)
		watch(a.remote.PID(b.id.ID, "echo"))
		watch(a.remote.PID(b.id.ID, "col"))

		target := a.remote.PID(b.id.ID, "col")
		seq := int64(0)
		sendSome := func(n int) {
			for i := 0; i < n; i++ {
				a.sys.Root.Send(target, wrapperspb.Int64(seq))
				seq++
			}
		}
		sendSome(500)
		request(t, a.sys, a.remote.PID(b.id.ID, "echo"), wrapperspb.String("sync"))

		c.mem.Disconnect(a.id.ID, b.id.ID)
		expectTerms(t, terms, 2, actor.TerminatedReason_AddressTerminated)
		sendSome(500) // while cut: dead letters once the grace has passed
		_, err := a.sys.Root.RequestFuture(a.remote.PID(b.id.ID, "echo"), wrapperspb.String("cut"), 30*time.Second).Result()
		if !errors.Is(err, actor.ErrDeadLetter) {
			t.Fatalf("request across the cut: %v", err)
		}

		c.mem.Connect(a.id.ID, b.id.ID)
		c.waitMesh()
		sendSome(500)
		request(t, a.sys, a.remote.PID(b.id.ID, "echo"), wrapperspb.String("healed"))
		// b still has a as a watcher of echo; its Terminated now is stale.
		b.sys.Root.Stop(b.sys.NewLocalPID("echo"))
		c.eventually("stale Terminated", func() bool { return a.remote.Stats().StaleTerminated == 1 })
		select {
		case m := <-terms:
			t.Fatalf("second Terminated %v after AddressTerminated", m)
		default:
		}

		seen := map[int64]bool{}
		var last int64 = -1
		n := len(col.ch)
		for i := 0; i < n; i++ {
			v := (<-col.ch).(*wrapperspb.Int64Value).Value
			if seen[v] {
				t.Fatalf("message %d delivered twice", v)
			}
			if v <= last {
				t.Fatalf("message %d after %d", v, last)
			}
			seen[v], last = true, v
		}
		for i := int64(0); i < 500; i++ {
			if !seen[i] || !seen[1000+i] {
				t.Fatalf("message %d or %d (sent while connected) missing", i, 1000+i)
			}
		}
		s := a.remote.Stats()
		t.Logf("delivered %d of %d; dead letters %v", n, seq, s.DeadLetters)
		if uint64(n)+s.TotalDeadLetters() < uint64(seq) {
			t.Fatalf("%d delivered + %d dead letters < %d sent", n, s.TotalDeadLetters(), seq)
		}
	})
}

// A peer that names a type nobody knows, sends a payload that does not
// decode, or sends garbage instead of a batch: each is counted, the sender
// gets a DeadLetterResponse, the rest of the batch is delivered, and the
// connection stays up.
func TestRemoteUnknownMessageTypeFromPeer(t *testing.T) {
	// x speaks raw protocol to b; a uses its remote normally.
	c := newRCluster(t, 3, rclusterOpts{})
	a, b, x := c.nodes[0], c.nodes[1], c.nodes[2]
	c.waitMesh()
	col := spawnCollector(t, b.sys, "col", 10)
	replies := spawnCollector(t, x.sys, "replies", 10)
	connBefore, _ := x.rpc.ConnID(b.id.ID)

	envs := []*abcastpb.ActorEnvelope{
		{TargetId: "col", SenderId: "replies", TypeName: "nope.Missing", Payload: []byte{1, 2, 3}},
		{TargetId: "col", SenderId: "replies", TypeName: "google.protobuf.StringValue", Payload: []byte{0xff, 0xff, 0xff}},
		{TargetId: "col", SenderId: "replies", SerializerId: 99, TypeName: "x", Payload: nil},
		{TargetId: "col", TypeName: "google.protobuf.StringValue", Payload: mustMarshal(t, wrapperspb.String("good"))},
	}
	// x speaks the remote's stream protocol by hand.
	st, err := x.rpc.OpenStream(t.Context(), b.id.ID, quicremote.DefaultProtocol)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	sendBatch := func(batch *abcastpb.ActorBatch, wantAck uint64) {
		t.Helper()
		if err := st.Send(t.Context(), mustMarshal(t, batch)); err != nil {
			t.Fatalf("crafted batch: %v", err)
		}
		ack, err := st.Recv()
		if n, k := protowire.ConsumeVarint(ack); err != nil || k != len(ack) || n != wantAck {
			t.Fatalf("acknowledgement %x %v, want %d", ack, err, wantAck)
		}
	}
	sendBatch(&abcastpb.ActorBatch{Envelopes: envs, Epoch: 1, Seq: 0}, 1)
	if m := recv(t, col.ch, 10*time.Second, "the good message"); m.(*wrapperspb.StringValue).Value != "good" {
		t.Fatalf("got %v", m)
	}
	for i := 0; i < 3; i++ {
		if m := recv(t, replies.ch, 10*time.Second, "dead-letter reply"); !isDeadLetterResponse(m) {
			t.Fatalf("reply %d: %T", i, m)
		}
	}
	// A stale batch (older epoch than the last) is counted and dropped; the
	// stream goes on.
	sendBatch(&abcastpb.ActorBatch{Envelopes: envs[3:], Epoch: 0, Seq: 99}, 2)
	if b.remote.Stats().StaleBatches != 1 || len(col.ch) != 0 {
		t.Fatalf("stale batch delivered or not counted: %+v", b.remote.Stats())
	}
	// Garbage instead of a batch ends the stream with an error.
	if err := st.Send(t.Context(), []byte{0xff, 0x01, 0x02}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); !errors.Is(err, transport.ErrRemote) {
		t.Fatalf("garbage batch: %v, want ErrRemote", err)
	}
	s := b.remote.Stats()
	if s.UnknownTypes != 1 || s.BadPayloads != 2 || s.BadBatches != 1 || s.DeadLetters[quicremote.DeadLetterUndecodable] != 3 {
		t.Fatalf("stats %+v", s)
	}
	// Still the same connection, still working.
	spawnNamed(t, b.sys, echoProps(nil), "echo")
	request(t, a.sys, a.remote.PID(b.id.ID, "echo"), wrapperspb.String("alive"))
	if connAfter, _ := x.rpc.ConnID(b.id.ID); connAfter != connBefore {
		t.Fatalf("connection replaced: %d -> %d", connBefore, connAfter)
	}
}

func isDeadLetterResponse(m any) bool {
	_, ok := m.(*actor.DeadLetterResponse)
	return ok
}

func mustMarshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A member that never comes up: its queue holds at most QueueCapacity
// messages and the rest are refused at once and counted, so memory stays
// bounded; closing the remote drops what is queued, counted too.
func TestRemoteBoundedQueueUnreachablePeer(t *testing.T) {
	const capacity = 1000
	c := newRCluster(t, 1, rclusterOpts{phantoms: 1, remote: func(_ int, rc *quicremote.Config) {
		rc.QueueCapacity = capacity
		rc.ConnectGrace = time.Hour
	}})
	a := c.nodes[0]
	ghost := a.remote.PID(c.phantom[0].ID, "anyone")

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	const n = 50000
	payload := wrapperspb.Bytes(make([]byte, 100))
	for i := 0; i < n; i++ {
		a.sys.Root.Send(ghost, payload)
	}
	s := a.remote.Stats()
	if s.Queued != capacity || s.DeadLetters[quicremote.DeadLetterQueueFull] != n-capacity {
		t.Fatalf("queued %d, queue-full dead letters %d; want %d and %d", s.Queued, s.DeadLetters[quicremote.DeadLetterQueueFull], capacity, n-capacity)
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	grew := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("heap grew by %d KiB with %d messages queued and %d refused", grew>>10, capacity, n-capacity)
	if grew > 4<<20 {
		t.Fatalf("heap grew by %d bytes for a queue of %d", grew, capacity)
	}
	// A request finding the queue full fails at once.
	if _, err := a.sys.Root.RequestFuture(ghost, wrapperspb.String("?"), time.Hour).Result(); !errors.Is(err, actor.ErrDeadLetter) {
		t.Fatalf("request to a full queue: %v", err)
	}
	a.remote.Close()
	s = a.remote.Stats()
	if s.Queued != 0 || s.DeadLetters[quicremote.DeadLetterClosed] != capacity {
		t.Fatalf("after close: queued %d, closed dead letters %d", s.Queued, s.DeadLetters[quicremote.DeadLetterClosed])
	}
}

// A member that does not come up within ConnectGrace: what was queued for
// it and later messages become dead letters, requests fail and watches end
// with AddressTerminated.
func TestRemoteUnreachablePeerAfterGrace(t *testing.T) {
	const grace = 300 * time.Millisecond
	bubble(t, 1, rclusterOpts{phantoms: 1, remote: func(_ int, rc *quicremote.Config) {
		rc.ConnectGrace = grace
	}}, func(t *testing.T, c *rcluster) {
		a := c.nodes[0]
		ghost := a.remote.PID(c.phantom[0].ID, "anyone")
		watch, terms := termWatcher(t, a.sys)
		watch(ghost)
		start := time.Now()
		if _, err := a.sys.Root.RequestFuture(ghost, wrapperspb.String("?"), time.Hour).Result(); !errors.Is(err, actor.ErrDeadLetter) {
			t.Fatalf("request to unreachable peer: %v", err)
		}
		if d := time.Since(start); d != grace { // virtual time: exactly
			t.Fatalf("request failed after %v, want the grace %v", d, grace)
		}
		expectTerms(t, terms, 1, actor.TerminatedReason_AddressTerminated)
		// Later messages fail at once.
		start = time.Now()
		if _, err := a.sys.Root.RequestFuture(ghost, wrapperspb.String("?"), time.Hour).Result(); !errors.Is(err, actor.ErrDeadLetter) {
			t.Fatalf("second request: %v", err)
		}
		if d := time.Since(start); d != 0 {
			t.Fatalf("second request failed after %v, want at once", d)
		}
		if s := a.remote.Stats(); s.DeadLetters[quicremote.DeadLetterUnreachable] < 2 || s.Queued != 0 {
			t.Fatalf("stats %+v", s)
		}
	})
}

// A blocked target with a bounded mailbox refuses instead of stalling the
// peer's other traffic: messages to a second actor keep flowing.
func TestRemoteSlowTargetDoesNotStallOthers(t *testing.T) {
	c := newRCluster(t, 2, rclusterOpts{})
	a, b := c.nodes[0], c.nodes[1]
	c.waitMesh()
	release := make(chan struct{})
	defer close(release)
	var metrics actorkit.MailboxMetrics
	spawnNamed(t, b.sys, actor.PropsFromFunc(func(ctx actor.Context) {
		if _, ok := ctx.Message().(*wrapperspb.Int64Value); ok {
			<-release
		}
	}, actor.WithMailbox(actorkit.BoundedMailbox(10, actorkit.WithMailboxMetrics(&metrics)))), "stuck")
	col := spawnCollector(t, b.sys, "col", 2000)
	stuck, fast := a.remote.PID(b.id.ID, "stuck"), a.remote.PID(b.id.ID, "col")
	const n = 1000
	for i := 0; i < n; i++ {
		a.sys.Root.Send(stuck, wrapperspb.Int64(int64(i)))
		a.sys.Root.Send(fast, wrapperspb.Int64(int64(i)))
	}
	for i := 0; i < n; i++ {
		if v := recv(t, col.ch, 10*time.Second, "message to the fast actor").(*wrapperspb.Int64Value).Value; v != int64(i) {
			t.Fatalf("got %d want %d", v, i)
		}
	}
	ms := metrics.Stats()
	if ms.Refused < n-11 || ms.Len > 10 {
		t.Fatalf("stuck mailbox %+v", ms)
	}
}

// A member removed from the registry: its connection closes, watches end
// with AddressTerminated, and its PIDs stop resolving.
func TestRemoteMemberLeavesRegistry(t *testing.T) {
	c := newRCluster(t, 3, rclusterOpts{})
	a, b, d := c.nodes[0], c.nodes[1], c.nodes[2]
	c.waitMesh()
	spawnNamed(t, b.sys, echoProps(nil), "echo")
	spawnNamed(t, d.sys, echoProps(nil), "echo")
	watch, terms := termWatcher(t, a.sys)
	watch(a.remote.PID(b.id.ID, "echo"))
	request(t, a.sys, a.remote.PID(b.id.ID, "echo"), wrapperspb.String("before"))

	// Everyone drops b.
	var keep []membership.Member
	for _, m := range a.src.Current().Members {
		if m.ID != b.id.ID {
			keep = append(keep, m)
		}
	}
	snap, err := membership.NewSnapshot(2, keep...)
	if err != nil {
		t.Fatal(err)
	}
	for _, nd := range []*rnode{a, d} {
		if err := nd.src.Update(snap); err != nil {
			t.Fatal(err)
		}
	}
	expectTerms(t, terms, 1, actor.TerminatedReason_AddressTerminated)
	_, err = a.sys.Root.RequestFuture(a.remote.PID(b.id.ID, "echo"), wrapperspb.String("after"), 30*time.Second).Result()
	if !errors.Is(err, actor.ErrDeadLetter) {
		t.Fatalf("request to removed member: %v", err)
	}
	request(t, a.sys, a.remote.PID(d.id.ID, "echo"), wrapperspb.String("d is fine"))
}

// jsonSerializer carries plain Go structs of one type, to show that other
// serializers can be registered.
type jsonSerializer struct{}

type greeting struct{ Text string }

func (jsonSerializer) ID() int32 { return 7 }

func (jsonSerializer) Serialize(msg any) (string, []byte, error) {
	g, ok := msg.(*greeting)
	if !ok {
		return "", nil, quicremote.ErrUnsupportedMessage
	}
	b, err := json.Marshal(g)
	return "test.greeting", b, err
}

func (jsonSerializer) Deserialize(name string, data []byte) (any, error) {
	if name != "test.greeting" {
		return nil, fmt.Errorf("%w: %s", quicremote.ErrUnknownMessageType, name)
	}
	var g greeting
	err := json.Unmarshal(data, &g)
	return &g, err
}

// Registered serializers carry their types; a message no serializer takes
// is a counted dead letter at the sender.
func TestRemoteCustomSerializerAndUnserializable(t *testing.T) {
	var dead []quicremote.DeadLetter
	var mu sync.Mutex
	c := newRCluster(t, 2, rclusterOpts{remote: func(_ int, rc *quicremote.Config) {
		rc.Serializers = []quicremote.Serializer{jsonSerializer{}}
		rc.OnDeadLetter = func(d quicremote.DeadLetter) {
			mu.Lock()
			dead = append(dead, d)
			mu.Unlock()
		}
	}})
	a, b := c.nodes[0], c.nodes[1]
	c.waitMesh()
	col := spawnCollector(t, b.sys, "col", 10)
	a.sys.Root.Send(a.remote.PID(b.id.ID, "col"), &greeting{Text: "hi"})
	if m := recv(t, col.ch, 10*time.Second, "greeting"); m.(*greeting).Text != "hi" {
		t.Fatalf("got %#v", m)
	}
	_, err := a.sys.Root.RequestFuture(a.remote.PID(b.id.ID, "col"), struct{ X int }{1}, 10*time.Second).Result()
	if !errors.Is(err, actor.ErrDeadLetter) {
		t.Fatalf("unserializable request: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(dead) != 1 || dead[0].Reason != quicremote.DeadLetterUnserializable || a.remote.Stats().DeadLetters[quicremote.DeadLetterUnserializable] != 1 {
		t.Fatalf("dead letters %+v", dead)
	}
}

// A serializer that panics fails only its message (a dead letter); the
// send loop survives and the messages after it are delivered.
func TestRemoteSerializerPanicIsADeadLetter(t *testing.T) {
	bubble(t, 2, rclusterOpts{remote: func(_ int, rc *quicremote.Config) {
		rc.Serializers = []quicremote.Serializer{panickySerializer{}}
	}}, func(t *testing.T, c *rcluster) {
		a, b := c.nodes[0], c.nodes[1]
		c.waitMesh()
		col := spawnCollector(t, b.sys, "col", 10)
		_, err := a.sys.Root.RequestFuture(a.remote.PID(b.id.ID, "col"), &greeting{Text: "boom"}, 10*time.Second).Result()
		if !errors.Is(err, actor.ErrDeadLetter) {
			t.Fatalf("message whose serializer panics: %v, want a dead letter", err)
		}
		a.sys.Root.Send(a.remote.PID(b.id.ID, "col"), wrapperspb.String("after"))
		if m := recv(t, col.ch, 10*time.Second, "the next message"); m.(*wrapperspb.StringValue).Value != "after" {
			t.Fatalf("got %v", m)
		}
		if n := a.remote.Stats().DeadLetters[quicremote.DeadLetterUnserializable]; n != 1 {
			t.Fatalf("%d unserializable dead letters, want 1", n)
		}
	})
}

type panickySerializer struct{}

func (panickySerializer) ID() int32 { return 9 }

func (panickySerializer) Serialize(msg any) (string, []byte, error) {
	if _, ok := msg.(*greeting); ok {
		panic("serializer bug")
	}
	return "", nil, quicremote.ErrUnsupportedMessage
}

func (panickySerializer) Deserialize(name string, _ []byte) (any, error) {
	return nil, fmt.Errorf("%w: %s", quicremote.ErrUnknownMessageType, name)
}

// Batches respect MaxBatchBytes including their type-name table, so a
// transport whose MaxFrameSize equals it never refuses one: 300 messages
// of eight types, each batch full, all arrive and none is a dead letter.
func TestRemoteBatchesFitMaxBatchBytes(t *testing.T) {
	const limit = 1024
	bubble(t, 2, rclusterOpts{
		remote: func(_ int, rc *quicremote.Config) { rc.MaxBatchBytes = limit },
		tcfg:   func(tc *transport.Config) { tc.MaxFrameSize = limit; tc.MaxBytesPerPeer = 1 << 20 },
	}, func(t *testing.T, c *rcluster) {
		a, b := c.nodes[0], c.nodes[1]
		c.waitMesh()
		var got atomic.Int32
		spawnNamed(t, b.sys, actor.PropsFromFunc(func(ctx actor.Context) {
			if _, ok := ctx.Message().(proto.Message); ok {
				got.Add(1)
			}
		}), "count")
		target := a.remote.PID(b.id.ID, "count")
		msgs := []proto.Message{wrapperspb.String("s"), wrapperspb.Int64(-5), wrapperspb.UInt64(5), wrapperspb.Bool(true),
			wrapperspb.Double(1.5), wrapperspb.Float(2.5), wrapperspb.Int32(-7), wrapperspb.Bytes(make([]byte, 40))}
		const n = 300
		for i := 0; i < n; i++ {
			a.sys.Root.Send(target, msgs[i%len(msgs)])
		}
		c.eventually("every message", func() bool { return got.Load() == n })
		s := a.remote.Stats()
		if s.TotalDeadLetters() != 0 || b.remote.Stats().BadBatches != 0 {
			t.Fatalf("dead letters or bad batches: %+v / %+v", s, b.remote.Stats())
		}
	})
}

// A batch with more envelopes than the receiver's MaxBatchMessages is
// refused before anything in it is decoded (decoding state per envelope
// must stay bounded whatever a peer sends): the stream fails, the batch
// is counted as bad, and the connection stays up.
func TestRemoteTooManyEnvelopesRefused(t *testing.T) {
	bubble(t, 2, rclusterOpts{remote: func(i int, rc *quicremote.Config) {
		rc.MaxBatchMessages = 10
		if i == 0 {
			rc.Protocol = "actor/raw" // node 0 speaks the protocol by hand
		}
	}}, func(t *testing.T, c *rcluster) {
		a, b := c.nodes[0], c.nodes[1]
		c.waitMesh()
		col := spawnCollector(t, b.sys, "col", 20)
		env := mustMarshal(t, &abcastpb.ActorEnvelope{TargetId: "col", TypeName: "google.protobuf.StringValue", Payload: mustMarshal(t, wrapperspb.String("x"))})
		batch := func(k int) []byte {
			envs := make([]*abcastpb.ActorEnvelope, k)
			for i := range envs {
				envs[i] = &abcastpb.ActorEnvelope{}
				if err := proto.Unmarshal(env, envs[i]); err != nil {
					t.Fatal(err)
				}
			}
			return mustMarshal(t, &abcastpb.ActorBatch{Envelopes: envs, Epoch: 1})
		}
		st, err := a.rpc.OpenStream(t.Context(), b.id.ID, quicremote.DefaultProtocol)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		if err := st.Send(t.Context(), batch(11)); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(); !errors.Is(err, transport.ErrRemote) {
			t.Fatalf("batch of 11 envelopes with MaxBatchMessages 10: %v, want ErrRemote", err)
		}
		if s := b.remote.Stats(); s.BadBatches != 1 || s.Received != 0 || len(col.ch) != 0 {
			t.Fatalf("refused batch partly delivered or not counted: %+v", s)
		}
		// Ten is fine, on a new stream.
		st2, err := a.rpc.OpenStream(t.Context(), b.id.ID, quicremote.DefaultProtocol)
		if err != nil {
			t.Fatal(err)
		}
		defer st2.Close()
		if err := st2.Send(t.Context(), batch(10)); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 10; i++ {
			recv(t, col.ch, 10*time.Second, "envelope of the accepted batch")
		}
	})
}

// The remote's logs and protoactor's go to zerolog with the node id.
func TestRemoteLogsCarryNodeID(t *testing.T) {
	var buf syncBuffer
	zl := zerolog.New(&buf)
	id := newIdentity(t)
	snap, _ := membership.NewSnapshot(1, id.Member("10.0.0.1:1"))
	src, _ := membership.NewStaticSource(snap)
	sys := actorkit.NewActorSystem(zl, id.ID.String())
	r, err := quicremote.New(sys, id.ID, membership.LatestMembers(src), quicremote.DefaultConfig(), zl)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := transport.NewMemNetwork().NewTransport(transport.DefaultConfig(), id.ID, src, r.PeerEvent)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if err := r.Start(tr); err != nil {
		t.Fatal(err)
	}
	r.Close()
	out := buf.String()
	if !strings.Contains(out, `"node":"`+id.ID.String()+`"`) || !strings.Contains(out, "remote started") {
		t.Fatalf("log output %s", out)
	}
	if err := r.Start(tr); err == nil {
		t.Fatal("second Start succeeded")
	}
}

func TestRemoteConfigValidate(t *testing.T) {
	if err := quicremote.DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	bad := quicremote.DefaultConfig()
	bad.QueueCapacity = 0
	bad.Protocol = ""
	bad.Serializers = []quicremote.Serializer{idZeroSerializer{}}
	err := bad.Validate()
	if err == nil || !strings.Contains(err.Error(), "QueueCapacity") || !strings.Contains(err.Error(), "Protocol") || !strings.Contains(err.Error(), "used twice") {
		t.Fatalf("got %v", err)
	}
}

// idZeroSerializer claims the protobuf serializer's reserved ID.
type idZeroSerializer struct{ jsonSerializer }

func (idZeroSerializer) ID() int32 { return 0 }

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A peer that accepts the remote's stream and reads every batch but never
// acknowledges one: after SendTimeout the sender gives up on the stream,
// the unacknowledged messages become dead letters (a waiting request fails
// then, not at its own timeout) and the give-up is counted.
func TestRemoteUnacknowledgedBatchesTimeOut(t *testing.T) {
	read := make(chan int, 100)
	withStuckPeer(t, func(ctx context.Context, s transport.Stream) {
		for {
			f, err := s.Recv()
			if err != nil {
				return
			}
			read <- len(f) // and never an acknowledgement
		}
	}, func(t *testing.T, c *rcluster, a, b *rnode) {
		target := a.remote.PID(b.id.ID, "anyone")
		for i := 0; i < 4; i++ {
			a.sys.Root.Send(target, wrapperspb.String("one-way"))
		}
		start := time.Now()
		_, err := a.sys.Root.RequestFuture(target, wrapperspb.String("request"), 30*time.Second).Result()
		if !errors.Is(err, actor.ErrDeadLetter) {
			t.Fatalf("request to a peer that never acknowledges: %v, want a dead letter", err)
		}
		if waited := time.Since(start); waited != 300*time.Millisecond { // virtual time: exactly
			t.Fatalf("request failed after %v, want SendTimeout", waited)
		}
		if len(read) == 0 {
			t.Fatal("the peer never received a batch")
		}
		c.eventually("dead letters counted", func() bool {
			s := a.remote.Stats()
			return s.AckTimeouts >= 1 && s.DeadLetters[quicremote.DeadLetterSendFailed] == 5 && s.Sent == 0
		})
	})
}

// A peer that accepts the remote's stream but never reads it: once its
// flow-control window is full the sender's write blocks, and SendTimeout
// after the write began the sender gives up on the stream: its messages
// become dead letters (a waiting request fails then) instead of the send
// loop waiting for ever.
func TestRemoteBlockedWriteTimesOut(t *testing.T) {
	withStuckPeer(t, func(ctx context.Context, _ transport.Stream) {
		<-ctx.Done() // never reads
	}, func(t *testing.T, c *rcluster, a, b *rnode) {
		target := a.remote.PID(b.id.ID, "anyone")
		// 200 KiB each: one per batch, and the in-memory stream's window
		// (512 KiB) is full after a few.
		big := wrapperspb.Bytes(make([]byte, 200<<10))
		for range 6 {
			a.sys.Root.Send(target, big)
		}
		start := time.Now()
		_, err := a.sys.Root.RequestFuture(target, wrapperspb.String("request"), 30*time.Second).Result()
		if !errors.Is(err, actor.ErrDeadLetter) {
			t.Fatalf("request behind a write the peer never reads: %v, want a dead letter", err)
		}
		// The blocked write fails SendTimeout after it began; the request
		// then rides the next stream (or the one after, depending on which
		// batch it joined), which the peer never acknowledges either:
		// SendTimeout more each. Without the write's own timeout it would
		// wait for the request's 30 s instead.
		if waited := time.Since(start); waited < 300*time.Millisecond || waited > 3*300*time.Millisecond {
			t.Fatalf("request failed after %v, want one to three SendTimeouts", waited)
		}
		c.eventually("dead letters counted", func() bool {
			s := a.remote.Stats()
			return s.DeadLetters[quicremote.DeadLetterSendFailed] >= 1 && s.Sent == 0
		})
	})
}

// withStuckPeer runs f with node a's remote (SendTimeout 300 ms) sending to
// node b, where serve stands in for b's remote on the remote's protocol.
func withStuckPeer(t *testing.T, serve func(ctx context.Context, s transport.Stream), f func(t *testing.T, c *rcluster, a, b *rnode)) {
	bubble(t, 2, rclusterOpts{remote: func(i int, rc *quicremote.Config) {
		rc.SendTimeout = 300 * time.Millisecond
		rc.BacklogWait = 100 * time.Millisecond
		if i == 1 {
			rc.Protocol = "actor/elsewhere" // node 1's own remote stays out of the way
		}
	}}, func(t *testing.T, c *rcluster) {
		a, b := c.nodes[0], c.nodes[1]
		c.waitMesh()
		if err := b.rpc.HandleStream(quicremote.DefaultProtocol, func(ctx context.Context, _ membership.NodeID, s transport.Stream) error {
			serve(ctx, s)
			return nil
		}, 0); err != nil {
			t.Fatal(err)
		}
		f(t, c, a, b)
	})
}
