package quicremote

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/abcast/abcast/proto/abcastpb"
)

// FuzzDecodeActorBatch feeds arbitrary bytes to what the remote does with
// an incoming frame (handleBatch, deliver): parseBatch, parseEnvelope on
// every envelope (parseHeaderEntry through it), then the target and the
// message of each envelope (batchDecoder). Nothing may panic, and the
// decoder is checked against proto.Unmarshal into abcastpb.ActorBatch:
//
//   - when both accept the frame, every field agrees;
//   - the decoder may refuse what protobuf accepts only for a known field
//     (of the batch, an envelope or a header entry) with the wrong wire
//     type, which protobuf keeps as an unknown field; its error says
//     "wire type";
//   - protobuf may refuse what the decoder accepts only for invalid UTF-8
//     in a string field (the decoder takes any bytes);
//
// both exceptions checked against walkWire, an independent walk of the
// bytes by the schema.
func FuzzDecodeActorBatch(f *testing.F) {
	for _, seed := range actorBatchSeeds() {
		f.Add(seed)
	}
	r := newWireTestRemote()
	f.Fuzz(func(t *testing.T, data []byte) {
		var facts wireFacts
		walked := walkWire(data, batchSchema, &facts)

		d := &batchDecoder{r: r}
		ours := parseBatch(data, &d.batch, 1<<30)
		if ours == nil {
			d.envs = make([]rawEnvelope, len(d.batch.envelopes))
		}
		for i := 0; ours == nil && i < len(d.envs); i++ {
			ours = parseEnvelope(d.batch.envelopes[i], &d.envs[i])
		}
		if ours != nil && !errors.Is(ours, errBadBatch) {
			t.Fatalf("error %v does not wrap errBadBatch", ours)
		}
		var pb abcastpb.ActorBatch
		theirs := proto.Unmarshal(data, &pb)

		switch {
		case ours == nil && theirs == nil:
			compareWithProtobuf(t, &d.batch, d.envs, &pb)
		case ours != nil && theirs == nil:
			if !strings.Contains(ours.Error(), "wire type") {
				t.Fatalf("refused what protobuf accepts, not for a wire type: %v", ours)
			}
		case ours == nil && theirs != nil:
			if !strings.Contains(theirs.Error(), "UTF-8") {
				t.Fatalf("accepted what protobuf refuses, not for UTF-8: %v", theirs)
			}
		}
		// The walk predicts both outcomes.
		if walked && !facts.mistyped && ours != nil {
			t.Fatalf("refused a well-formed frame: %v", ours)
		}
		if walked && !facts.badUTF8 && theirs != nil {
			t.Fatalf("protobuf refuses a well-formed frame (the walk is wrong): %v", theirs)
		}
		if !walked && (ours == nil || theirs == nil) {
			t.Fatalf("accepted (ours: %v, protobuf: %v) a frame the schema walk finds malformed", ours, theirs)
		}
		if ours == nil && facts.mistyped {
			t.Fatal("accepted a known field with the wrong wire type")
		}
		if theirs == nil && facts.badUTF8 {
			t.Fatal("protobuf accepted invalid UTF-8 (the walk is wrong)")
		}
		if ours != nil {
			return
		}
		checkDeliver(t, r, d)
	})
}

// compareWithProtobuf checks the decoder's view of a frame against
// protobuf's.
func compareWithProtobuf(t *testing.T, b *rawBatch, envs []rawEnvelope, pb *abcastpb.ActorBatch) {
	t.Helper()
	if b.epoch != pb.Epoch || b.seq != pb.Seq {
		t.Fatalf("epoch/seq %d/%d, protobuf %d/%d", b.epoch, b.seq, pb.Epoch, pb.Seq)
	}
	if len(b.typeNames) != len(pb.TypeNames) {
		t.Fatalf("%d type names, protobuf %d", len(b.typeNames), len(pb.TypeNames))
	}
	for i, n := range b.typeNames {
		if string(n) != pb.TypeNames[i] {
			t.Fatalf("type name %d: %q, protobuf %q", i, n, pb.TypeNames[i])
		}
	}
	if len(envs) != len(pb.Envelopes) {
		t.Fatalf("%d envelopes, protobuf %d", len(envs), len(pb.Envelopes))
	}
	for i := range envs {
		e, p := &envs[i], pb.Envelopes[i]
		if string(e.targetID) != p.TargetId || e.targetReq != p.TargetRequestId ||
			string(e.senderAddr) != p.SenderAddress || string(e.senderID) != p.SenderId || e.senderReq != p.SenderRequestId ||
			e.serializer != p.SerializerId || string(e.typeName) != p.TypeName || !bytes.Equal(e.payload, p.Payload) ||
			e.system != p.System || e.typeIndex != p.TypeIndex || !sameHeader(e.header, p.Header) {
			t.Fatalf("envelope %d:\n     got %+v\nprotobuf %v", i, *e, p)
		}
	}
}

