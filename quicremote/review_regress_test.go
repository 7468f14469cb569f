package quicremote

import (
	"crypto/rand"
	"testing"
	"testing/synctest"
	"time"

	"github.com/abcast/abcast/quicremote/transport"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/abcast/abcast/membership"
)

// A batch of a newer epoch (or connection) that asks for the turn while a
// batch of the old epoch is still being delivered must not be refused as
// stale when the old batch's finish moves the count on.
func TestReviewInboundOrderNewEpochWhileOldBusy(t *testing.T) {
	var o orderCore
	if v, _ := o.admit(1, 1, 0); v != orderGo { // old epoch, batch 0: holds the turn
		t.Fatalf("first batch: %v", v)
	}
	if v, _ := o.admit(1, 2, 0); v != orderWait { // the new stream's first batch
		t.Fatalf("new epoch's batch 0 while the old one is delivered: %v, want to wait", v)
	}
	o.finish() // the old batch finishes delivering
	if v, _ := o.admit(1, 2, 0); v != orderGo {
		t.Fatalf("new epoch's batch 0 after the old epoch's batch finished: %v (it is acked and silently lost)", v)
	}
}

// End to end on the in-memory transport: the sender's first stream dies
// while the receiver is still delivering its batch; the replacement
// stream's first batch must be delivered (it is acknowledged either way).
func TestReviewNewStreamFirstBatchNotLost(t *testing.T) {
	synctest.Test(t, reviewNewStreamFirstBatchNotLost)
}

func reviewNewStreamFirstBatchNotLost(t *testing.T) {
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
	defer func() {
		rB.Close()
		time.Sleep(2 * time.Second) // protoactor's dead-letter log throttle
	}()
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
	ctx := t.Context()
	synctest.Wait()
	if _, up := tA.ConnID(idB.ID); !up {
		t.Fatal("not connected")
	}
	s1, err := tA.OpenStream(ctx, idB.ID, rcfg.Protocol)
	if err != nil {
		t.Fatal(err)
	}
	if err := s1.Send(ctx, appendBatchTags(env(pid.Id, "no.such.Type", nil), 1, 0)); err != nil {
		t.Fatal(err)
	}
	synctest.Wait() // b holds the turn, stuck in OnDeadLetter
	if rB.Stats().DeadLetters[DeadLetterUndecodable] != 1 {
		t.Fatal("the first batch is not being delivered")
	}
	s1.Close() // the sender gives up on stream 1 (say, an ack timeout)

	s2, err := tA.OpenStream(ctx, idB.ID, rcfg.Protocol)
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := proto.Marshal(&actor.PID{Id: "hello"})
	if err := s2.Send(ctx, appendBatchTags(env(pid.Id, "actor.PID", payload), 2, 0)); err != nil {
		t.Fatal(err)
	}
	synctest.Wait() // batch 0 of stream 2 waits for the turn
	close(slow)
	ack, err := s2.Recv()
	if err != nil {
		t.Fatal(err)
	}
	n, _ := protowire.ConsumeVarint(ack)
	synctest.Wait()
	select {
	case <-got:
	default:
		t.Fatalf("stream 2's batch 0 was acknowledged (%d) but never delivered: silently lost (stale batches %d)", n, rB.Stats().StaleBatches)
	}
}
