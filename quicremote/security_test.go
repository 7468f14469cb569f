package quicremote_test

import (
	"bytes"
	"context"
	"errors"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/abcast/abcast/internal/poll"
	"github.com/abcast/abcast/membership"
	"github.com/abcast/abcast/proto/abcastpb"
	"github.com/abcast/abcast/quicremote"
	"github.com/abcast/abcast/quicremote/transport"
)

// Regression tests for the remote's findings of issue 16 (a hostile member
// that speaks the remote's protocol by hand).

// rawPeer speaks the remote's stream protocol by hand, as a compromised
// member would: one stream from node from to node to. Its batches are
// numbered from epoch 2^40, so they order after anything from's own remote
// sent; tests keep from's remote from sending to to meanwhile.
type rawPeer struct {
	t          *testing.T
	st         transport.Stream
	epoch, seq uint64
}

func openRaw(t *testing.T, from, to *rnode) *rawPeer {
	t.Helper()
	st, err := from.rpc.OpenStream(t.Context(), to.id.ID, quicremote.DefaultProtocol)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return &rawPeer{t: t, st: st, epoch: 1 << 40}
}

// send writes one batch and waits for its acknowledgement: by then the
// receiver has handled every envelope in it.
func (p *rawPeer) send(envs ...*abcastpb.ActorEnvelope) {
	p.t.Helper()
	frame := mustMarshal(p.t, &abcastpb.ActorBatch{Envelopes: envs, Epoch: p.epoch, Seq: p.seq})
	p.seq++
	if err := p.st.Send(p.t.Context(), frame); err != nil {
		p.t.Fatalf("raw batch: %v", err)
	}
	for {
		ack, err := p.st.Recv()
		if err != nil {
			p.t.Fatalf("raw batch acknowledgement: %v", err)
		}
		n, k := protowire.ConsumeVarint(ack)
		if k != len(ack) || n > p.seq {
			p.t.Fatalf("acknowledgement %x after %d batches", ack, p.seq)
		}
		if n == p.seq {
			return
		}
	}
}

// envTo is an envelope carrying msg to the actor id target.
func envTo(t *testing.T, target string, msg proto.Message) *abcastpb.ActorEnvelope {
	t.Helper()
	return &abcastpb.ActorEnvelope{TargetId: target, TypeName: string(msg.ProtoReflect().Descriptor().FullName()), Payload: mustMarshal(t, msg)}
}

// sysTo is envTo for a system message.
func sysTo(t *testing.T, target string, msg proto.Message) *abcastpb.ActorEnvelope {
	e := envTo(t, target, msg)
	e.System = true
	return e
}

// Finding 3: a reply to a local future is accepted only from the member
// the request went to, once; the id that member sees is not the future's
// own, guessable one.
func TestSecReplyOnlyFromAskedPeer(t *testing.T) {
	bubble(t, 3, rclusterOpts{}, func(t *testing.T, c *rcluster) {
		a, b, x := c.nodes[0], c.nodes[1], c.nodes[2]
		c.waitMesh()
		askers := make(chan *actor.PID, 10)
		spawnNamed(t, b.sys, actor.PropsFromFunc(func(ctx actor.Context) {
			if _, ok := ctx.Message().(*wrapperspb.StringValue); ok {
				askers <- ctx.Sender() // and no answer
			}
		}), "sink")
		fut := a.sys.Root.RequestFuture(a.remote.PID(b.id.ID, "sink"), wrapperspb.String("q"), 30*time.Second)
		asker := recv(t, askers, 10*time.Second, "the request at b")

		// x knows the future's own id (ids are a counter) and, say, the id b
		// saw: neither takes its reply.
		raw := openRaw(t, x, a)
		raw.send(envTo(t, fut.PID().Id, wrapperspb.String("forged by future id")))
		if asker.Id != fut.PID().Id {
			raw.send(envTo(t, asker.Id, wrapperspb.String("forged by the id b saw")))
		}
		// b's answer is taken; a second one is not.
		b.sys.Root.Send(asker, wrapperspb.String("genuine"))
		b.sys.Root.Send(asker, wrapperspb.String("second"))
		res, err := fut.Result()
		if err != nil || res.(*wrapperspb.StringValue).Value != "genuine" {
			t.Fatalf("future got %v, %v; want b's genuine answer", res, err)
		}
		if asker.Address != a.id.ID.String() || asker.Id == fut.PID().Id || strings.HasPrefix(asker.Id, "future$") || len(asker.Id) < 20 {
			t.Fatalf("b saw the sender %v for future %v: a guessable future id", asker, fut.PID())
		}
		c.eventually("three refused replies", func() bool { return a.remote.Stats().ForgedReplies == 3 })
		if s := a.remote.Stats(); s.DeadLetters[quicremote.DeadLetterRefused] != 3 {
			t.Fatalf("refused dead letters %d, want 3", s.DeadLetters[quicremote.DeadLetterRefused])
		}
	})
}

