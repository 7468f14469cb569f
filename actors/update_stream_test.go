package actors

import (
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/quicremote/transport"
)

// outcomes records what an update stream reported per token.
type outcomes struct {
	mu  sync.Mutex
	got map[broadcast.Token]error
}

func (o *outcomes) report(tok broadcast.Token, err error, _ int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.got == nil {
		o.got = map[broadcast.Token]error{}
	}
	o.got[tok] = err
}

// idleStream is an update stream whose writer does not run: the test
// takes batches itself with nextBatch.
func idleStream(o *outcomes) *updateStream {
	return &updateStream{report: o.report, wake: make(chan struct{}, 1), byTok: map[broadcast.Token]*streamedUpdate{}, nextSeq: 1}
}

// The abort rule on a shared stream: an update cancelled (superseded or
// aborted) while it waits is never written, and one cancelled in flight
// is forgotten — its acknowledgement reports nothing to the core.
func TestUpdateStreamCancelledUpdatesNeverLeave(t *testing.T) {
	var o outcomes
	s := idleStream(&o)
	s.send(1, []byte("first"), time.Minute)
	s.send(2, []byte("second"), time.Minute)
	s.send(3, []byte("third"), time.Minute)
	if !s.cancelTok(2) {
		t.Fatal("queued update unknown to the stream")
	}
	frame, n := s.nextBatch(nil)
	datas, err := decodeBatch(frame, 1)
	if err != nil || n != 2 || len(datas) != 2 || string(datas[0]) != "first" || string(datas[1]) != "third" {
		t.Fatalf("batch %q (%d, %v), want first and third only", datas, n, err)
	}
	s.cancelTok(3) // in flight now
	if err := s.acked(2, map[uint64]string{1: "refused here"}); err != nil {
		t.Fatal(err)
	}
	if len(o.got) != 1 || !errors.Is(o.got[1], transport.ErrRemote) {
		t.Fatalf("outcomes %v: want only token 1, refused", o.got)
	}
	if _, n := s.nextBatch(nil); n != 0 {
		t.Fatal("a cancelled update was written after all")
	}
}

// Acknowledgements settle exactly the updates they name: every one up to
// the sequence number, failed where refused; one for updates not sent is
// the peer's protocol error.
func TestUpdateStreamAcknowledgements(t *testing.T) {
	var o outcomes
	s := idleStream(&o)
	for tok := range broadcast.Token(4) {
		s.send(tok+1, []byte{byte(tok)}, time.Minute)
	}
	frame, _ := s.nextBatch(nil)
	if _, err := decodeBatch(frame, 1); err != nil {
		t.Fatal(err)
	}
	if err := s.acked(2, nil); err != nil {
		t.Fatal(err)
	}
	if len(o.got) != 2 || o.got[1] != nil || o.got[2] != nil {
		t.Fatalf("after ack of 2: %v", o.got)
	}
	if err := s.acked(9, nil); err == nil {
		t.Fatal("acknowledgement of updates never sent accepted")
	}
	if err := s.acked(1, nil); err == nil {
		t.Fatal("acknowledgement going backwards accepted")
	}
}

// An update still waiting when its timeout fires fails alone.
func TestUpdateStreamQueuedTimeout(t *testing.T) {
	var o outcomes
	s := idleStream(&o)
	s.send(1, []byte("x"), time.Millisecond)
	deadline := time.Now().Add(10 * time.Second)
	for {
		o.mu.Lock()
		err, ok := o.got[1]
		o.mu.Unlock()
		if ok {
			if err == nil {
				t.Fatal("timed-out update reported acknowledged")
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("queued update never timed out")
		}
		time.Sleep(time.Millisecond)
	}
	if _, n := s.nextBatch(nil); n != 0 {
		t.Fatal("timed-out update written")
	}
}

// A peer's batch frames and acknowledgements are checked before anything
// is believed: wrong numbering, oversized updates, empty or overlong
// batches and malformed acknowledgements are refused as invalid.
func TestUpdateStreamFramesRefused(t *testing.T) {
	entry := func(b []byte, seq uint64, data []byte) []byte {
		return protowire.AppendBytes(protowire.AppendVarint(b, seq), data)
	}
	many := []byte{}
	for i := range maxBatchEntries + 1 {
		many = entry(many, uint64(i+1), []byte{1})
	}
	for name, frame := range map[string][]byte{
		"empty":          nil,
		"gap":            entry(entry(nil, 1, []byte("a")), 3, []byte("b")),
		"starts late":    entry(nil, 2, []byte("a")),
		"truncated":      entry(nil, 1, []byte("abc"))[:4],
		"oversized":      entry(nil, 1, make([]byte, maxStreamedUpdate+1)),
		"too many":       many,
		"varint garbage": bytes.Repeat([]byte{0xff}, 11),
	} {
		if _, err := decodeBatch(frame, 1); !errors.Is(err, broadcast.ErrInvalid) {
			t.Errorf("batch %s: %v, want ErrInvalid", name, err)
		}
	}
	good := encodeAck(nil, 5, []ackRefusal{{seq: 4, why: "no"}})
	if through, refused, err := decodeAck(good); err != nil || through != 5 || refused[4] != "no" {
		t.Fatalf("ack round trip: %d %v %v", through, refused, err)
	}
	long := protowire.AppendString(protowire.AppendVarint(protowire.AppendVarint(protowire.AppendVarint(nil, 5), 1), 4), string(make([]byte, maxAckError+1)))
	for name, frame := range map[string][]byte{
		"trailing":       append(good, 0),
		"too many":       protowire.AppendVarint(protowire.AppendVarint(nil, 5), maxBatchEntries+1),
		"long reason":    long,
		"truncated":      good[:len(good)-1],
		"varint garbage": bytes.Repeat([]byte{0xff}, 11),
	} {
		if _, _, err := decodeAck(frame); !errors.Is(err, broadcast.ErrInvalid) {
			t.Errorf("ack %s: %v, want ErrInvalid", name, err)
		}
	}
}

func FuzzDecodeUpdateStreamFrames(f *testing.F) {
	f.Add(protowire.AppendBytes(protowire.AppendVarint(nil, 1), []byte("u")), true)
	f.Add(encodeAck(nil, 3, []ackRefusal{{seq: 2, why: "x"}}), false)
	f.Fuzz(func(t *testing.T, b []byte, batch bool) {
		if batch {
			datas, err := decodeBatch(b, 1)
			if err == nil && (len(datas) == 0 || len(datas) > maxBatchEntries) {
				t.Fatalf("accepted a batch of %d updates", len(datas))
			}
			return
		}
		if _, refused, err := decodeAck(b); err == nil && len(refused) > maxBatchEntries {
			t.Fatalf("accepted %d refusals", len(refused))
		}
	})
}
