package quicremote

import (
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/abcast/abcast/proto/abcastpb"
)

// FuzzDecodeActorBatch feeds arbitrary bytes to what the remote does with
// an incoming batch: decode the ActorBatch, then every envelope's payload
// through the protobuf serializer by type name. Nothing may panic; a
// decoded batch re-framed the way senders frame it (appendBatchEntry,
// appendBatchTags) decodes to the same envelopes.
func FuzzDecodeActorBatch(f *testing.F) {
	env := &abcastpb.ActorEnvelope{TargetId: "t", TypeName: "abcast.v1.FetchRequest", Payload: []byte{0x0a, 0x01, 'x'}, SenderId: "s"}
	one, _ := proto.Marshal(env)
	f.Add(appendBatchTags(appendBatchEntry(nil, one), 1, 2))
	f.Add(appendBatchTags(appendBatchEntry(appendBatchEntry(nil, one), one), 0, 0))
	bad := &abcastpb.ActorEnvelope{TargetId: "t", TypeName: "no.such.Type", Payload: []byte{0xff}}
	two, _ := proto.Marshal(bad)
	f.Add(appendBatchEntry(nil, two))
	f.Add([]byte{0x0a, 0xff, 0xff, 0xff, 0x0f})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		var b abcastpb.ActorBatch
		if err := proto.Unmarshal(data, &b); err != nil {
			return
		}
		var ser ProtoSerializer
		framed := []byte(nil)
		for _, e := range b.Envelopes {
			msg, err := ser.Deserialize(e.TypeName, e.Payload)
			if err == nil && msg == nil {
				t.Fatal("no error and no message")
			}
			if err != nil && !errors.Is(err, ErrUnknownMessageType) && msg != nil {
				t.Fatalf("error %v with a message", err)
			}
			enc, err := proto.Marshal(e)
			if err != nil {
				t.Fatal(err)
			}
			framed = appendBatchEntry(framed, enc)
		}
		framed = appendBatchTags(framed, b.Epoch, b.Seq)
		var again abcastpb.ActorBatch
		if err := proto.Unmarshal(framed, &again); err != nil {
			t.Fatalf("re-framed batch does not decode: %v", err)
		}
		if len(again.Envelopes) != len(b.Envelopes) || again.Epoch != b.Epoch || again.Seq != b.Seq {
			t.Fatalf("re-framed batch differs: %d/%d envelopes", len(again.Envelopes), len(b.Envelopes))
		}
		for i := range b.Envelopes {
			if !proto.Equal(again.Envelopes[i], b.Envelopes[i]) {
				t.Fatalf("envelope %d differs after re-framing", i)
			}
		}
	})
}