// Finding 2: a payload of a type the application did not register is not
// decoded at all, and one of a registered type that would decode far
// beyond its size (a FileDescriptorSet of empty entries costs ~155x) is
// refused before decoding. Either way the frame is counted, the sender is
// told, nothing is delivered and the heap does not grow by the decoded
// size.
func TestSecHostilePayloadRefusedHeapBounded(t *testing.T) {
	for _, registered := range []bool{false, true} {
		name := "unregistered"
		if registered {
			name = "registered"
		}
		t.Run(name, func(t *testing.T) {
			bubble(t, 2, rclusterOpts{remote: func(_ int, rc *quicremote.Config) {
				// Batches as large as the hostile one pass the
				// transport: the remote's own decoding limits are
				// under test.
				rc.MaxBatchBytes = 2 << 20
				if registered {
					rc.Messages = []proto.Message{&descriptorpb.FileDescriptorSet{}}
				}
			}}, func(t *testing.T, c *rcluster) {
				a, x := c.nodes[0], c.nodes[1]
				c.waitMesh()
				col := spawnCollector(t, a.sys, "col", 10)
				replies := spawnCollector(t, x.sys, "replies", 10)
				raw := openRaw(t, x, a)
				// 1 MiB of empty FileDescriptorProto entries: 512 Ki of them,
				// about 160 MB decoded.
				payload := bytes.Repeat([]byte{0x0a, 0x00}, 1<<19)
				env := &abcastpb.ActorEnvelope{TargetId: "col", SenderId: "replies", TypeName: "google.protobuf.FileDescriptorSet", Payload: payload}
				runtime.GC()
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				raw.send(env)
				runtime.ReadMemStats(&after)
				allocated := after.TotalAlloc - before.TotalAlloc
				t.Logf("handling a %d-byte hostile payload allocated %d KiB", len(payload), allocated>>10)
				if allocated > 24<<20 {
					t.Fatalf("handling a %d-byte payload allocated %d MiB: it was decoded", len(payload), allocated>>20)
				}
				if m := recv(t, replies.ch, 10*time.Second, "the sender's dead-letter reply"); !isDeadLetterResponse(m) {
					t.Fatalf("reply %T", m)
				}
				select {
				case m := <-col.ch:
					t.Fatalf("hostile payload delivered as %T", m)
				default:
				}
				s := a.remote.Stats()
				if registered && s.DeadLetters[quicremote.DeadLetterDecodeLimit] != 1 {
					t.Fatalf("stats %+v: want one decode-limit dead letter", s)
				}
				if !registered && (s.UnknownTypes != 1 || s.DeadLetters[quicremote.DeadLetterUndecodable] != 1) {
					t.Fatalf("stats %+v: want one unknown type", s)
				}
			})
		})
	}
}

// budgetRPC stands in for the transport's per-peer memory budget: Reserve
// fails beyond limit bytes held at once.
// onNode0 puts the budget in front of node 0's transport.
func (b *budgetRPC) onNode0() rclusterOpts {
	return rclusterOpts{wrap: func(i int, rpc transport.RPC) transport.RPC {
		if i == 0 {
			b.RPC = rpc
			return b
		}
		return rpc
	}}
}

type budgetRPC struct {
	transport.RPC
	limit          int64
	held, reserved atomic.Int64
	refused        atomic.Int32
}

func (b *budgetRPC) Reserve(_ membership.NodeID, n int) bool {
	if b.held.Add(int64(n)) > b.limit {
		b.held.Add(-int64(n))
		b.refused.Add(1)
		return false
	}
	b.reserved.Add(int64(n))
	return true
}

func (b *budgetRPC) Release(_ membership.NodeID, n int) { b.held.Add(-int64(n)) }