// checkDeliver does what Remote.deliver does with each envelope of an
// accepted frame, checking the target and that the message decodes as the
// envelope's serializer decodes it by the resolved type name.
func checkDeliver(t *testing.T, r *Remote, d *batchDecoder) {
	t.Helper()
	for i := range d.envs {
		env := &d.envs[i]
		pid := d.targetOf(env)
		if pid.Address != r.addr || pid.Id != string(env.targetID) || pid.RequestId != env.targetReq {
			t.Fatalf("envelope %d: target %v", i, pid)
		}
		msg, _, err := d.decode(env)
		if (err == nil) != (msg != nil) {
			t.Fatalf("envelope %d: message %v with error %v", i, msg, err)
		}
		if errors.Is(err, errDecodeLimit) {
			if env.serializer == protoSerializerID && len(env.payload) < 64 {
				t.Fatalf("envelope %d: %d payload bytes over the decoding limits: %v", i, len(env.payload), err)
			}
			continue
		}
		if env.typeIndex > uint32(len(d.batch.typeNames)) {
			if !errors.Is(err, ErrUnknownMessageType) {
				t.Fatalf("envelope %d: type index %d of %d: %v", i, env.typeIndex, len(d.batch.typeNames), err)
			}
			continue
		}
		name := env.typeName
		if env.typeIndex != 0 {
			name = d.batch.typeNames[env.typeIndex-1]
		}
		ser := r.serByID[env.serializer]
		if ser == nil {
			if err == nil {
				t.Fatalf("envelope %d: unknown serializer %d decoded %v", i, env.serializer, msg)
			}
			continue
		}
		want, wantErr := ser.Deserialize(string(name), bytes.Clone(env.payload))
		if wantErr == nil && want == nil {
			wantErr = errors.New("no message")
		}
		if (err == nil) != (wantErr == nil) || errors.Is(err, ErrUnknownMessageType) != errors.Is(wantErr, ErrUnknownMessageType) {
			t.Fatalf("envelope %d (%q, serializer %d): decoder %v, %v; serializer %v, %v", i, name, env.serializer, msg, err, want, wantErr)
		}
		if err == nil && !sameMsg(msg, want) {
			t.Fatalf("envelope %d (%q): decoder %v, serializer %v", i, name, msg, want)
		}
	}
}

// wireFacts is what walkWire found in a frame.
type wireFacts struct {
	mistyped bool // a known field with the wrong wire type
	badUTF8  bool // a string field that is not UTF-8
}

type wireKind int

const (
	wkVarint wireKind = iota + 1
	wkString
	wkBytes
	wkEnvelope
	wkHeaderEntry
)

var (
	batchSchema = map[protowire.Number]wireKind{1: wkEnvelope, 2: wkVarint, 3: wkVarint, 4: wkString}
	envSchema   = map[protowire.Number]wireKind{
		1: wkString, 2: wkVarint, 3: wkString, 4: wkString, 5: wkVarint, 6: wkVarint,
		7: wkString, 8: wkBytes, 9: wkVarint, 10: wkHeaderEntry, 11: wkVarint,
	}
	headerEntrySchema = map[protowire.Number]wireKind{1: wkString, 2: wkString}
)

// walkWire reads b as a message of schema the way protobuf does (a known
// field with the wrong wire type is skipped as unknown) and records in f
// what the decoders may disagree on. It reports false on bad framing,
// which includes field numbers above protowire.MaxValidNumber (outside
// groups, which protobuf skips with protowire.ConsumeFieldValue).
func walkWire(b []byte, schema map[protowire.Number]wireKind, f *wireFacts) bool {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || num > protowire.MaxValidNumber { // protobuf refuses numbers above 2^29-1
			return false
		}
		b = b[n:]
		kind, known := schema[num]
		want := protowire.BytesType
		if kind == wkVarint {
			want = protowire.VarintType
		}
		if !known || typ != want {
			f.mistyped = f.mistyped || known
			if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return false
			}
			b = b[n:]
			continue
		}
		if kind == wkVarint {
			if _, n = protowire.ConsumeVarint(b); n < 0 {
				return false
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		switch kind {
		case wkString:
			f.badUTF8 = f.badUTF8 || !utf8.Valid(v)
		case wkEnvelope:
			if !walkWire(v, envSchema, f) {
				return false
			}
		case wkHeaderEntry:
			if !walkWire(v, headerEntrySchema, f) {
				return false
			}
		}
	}
	return true
}

