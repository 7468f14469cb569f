package quicremote

import (
	"context"
	"crypto/rand"
	"testing"
	"time"

	"github.com/abcast/abcast/quicremote/transport"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/abcast/abcast/membership"
)

// A batch of a newer epoch (or connection) that waits for the turn while a
// batch of the old epoch is still being delivered must not be refused as
// stale when the old batch's done() moves the count on.
func TestReviewInboundOrderNewEpochWhileOldBusy(t *testing.T) {
	o := &inboundOrder{changed: make(chan struct{})}
	ctx := context.Background()
	if err := o.waitTurn(ctx, 1, 1, 0); err != nil { // old epoch, batch 0: holds the turn
		t.Fatal(err)
	}
	res := make(chan error, 1)
	go func() { res <- o.waitTurn(ctx, 1, 2, 0) }() // new stream's first batch
	time.Sleep(20 * time.Millisecond)
	o.done() // the old batch finishes delivering
	select {
	case err := <-res:
		if err != nil {
			t.Fatalf("new epoch's batch 0 refused after the old epoch's batch finished: %v (it is acked and silently lost)", err)
		}
	case <-time.After(time.Second):
		t.Fatal("new epoch's batch 0 never got the turn")
	}
}

// End to end on the in-memory transport: the sender's first stream dies
// while the receiver is still delivering its batch; the replacement
// stream's first batch must be delivered (it is acknowledged either way).
func TestReviewNewStreamFirstBatchNotLost(t *testing.T) {
	idA, _ := membership.GenerateIdentity(rand.Reader)
	idB, _ := membership.GenerateIdentity(rand.Reader)
	snap, err := membership.NewSnapshot(1, idA.Member("10.0.0.1:1"), idB.Member("10.0.0.2:1"))
	if err != nil {
		t.Fatal(err)
	}
	srcA, _ := membership.NewStaticSource(snap)
	srcB, _ := membership.NewStaticSource(snap)
	net := transport.NewMemNetwork()
	sysB := actor.NewActorSystem()
	rcfg := DefaultConfig()
	slow := make(chan struct{})
	rcfg.OnDeadLetter = func(d DeadLetter) {
		if d.Reason == DeadLetterUndecodable {
			<-slow // the receiver is busy delivering the old stream's batch
		}
	}
	rB, err := New(sysB, idB.ID, membership.LatestMembers(srcB), rcfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	tA, err := net.NewTransport(transport.DefaultConfig(), idA.ID, srcA, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tA.Close()
	tB, err := net.NewTransport(transport.DefaultConfig(), idB.ID, srcB, rB.PeerEvent)
	if err != nil {
		t.Fatal(err)
	}
	defer tB.Close()
	if err := rB.Start(tB); err != nil {
		t.Fatal(err)
	}
	defer rB.Close()
	got := make(chan any, 10)
	pid, err := sysB.Root.SpawnNamed(actor.PropsFromFunc(func(c actor.Context) {
		if _, ok := c.Message().(*actor.PID); ok {
			got <- c.Message()
		}
	}), "col")
	if err != nil {
		t.Fatal(err)
	}
	env := func(target, typeName string, payload []byte) []byte {
		var e []byte
		e = appendString(e, fEnvTargetID, target)
		e = appendString(e, fEnvTypeName, typeName)
		if len(payload) > 0 {
			e = protowire.AppendTag(e, fEnvPayload, protowire.BytesType)
			e = protowire.AppendBytes(e, payload)
		}
		b := protowire.AppendTag(nil, fBatchEnvelope, protowire.BytesType)
		return protowire.AppendBytes(b, e)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	waitFor := func(cond func() bool) {
		for !cond() {
			if ctx.Err() != nil {
				t.Fatal("timeout")
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitFor(func() bool { _, up := tA.ConnID(idB.ID); return up })
	s1, err := tA.OpenStream(ctx, idB.ID, rcfg.Protocol)
	if err != nil {
		t.Fatal(err)
	}
	if err := s1.Send(ctx, appendBatchTags(env("nobody", "no.such.Type", nil), 1, 0)); err != nil {
		t.Fatal(err)
	}
	waitFor(func() bool { return rB.Stats().DeadLetters[DeadLetterUndecodable] > 0 })
	s1.Close() // the sender gives up on stream 1 (say, an ack timeout)

	s2, err := tA.OpenStream(ctx, idB.ID, rcfg.Protocol)
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := proto.Marshal(&actor.PID{Id: "hello"})
	if err := s2.Send(ctx, appendBatchTags(env(pid.Id, "actor.PID", payload), 2, 0)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // batch 0 of stream 2 waits for the turn
	close(slow)
	ack, err := s2.Recv()
	if err != nil {
		t.Fatal(err)
	}
	n, _ := protowire.ConsumeVarint(ack)
	t.Logf("stream 2 acknowledged %d batch(es); stale batches at receiver: %d", n, rB.Stats().StaleBatches)
	select {
	case <-got:
	case <-time.After(500 * time.Millisecond):
		t.Fatalf("stream 2's batch 0 was acknowledged (%d) but never delivered: silently lost", n)
	}
}