// Finding 2: what a decoded message will cost is charged to the sending
// peer's budget while the remote holds it; a message the budget cannot
// take is refused undecoded, and everything charged is given back.
func TestSecDecodedCopiesChargedToPeerBudget(t *testing.T) {
	budget := &budgetRPC{limit: 16 << 10}
	bubble(t, 2, budget.onNode0(), func(t *testing.T, c *rcluster) {
		a, x := c.nodes[0], c.nodes[1]
		c.waitMesh()
		col := spawnCollector(t, a.sys, "col", 10)
		raw := openRaw(t, x, a)
		raw.send(envTo(t, "col", wrapperspb.String("small")), envTo(t, "col", wrapperspb.String(strings.Repeat("x", 64<<10))))
		if m := recv(t, col.ch, 10*time.Second, "the small message"); m.(*wrapperspb.StringValue).Value != "small" {
			t.Fatalf("got %v", m)
		}
		select {
		case m := <-col.ch:
			t.Fatalf("message beyond the peer's budget delivered (%d bytes)", len(m.(*wrapperspb.StringValue).Value))
		default:
		}
		if budget.reserved.Load() == 0 || budget.refused.Load() == 0 {
			t.Fatalf("reserved %d, refused %d", budget.reserved.Load(), budget.refused.Load())
		}
		// The small message's charge comes back once the ledger sees the
		// collector took it.
		poll.Until(t, time.Second, "everything charged given back", func() bool { return budget.held.Load() == 0 })
		if n := a.remote.Stats().DeadLetters[quicremote.DeadLetterDecodeLimit]; n != 1 {
			t.Fatalf("%d decode-limit dead letters, want 1", n)
		}
	})
}

// Finding 7a: an actor the node hides, and its descendants, cannot be
// reached from peers; a sibling whose name merely starts the same can.
func TestSecHiddenActorsUnreachable(t *testing.T) {
	bubble(t, 2, rclusterOpts{}, func(t *testing.T, c *rcluster) {
		a, x := c.nodes[0], c.nodes[1]
		c.waitMesh()
		parent := spawnNamed(t, a.sys, actor.PropsFromFunc(func(ctx actor.Context) {
			switch m := ctx.Message().(type) {
			case *actor.Started:
				ctx.SpawnNamed(echoProps(nil), "child")
			case *wrapperspb.StringValue:
				ctx.Respond(m)
			}
		}), "internal")
		spawnNamed(t, a.sys, echoProps(nil), "internalx")
		c.eventually("the child", func() bool {
			_, ok := a.sys.ProcessRegistry.GetLocal("internal/child")
			return ok
		})
		a.remote.Hide(parent)
		ask := func(id string) error {
			_, err := x.sys.Root.RequestFuture(x.remote.PID(a.id.ID, id), wrapperspb.String("hi"), 10*time.Second).Result()
			return err
		}
		for _, id := range []string{"internal", "internal/child"} {
			if err := ask(id); !errors.Is(err, actor.ErrDeadLetter) {
				t.Fatalf("request to hidden %s: %v, want a dead letter", id, err)
			}
		}
		if err := ask("internalx"); err != nil {
			t.Fatalf("request to internalx, not hidden: %v", err)
		}
		// Watching a hidden actor ends at once, as for one that does not exist.
		watch, terms := termWatcher(t, x.sys)
		watch(x.remote.PID(a.id.ID, "internal"))
		if m := recv(t, terms, 10*time.Second, "Terminated for the hidden actor"); m.Why != actor.TerminatedReason_NotFound {
			t.Fatalf("got %v", m)
		}
		if s := a.remote.Stats(); s.DeadLetters[quicremote.DeadLetterHidden] != 3 {
			t.Fatalf("hidden dead letters %d, want 3", s.DeadLetters[quicremote.DeadLetterHidden])
		}
		// A hidden actor still learns that an actor it watches ended.
		hiddenTerms := make(chan *actor.Terminated, 1)
		watcher := spawnNamed(t, a.sys, actor.PropsFromFunc(func(ctx actor.Context) {
			switch m := ctx.Message().(type) {
			case *actor.PID:
				ctx.Watch(m)
				ctx.Respond(m)
			case *actor.Terminated:
				hiddenTerms <- m
			}
		}), "internal/watcher")
		watched := spawnNamed(t, x.sys, echoProps(nil), "watched")
		request(t, a.sys, watcher, a.remote.PID(x.id.ID, watched.Id))
		request(t, a.sys, a.remote.PID(x.id.ID, watched.Id), wrapperspb.String("sync")) // the Watch is at x
		x.sys.Root.Stop(watched)
		if m := recv(t, hiddenTerms, 10*time.Second, "Terminated at the hidden watcher"); m.Who.Id != watched.Id || m.Why != actor.TerminatedReason_Stopped {
			t.Fatalf("hidden watcher got %v", m)
		}
		// The node's own actors still reach it.
		if res := request(t, a.sys, parent, wrapperspb.String("local")); res.(*wrapperspb.StringValue).Value != "local" {
			t.Fatalf("local request: %v", res)
		}
		a.remote.Unhide(parent)
		if err := ask("internal/child"); err != nil {
			t.Fatalf("after Unhide: %v", err)
		}
	})
}