// actorBatchSeeds are frames as senders write them (batchEncoder), the old
// seeds (envelopes marshalled one by one) and frames on which the decoder
// and protobuf are allowed to disagree.
func actorBatchSeeds() [][]byte {
	var seeds [][]byte

	r := newWireTestRemote()
	enc := batchEncoder{r: r}
	items := []outItem{
		{target: &actor.PID{Id: "echo", RequestId: 2}, sender: &actor.PID{Address: "node-b.test:4000", Id: "asker", RequestId: 5},
			msg: wrapperspb.String("hi"), header: testHeader("trace-id", "abc")},
		{target: &actor.PID{Id: "$3"}, sender: &actor.PID{Address: r.addr, Id: "me"}, msg: wrapperspb.Int64(-1), system: true},
		{target: &actor.PID{Id: "echo", RequestId: 2}, sender: &actor.PID{Address: "nonhost", Id: "future$1"}, msg: wrapperspb.String("again")},
		{target: &actor.PID{Id: "col"}, msg: &wireTestMsg{Data: []byte(`{"Text":"hi"}`)}, header: testHeader("a", "1", "b", "")},
		{target: &actor.PID{Id: "col"}, msg: &abcastpb.ActorEnvelope{TargetId: "nested", Payload: []byte{1}}},
		{target: &actor.PID{Id: "col"}, msg: wrapperspb.Bytes(nil)},
	}
	for i := range items {
		if err := enc.add(&items[i]); err != nil {
			panic(err)
		}
	}
	seeds = append(seeds, bytes.Clone(enc.finish(7, 9)))
	enc.reset()
	seeds = append(seeds, bytes.Clone(enc.finish(math.MaxUint64, 1)))
	enc.reset()
	if err := enc.add(&items[0]); err != nil {
		panic(err)
	}
	seeds = append(seeds, bytes.Clone(enc.finish(1, 0)))

	env := &abcastpb.ActorEnvelope{TargetId: "t", TypeName: "abcast.v1.FetchRequest", Payload: []byte{0x0a, 0x01, 'x'}, SenderId: "s"}
	one, _ := proto.Marshal(env)
	seeds = append(seeds,
		appendBatchTags(appendBatchEntry(nil, one), 1, 2),
		appendBatchTags(appendBatchEntry(appendBatchEntry(nil, one), one), 0, 0))
	bad := &abcastpb.ActorEnvelope{TargetId: "t", TypeName: "no.such.Type", Payload: []byte{0xff}}
	two, _ := proto.Marshal(bad)
	seeds = append(seeds, appendBatchEntry(nil, two), []byte{0x0a, 0xff, 0xff, 0xff, 0x0f}, []byte{})

	tag := protowire.AppendTag
	str := func(b []byte, num protowire.Number, s string) []byte {
		return protowire.AppendString(tag(b, num, protowire.BytesType), s)
	}
	vint := func(b []byte, num protowire.Number, v uint64) []byte {
		return protowire.AppendVarint(tag(b, num, protowire.VarintType), v)
	}
	sub := func(b []byte, num protowire.Number, inner []byte) []byte {
		return protowire.AppendBytes(tag(b, num, protowire.BytesType), inner)
	}
	byIndex := vint(str(nil, fEnvTargetID, "t"), fEnvTypeIndex, 2)
	seeds = append(seeds,
		vint(nil, fBatchEnvelope, 1), // known field, wrong wire type
		sub(nil, fBatchEnvelope, sub(nil, fEnvHeader, vint(nil, fHeaderEntryKey, 1))),
		str(nil, fBatchTypeNames, "\xff"), // invalid UTF-8
		sub(nil, fBatchEnvelope, sub(nil, fEnvHeader, str(str(nil, 1, "k"), 2, "\xc3"))),
		str(sub(nil, fBatchEnvelope, byIndex), fBatchTypeNames, "google.protobuf.StringValue"), // index past the table
		sub(vint(nil, 15, 1), fBatchEnvelope, vint(str(nil, 20, "?"), fEnvSerializer, math.MaxUint64)),
		// Repeated fields: the last value wins, in an envelope, in a header
		// entry, and for a header key sent twice.
		vint(sub(vint(nil, fBatchSeq, 1), fBatchEnvelope, vint(str(str(vint(nil, fEnvSystem, 1), fEnvTargetID, "a"), fEnvTargetID, "b"), fEnvSystem, 0)), fBatchSeq, 2),
		sub(nil, fBatchEnvelope, sub(nil, fEnvHeader, str(str(str(str(nil, 1, "a"), 2, "x"), 1, "b"), 2, "y"))),
		sub(nil, fBatchEnvelope, sub(sub(nil, fEnvHeader, str(str(nil, 1, "k"), 2, "1")), fEnvHeader, str(str(nil, 1, "k"), 2, "2"))),
	)
	return seeds
}

// appendBatchEntry appends one already marshalled ActorEnvelope to a batch
// being built (a repeated message field is its elements, each tagged and
// length-prefixed).
func appendBatchEntry(b, envelope []byte) []byte {
	b = protowire.AppendTag(b, fBatchEnvelope, protowire.BytesType)
	return protowire.AppendBytes(b, envelope)
}