// Finding 7b: a member cannot end another member's watch with a forged
// Terminated (as a system message or a user message), watch or unwatch on
// behalf of another node, or stop actors it did not spawn.
func TestSecSystemMessagesNeedRights(t *testing.T) {
	bubble(t, 3, rclusterOpts{}, func(t *testing.T, c *rcluster) {
		a, b, x := c.nodes[0], c.nodes[1], c.nodes[2]
		c.waitMesh()
		spawnNamed(t, b.sys, echoProps(nil), "w")
		var watcherID string
		terms := make(chan *actor.Terminated, 10)
		watched := make(chan struct{})
		wpid := spawnNamed(t, a.sys, actor.PropsFromFunc(func(ctx actor.Context) {
			switch m := ctx.Message().(type) {
			case *actor.Started:
				ctx.Watch(actor.NewPID(b.id.ID.String(), "w"))
				close(watched)
			case *actor.Terminated:
				terms <- m
			}
		}), "watcher")
		watcherID = wpid.Id
		<-watched
		request(t, a.sys, a.remote.PID(b.id.ID, "w"), wrapperspb.String("sync")) // the Watch is at b
		for _, name := range []string{"victim", "victim2"} {
			spawnNamed(t, a.sys, echoProps(nil), name)
		}

		raw := openRaw(t, x, a)
		bw := &actor.PID{Address: b.id.ID.String(), Id: "w"}
		raw.send(
			sysTo(t, watcherID, &actor.Terminated{Who: bw, Why: actor.TerminatedReason_Stopped}),
			envTo(t, watcherID, &actor.Terminated{Who: bw, Why: actor.TerminatedReason_Stopped}),
			sysTo(t, "victim", &actor.Stop{}),
			envTo(t, "victim2", &actor.PoisonPill{}),
			// A watch for b's actor, and an unwatch of a's own watcher.
			sysTo(t, "victim", &actor.Watch{Watcher: bw}),
			sysTo(t, "victim", &actor.Unwatch{Watcher: bw}),
		)
		for _, name := range []string{"victim", "victim2"} {
			if res := request(t, a.sys, a.sys.NewLocalPID(name), wrapperspb.String("alive?")); res.(*wrapperspb.StringValue).Value != "alive?" {
				t.Fatalf("%s: %v", name, res)
			}
		}
		select {
		case m := <-terms:
			t.Fatalf("forged Terminated reached the watcher: %v", m)
		default:
		}
		// The real one still comes, once.
		b.sys.Root.Stop(b.sys.NewLocalPID("w"))
		expectTerms(t, terms, 1, actor.TerminatedReason_Stopped)
		if s := a.remote.Stats(); s.RefusedSystem != 6 || s.DeadLetters[quicremote.DeadLetterRefused] != 6 {
			t.Fatalf("refused system messages %d (dead letters %d), want 6", s.RefusedSystem, s.DeadLetters[quicremote.DeadLetterRefused])
		}
	})
}

// capturedMailbox spawns props with a default (unbounded) mailbox and
// returns the mailbox, so a test can read its length.
func capturedMailbox(props *actor.Props) (*actor.Props, func() actor.Mailbox) {
	var mu sync.Mutex
	var mb actor.Mailbox
	return props.Configure(actor.WithMailbox(func() actor.Mailbox {
			m := actor.Unbounded()()
			mu.Lock()
			mb = m
			mu.Unlock()
			return m
		})), func() actor.Mailbox {
			mu.Lock()
			defer mu.Unlock()
			return mb
		}
}

// Finding 7c: a target that does not keep up holds up its peer's stream,
// not the node's memory: its mailbox stays near MaxTargetBacklog, and once
// it has been full for BacklogWait messages to it become dead letters the
// sender sees, while messages to other actors flow again.
func TestSecBacklogBoundsTargetMailbox(t *testing.T) {
	const backlog = 100
	bubble(t, 2, rclusterOpts{remote: func(_ int, rc *quicremote.Config) {
		rc.MaxTargetBacklog = backlog
		rc.BacklogWait = 200 * time.Millisecond
	}}, func(t *testing.T, c *rcluster) {
		a, b := c.nodes[0], c.nodes[1]
		c.waitMesh()
		release := make(chan struct{})
		var once sync.Once
		unblock := func() { once.Do(func() { close(release) }) }
		defer unblock()
		props, mailbox := capturedMailbox(actor.PropsFromFunc(func(ctx actor.Context) {
			if _, ok := ctx.Message().(*wrapperspb.Int64Value); ok {
				<-release
			}
		}))
		spawnNamed(t, b.sys, props, "stuck")
		col := spawnCollector(t, b.sys, "col", 10)
		const n = 3000
		stuck := a.remote.PID(b.id.ID, "stuck")
		for i := 0; i < n; i++ {
			a.sys.Root.Send(stuck, wrapperspb.Int64(int64(i)))
		}
		a.sys.Root.Send(a.remote.PID(b.id.ID, "col"), wrapperspb.String("behind the flood"))
		recv(t, col.ch, 20*time.Second, "a message to another actor")
		if _, err := a.sys.Root.RequestFuture(stuck, wrapperspb.Int64(-1), 10*time.Second).Result(); !errors.Is(err, actor.ErrDeadLetter) {
			t.Fatalf("request to the stuck actor: %v, want a dead letter", err)
		}
		queued := mailbox().UserMessageCount()
		s := b.remote.Stats()
		t.Logf("stuck mailbox %d, busy dead letters %d, stalls %d", queued, s.DeadLetters[quicremote.DeadLetterTargetBusy], s.BacklogStalls)
		if queued > backlog+1 {
			t.Fatalf("stuck actor's mailbox holds %d messages, bound %d", queued, backlog)
		}
		if s.DeadLetters[quicremote.DeadLetterTargetBusy] == 0 || s.BacklogStalls == 0 {
			t.Fatalf("stats %+v", s)
		}
		// Once it drains, it is reachable again.
		unblock()
		c.eventually("the mailbox to drain", func() bool { return mailbox().UserMessageCount() == 0 })
		a.sys.Root.Send(stuck, wrapperspb.String("after")) // not an Int64: it does not block
		spawnNamed(t, b.sys, echoProps(nil), "echo")
		request(t, a.sys, a.remote.PID(b.id.ID, "echo"), wrapperspb.String("sync"))
		c.eventually("delivery to the drained actor", func() bool {
			return b.remote.Stats().Received > uint64(backlog)
		})
	})
}

// Finding 8: an acknowledgement is a varint. One longer than that is
// refused by the transport before it is read (the remote sets the ack
// direction's receive limit), anything else that is not one varint fails
// the stream at once, counted; either way the batches it was to
// acknowledge become dead letters.
func TestSecLongAckFailsStream(t *testing.T) {
	bubble(t, 2, rclusterOpts{remote: func(i int, rc *quicremote.Config) {
		if i == 1 {
			rc.Protocol = "actor/elsewhere"
		}
	}}, func(t *testing.T, c *rcluster) {
		a, b := c.nodes[0], c.nodes[1]
		c.waitMesh()
		var streams atomic.Int32
		if err := b.rpc.HandleStream(quicremote.DefaultProtocol, func(ctx context.Context, _ membership.NodeID, s transport.Stream) error {
			if _, err := s.Recv(); err != nil {
				return nil
			}
			ack := append(protowire.AppendVarint(nil, 1), make([]byte, 64<<10)...) // a 64 KiB "acknowledgement"
			if streams.Add(1) > 1 {
				ack = ack[:2] // two bytes: not one varint
			}
			_ = s.Send(ctx, ack)
			<-ctx.Done()
			return nil
		}, 0); err != nil {
			t.Fatal(err)
		}
		for i := range 2 {
			_, err := a.sys.Root.RequestFuture(a.remote.PID(b.id.ID, "anyone"), wrapperspb.String("q"), 30*time.Second).Result()
			if !errors.Is(err, actor.ErrDeadLetter) {
				t.Fatalf("request %d answered by a bad acknowledgement: %v", i, err)
			}
		}
		oversized := a.rpc.(*transport.MemTransport).Stats(b.id.ID).OversizedFrames
		c.eventually("the bad acknowledgements counted", func() bool {
			s := a.remote.Stats()
			return s.BadAcks == 1 && s.DeadLetters[quicremote.DeadLetterSendFailed] == 2
		})
		if oversized != 1 {
			t.Fatalf("the 64 KiB acknowledgement: %d oversized frames counted by the transport, want 1", oversized)
		}
	})
}
