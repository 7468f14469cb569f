package quicremote

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"math/rand"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/abcast/abcast/proto/abcastpb"
)

const wireTestAddr = "node-a.test:4000"

// wireTestMsg is carried by wireTestSerializer, a serializer that does not
// append (so the encoder's Serialize path is used) under a negative id
// (so serializer_id is a sign-extended 10-byte varint).
type wireTestMsg struct {
	Data  []byte
	fail  bool // Serialize refuses it with an error other than ErrUnsupportedMessage
	panic bool // Serialize panics
}

const (
	wireTestSerID    int32 = -7
	wireTestTypeName       = "test.wire.Msg"
	wireTestNilType        = "test.wire.Nil" // Deserialize returns no message and no error
)

var errWireTestRefused = errors.New("wire test serializer refused the message")

type wireTestSerializer struct{}

func (wireTestSerializer) ID() int32 { return wireTestSerID }

func (wireTestSerializer) Serialize(msg any) (string, []byte, error) {
	m, ok := msg.(*wireTestMsg)
	if !ok {
		return "", nil, ErrUnsupportedMessage
	}
	if m.fail {
		return "", nil, errWireTestRefused
	}
	if m.panic {
		panic("wire test serializer told to panic")
	}
	return wireTestTypeName, bytes.Clone(m.Data), nil
}

// Deserialize keeps data: the decoder must hand it a copy.
func (wireTestSerializer) Deserialize(name string, data []byte) (any, error) {
	switch name {
	case wireTestTypeName:
		return &wireTestMsg{Data: data}, nil
	case wireTestNilType:
		return nil, nil
	}
	return nil, fmt.Errorf("%w: %q", ErrUnknownMessageType, name)
}

// wireTestMessages are the protobuf types the codec tests send.
var wireTestMessages = []proto.Message{
	&wrapperspb.StringValue{}, &wrapperspb.Int64Value{}, &wrapperspb.UInt32Value{}, &wrapperspb.UInt64Value{},
	&wrapperspb.Int32Value{}, &wrapperspb.BoolValue{}, &wrapperspb.BytesValue{}, &wrapperspb.DoubleValue{},
	&wrapperspb.FloatValue{}, &abcastpb.ActorEnvelope{}, &abcastpb.FetchRequest{},
}

// newWireTestRemote is the part of a Remote the codec uses, set up as
// New does: custom serializers first, then protobuf.
func newWireTestRemote() *Remote {
	r := &Remote{addr: wireTestAddr, serByID: make(map[int32]Serializer), cfg: DefaultConfig()}
	r.types.init(wireTestMessages)
	r.sers = []Serializer{wireTestSerializer{}, protoSerializer{&r.types}}
	for _, s := range r.sers {
		r.serByID[s.ID()] = s
	}
	return r
}

// testHeader builds a header the way protoactor does (MessageEnvelope's
// header); with no pairs it is a non-nil interface holding a nil map, as
// actor.UnwrapEnvelope returns for an envelope without headers.
func testHeader(kv ...string) actor.ReadonlyMessageHeader {
	env := &actor.MessageEnvelope{}
	for i := 0; i+1 < len(kv); i += 2 {
		env.SetHeader(kv[i], kv[i+1])
	}
	return env.Header
}

// wantEnvelope is what an outItem must come back as.
type wantEnvelope struct {
	targetID             string
	targetReq            uint32
	senderAddr, senderID string
	senderReq            uint32
	serID                int32
	typeName             string
	msg                  any
	system               bool
	header               map[string]string
}

// expectEnvelope computes, independently of the encoder, what it must
// send for it: no sender without a sender id, and no sender address for
// the remote's own address or protoactor's local one.
func expectEnvelope(r *Remote, it *outItem) wantEnvelope {
	w := wantEnvelope{targetID: it.target.Id, targetReq: it.target.RequestId, msg: it.msg, system: it.system}
	if s := it.sender; s != nil && s.Id != "" {
		w.senderID, w.senderReq = s.Id, s.RequestId
		if s.Address != r.addr && s.Address != "nonhost" {
			w.senderAddr = s.Address
		}
	}
	switch m := it.msg.(type) {
	case *wireTestMsg:
		w.serID, w.typeName = wireTestSerID, wireTestTypeName
	case proto.Message:
		w.serID, w.typeName = 0, string(m.ProtoReflect().Descriptor().FullName())
	default:
		panic(fmt.Sprintf("no serializer for %T", it.msg))
	}
	if it.header != nil {
		for _, k := range it.header.Keys() {
			if w.header == nil {
				w.header = make(map[string]string)
			}
			w.header[k] = it.header.Get(k)
		}
	}
	return w
}

func sameMsg(a, b any) bool {
	if am, ok := a.(*wireTestMsg); ok {
		bm, ok := b.(*wireTestMsg)
		return ok && bytes.Equal(am.Data, bm.Data)
	}
	am, aok := a.(proto.Message)
	bm, bok := b.(proto.Message)
	if aok && bok {
		return proto.Equal(am, bm)
	}
	return reflect.DeepEqual(a, b)
}

func sameHeader(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func randString(rng *rand.Rand, pool ...string) string {
	if rng.Intn(4) == 0 {
		b := make([]byte, rng.Intn(40))
		for i := range b {
			b[i] = byte('a' + rng.Intn(26))
		}
		return string(b)
	}
	return pool[rng.Intn(len(pool))]
}

func randUint32(rng *rand.Rand) uint32 {
	switch rng.Intn(4) {
	case 0:
		return 0
	case 1:
		return math.MaxUint32
	case 2:
		return uint32(rng.Intn(300))
	}
	return rng.Uint32()
}

func randItem(rng *rand.Rand) outItem {
	it := outItem{
		target: &actor.PID{Address: wireTestAddr, Id: randString(rng, "", "echo", "$1", "future$a1", "актор/ребёнок", "echo"), RequestId: randUint32(rng)},
		system: rng.Intn(3) == 0,
	}
	switch rng.Intn(6) {
	case 0: // no sender
	case 1:
		it.sender = &actor.PID{Address: wireTestAddr, Id: randString(rng, "me", "$7"), RequestId: randUint32(rng)}
	case 2:
		it.sender = &actor.PID{Address: "nonhost", Id: randString(rng, "future$x", "local"), RequestId: randUint32(rng)}
	case 3:
		it.sender = &actor.PID{Address: randString(rng, "node-b.test:4000", "node-c.test:1"), Id: randString(rng, "them", "$3"), RequestId: randUint32(rng)}
	case 4: // no id: no sender on the wire
		it.sender = &actor.PID{Address: "node-b.test:4000", RequestId: randUint32(rng)}
	case 5:
		it.sender = &actor.PID{Id: "addressless", RequestId: randUint32(rng)}
	}
	switch rng.Intn(8) {
	case 0:
		it.msg = wrapperspb.String(randString(rng, "", "hello", "ünïcödé"))
	case 1:
		it.msg = wrapperspb.Int64(rng.Int63() - rng.Int63())
	case 2:
		it.msg = wrapperspb.UInt32(randUint32(rng))
	case 3:
		it.msg = wrapperspb.Bool(rng.Intn(2) == 0)
	case 4:
		it.msg = wrapperspb.Bytes([]byte(randString(rng, "", "\x00\xff")))
	case 5:
		it.msg = wrapperspb.Double(rng.NormFloat64())
	case 6:
		it.msg = &abcastpb.ActorEnvelope{TargetId: randString(rng, "nested"), Header: map[string]string{"k": "v"}}
	case 7:
		it.msg = &wireTestMsg{Data: []byte(randString(rng, "x", "json-ish {}"))}
	}
	switch rng.Intn(4) {
	case 0: // nil header
	case 1:
		it.header = testHeader()
	case 2:
		it.header = actor.EmptyMessageHeader
	case 3:
		var kv []string
		for range 1 + rng.Intn(4) {
			kv = append(kv, randString(rng, "", "trace-id", "k"), randString(rng, "", "v", "ü"))
		}
		it.header = testHeader(kv...)
	}
	return it
}

// checkBatchFrame decodes frame with protobuf and with the remote's decoder
// (d, reused across a stream's batches as the remote does) and checks both
// give back items.
func checkBatchFrame(t *testing.T, r *Remote, d *batchDecoder, frame []byte, items []outItem, epoch, seq uint64) {
	t.Helper()
	want := make([]wantEnvelope, len(items))
	var names []string // distinct type names, in order of first use
	seen := map[string]bool{}
	for i := range items {
		want[i] = expectEnvelope(r, &items[i])
		if n := want[i].typeName; !seen[n] {
			seen[n] = true
			names = append(names, n)
		}
	}

	// protobuf's view.
	var pb abcastpb.ActorBatch
	if err := proto.Unmarshal(frame, &pb); err != nil {
		t.Fatalf("proto.Unmarshal: %v", err)
	}
	if pb.Epoch != epoch || pb.Seq != seq {
		t.Fatalf("epoch/seq %d/%d, want %d/%d", pb.Epoch, pb.Seq, epoch, seq)
	}
	if !reflect.DeepEqual(pb.TypeNames, names) && !(len(pb.TypeNames) == 0 && len(names) == 0) {
		t.Fatalf("type names %q, want %q", pb.TypeNames, names)
	}
	if len(pb.Envelopes) != len(items) {
		t.Fatalf("%d envelopes, want %d", len(pb.Envelopes), len(items))
	}
	for i, e := range pb.Envelopes {
		w := &want[i]
		if e.TypeName != "" || e.TypeIndex == 0 || int(e.TypeIndex) > len(pb.TypeNames) {
			t.Fatalf("envelope %d: type_name %q type_index %d of %d", i, e.TypeName, e.TypeIndex, len(pb.TypeNames))
		}
		name := pb.TypeNames[e.TypeIndex-1]
		if e.TargetId != w.targetID || e.TargetRequestId != w.targetReq || e.SenderAddress != w.senderAddr ||
			e.SenderId != w.senderID || e.SenderRequestId != w.senderReq || e.SerializerId != w.serID ||
			name != w.typeName || e.System != w.system || !sameHeader(e.Header, w.header) {
			t.Fatalf("envelope %d (protobuf):\n got %v (type %s)\nwant %+v", i, e, name, *w)
		}
		msg, err := r.serByID[e.SerializerId].Deserialize(name, e.Payload)
		if err != nil || !sameMsg(msg, w.msg) {
			t.Fatalf("envelope %d (protobuf): payload decodes to %v, %v; want %v", i, msg, err, w.msg)
		}
	}

	// The remote's view.
	if err := parseBatch(frame, &d.batch, 1<<30); err != nil {
		t.Fatalf("parseBatch: %v", err)
	}
	b := &d.batch
	if b.epoch != epoch || b.seq != seq || len(b.envelopes) != len(items) || len(b.typeNames) != len(names) {
		t.Fatalf("parseBatch: epoch %d seq %d, %d envelopes, %d type names; want %d %d %d %d",
			b.epoch, b.seq, len(b.envelopes), len(b.typeNames), epoch, seq, len(items), len(names))
	}
	for i, n := range b.typeNames {
		if string(n) != names[i] {
			t.Fatalf("type name %d: %q, want %q", i, n, names[i])
		}
	}
	var prev *actor.PID
	for i := range b.envelopes {
		w := &want[i]
		var env rawEnvelope
		if err := parseEnvelope(b.envelopes[i], &env); err != nil {
			t.Fatalf("envelope %d: %v", i, err)
		}
		if string(env.targetID) != w.targetID || env.targetReq != w.targetReq || string(env.senderAddr) != w.senderAddr ||
			string(env.senderID) != w.senderID || env.senderReq != w.senderReq || env.serializer != w.serID ||
			env.system != w.system || !sameHeader(env.header, w.header) {
			t.Fatalf("envelope %d (remote):\n got %+v\nwant %+v", i, env, *w)
		}
		name, err := d.typeName(&env)
		if err != nil || string(name) != w.typeName {
			t.Fatalf("envelope %d: type name %q, %v; want %q", i, name, err, w.typeName)
		}
		msg, _, err := d.decode(&env)
		if err != nil || !sameMsg(msg, w.msg) {
			t.Fatalf("envelope %d (remote): decodes to %v, %v; want %v", i, msg, err, w.msg)
		}
		pid := d.targetOf(&env)
		if pid.Address != r.addr || pid.Id != w.targetID || pid.RequestId != w.targetReq {
			t.Fatalf("envelope %d: target %v, want %s/%s#%d", i, pid, r.addr, w.targetID, w.targetReq)
		}
		if i > 0 && w.targetID == want[i-1].targetID && w.targetReq == want[i-1].targetReq && pid != prev {
			t.Fatalf("envelope %d: same target as the one before, new PID", i)
		}
		prev = pid
	}
}

// Randomized batches encoded by batchEncoder decode, with protobuf and
// with the remote's decoder, to exactly what was added.
func TestRemoteWireRoundTrip(t *testing.T) {
	seeds := []int64{1, 2, 3, 42, 1 << 40, time.Now().UnixNano()}
	for _, seed := range seeds {
		t.Logf("seed %d", seed)
		rng := rand.New(rand.NewSource(seed))
		r := newWireTestRemote()
		enc := batchEncoder{r: r}
		d := &batchDecoder{r: r} // one incoming stream: its caches carry over
		for batch := range 8 {
			enc.reset()
			n := rng.Intn(60)
			if batch == 0 {
				n = 0
			}
			items := make([]outItem, n)
			for i := range items {
				items[i] = randItem(rng)
				if err := enc.add(&items[i]); err != nil {
					t.Fatalf("seed %d batch %d: add %T: %v", seed, batch, items[i].msg, err)
				}
			}
			if enc.n != n {
				t.Fatalf("seed %d: encoder counts %d envelopes, want %d", seed, enc.n, n)
			}
			epoch, seq := rng.Uint64(), uint64(batch)
			if batch == 1 {
				epoch, seq = 0, 0
			}
			frame := bytes.Clone(enc.finish(epoch, seq))
			checkBatchFrame(t, r, d, frame, items, epoch, seq)
			if t.Failed() {
				t.Fatalf("seed %d batch %d", seed, batch)
			}
		}
	}
}

// A custom serializer may keep what it is given: decode hands it a copy,
// not the frame.
func TestRemoteWireCustomSerializerGetsCopy(t *testing.T) {
	r := newWireTestRemote()
	enc := batchEncoder{r: r}
	it := outItem{target: &actor.PID{Id: "t"}, msg: &wireTestMsg{Data: []byte("keep me")}}
	if err := enc.add(&it); err != nil {
		t.Fatal(err)
	}
	frame := enc.finish(1, 1)
	d := &batchDecoder{r: r}
	if err := parseBatch(frame, &d.batch, 1<<30); err != nil {
		t.Fatal(err)
	}
	var env rawEnvelope
	if err := parseEnvelope(d.batch.envelopes[0], &env); err != nil {
		t.Fatal(err)
	}
	if env.serializer != wireTestSerID {
		t.Fatalf("serializer %d, want %d", env.serializer, wireTestSerID)
	}
	msg, name, err := d.decode(&env)
	if err != nil || name != wireTestTypeName {
		t.Fatalf("decode: %v %q %v", msg, name, err)
	}
	for i := range frame {
		frame[i] = 0
	}
	if got := string(msg.(*wireTestMsg).Data); got != "keep me" {
		t.Fatalf("message aliases the frame: %q", got)
	}
}

func mustAdd(t *testing.T, enc *batchEncoder, it outItem) {
	t.Helper()
	if err := enc.add(&it); err != nil {
		t.Fatalf("add %T: %v", it.msg, err)
	}
}

// rollback leaves the encoder as it was at mark, type table included.
func TestRemoteWireRollback(t *testing.T) {
	r := newWireTestRemote()
	a := outItem{
		target: &actor.PID{Id: "a", RequestId: 3},
		sender: &actor.PID{Address: "node-b.test:4000", Id: "s", RequestId: 9},
		msg:    wrapperspb.String("A"),
		header: testHeader("trace", "1"), // one key: the encoding is deterministic
		system: true,
	}
	bNew := outItem{target: &actor.PID{Id: "b"}, msg: wrapperspb.Int64(-5), header: testHeader("x", "y")}
	bSame := outItem{target: &actor.PID{Id: "b"}, msg: wrapperspb.String("B")}
	bCustom := outItem{target: &actor.PID{Id: "b"}, msg: &wireTestMsg{Data: []byte("B")}}
	c := outItem{target: &actor.PID{Id: "c"}, msg: wrapperspb.UInt64(7)}

	encode := func(items ...outItem) []byte {
		enc := batchEncoder{r: r}
		for _, it := range items {
			mustAdd(t, &enc, it)
		}
		return bytes.Clone(enc.finish(5, 6))
	}
	onlyA := encode(a)
	aThenC := encode(a, c)

	for name, b := range map[string]outItem{"new type": bNew, "known type": bSame, "custom serializer": bCustom} {
		enc := batchEncoder{r: r}
		mustAdd(t, &enc, a)
		m := enc.mark()
		mustAdd(t, &enc, b)
		if enc.n != 2 {
			t.Fatalf("%s: %d envelopes after two adds", name, enc.n)
		}
		enc.rollback(m)
		if enc.n != 1 || len(enc.names) != 1 || len(enc.types) != 1 {
			t.Fatalf("%s: after rollback %d envelopes, names %q, types %v", name, enc.n, enc.names, enc.types)
		}
		if got := enc.finish(5, 6); !bytes.Equal(got, onlyA) {
			t.Fatalf("%s: after rollback\n got %x\nwant %x", name, got, onlyA)
		}

		// The encoder goes on as if B had never been added: C's type gets
		// the index B's had.
		enc.reset()
		mustAdd(t, &enc, a)
		m = enc.mark()
		mustAdd(t, &enc, b)
		enc.rollback(m)
		mustAdd(t, &enc, c)
		if got := enc.finish(5, 6); !bytes.Equal(got, aThenC) {
			t.Fatalf("%s: A, rolled back B, C\n got %x\nwant %x", name, got, aThenC)
		}
	}
}

// A serializer that panics in the middle of a batch fails its message
// alone: it is a dead letter, its type is not in the batch's table, and
// the messages before and after it ride the same batch.
func TestRemoteWirePanicMidBatch(t *testing.T) {
	r := newWireTestRemote()
	r.system = actor.NewActorSystem()
	p := &remotePeer{r: r}
	items := []outItem{
		{target: &actor.PID{Id: "a"}, msg: wrapperspb.String("before")},
		{target: &actor.PID{Id: "a"}, msg: &wireTestMsg{Data: []byte("x"), panic: true}},
		{target: &actor.PID{Id: "a"}, msg: wrapperspb.String("after")},
		{target: &actor.PID{Id: "a"}, msg: &wireTestMsg{Data: []byte("y")}},
	}
	enc := batchEncoder{r: r}
	batch, rest := p.encodeBatch(&enc, items)
	if len(batch) != 3 || rest != nil {
		t.Fatalf("batch of %d, rest %d; want 3 and none", len(batch), len(rest))
	}
	if n := r.ctr.dead[DeadLetterUnserializable].Load(); n != 1 {
		t.Fatalf("%d unserializable dead letters, want 1", n)
	}
	if len(enc.names) != 2 {
		t.Fatalf("type table %q, want the two types of the messages sent", enc.names)
	}
	d := &batchDecoder{r: r}
	if err := parseBatch(enc.finish(1, 0), &d.batch, 100); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, b := range d.batch.envelopes {
		var env rawEnvelope
		if err := parseEnvelope(b, &env); err != nil {
			t.Fatal(err)
		}
		msg, _, err := d.decode(&env)
		if err != nil {
			t.Fatal(err)
		}
		switch m := msg.(type) {
		case *wrapperspb.StringValue:
			got = append(got, m.Value)
		case *wireTestMsg:
			got = append(got, string(m.Data))
		}
	}
	if strings.Join(got, ",") != "before,after,y" {
		t.Fatalf("batch carries %q", got)
	}
}

// A message no serializer takes, or one its serializer fails on, is
// refused and leaves the encoder unchanged.
func TestRemoteWireAddRefused(t *testing.T) {
	r := newWireTestRemote()
	a := outItem{target: &actor.PID{Id: "a"}, msg: wrapperspb.String("A")}
	fresh := batchEncoder{r: r}
	mustAdd(t, &fresh, a)
	onlyA := bytes.Clone(fresh.finish(1, 2))

	for _, tc := range []struct {
		name        string
		msg         any
		unsupported bool
	}{
		{"plain struct", struct{ X int }{1}, true},
		{"struct pointer", &struct{ S string }{"x"}, true},
		{"nil", nil, true},
		{"invalid UTF-8 in a proto3 string", wrapperspb.String("\xff\xfe"), false},
		{"custom serializer error", &wireTestMsg{Data: []byte("x"), fail: true}, false},
	} {
		enc := batchEncoder{r: r}
		mustAdd(t, &enc, a)
		before := bytes.Clone(enc.buf)
		names := append([]string(nil), enc.names...)
		it := outItem{target: &actor.PID{Id: "b"}, sender: &actor.PID{Address: "x", Id: "y"}, msg: tc.msg, header: testHeader("k", "v")}
		err := enc.add(&it)
		if err == nil {
			t.Fatalf("%s: add succeeded", tc.name)
		}
		if errors.Is(err, ErrUnsupportedMessage) != tc.unsupported {
			t.Fatalf("%s: error %v; wraps ErrUnsupportedMessage: %v, want %v", tc.name, err, !tc.unsupported, tc.unsupported)
		}
		if tc.name == "custom serializer error" && !errors.Is(err, errWireTestRefused) {
			t.Fatalf("%s: error %v does not wrap the serializer's", tc.name, err)
		}
		if !bytes.Equal(enc.buf, before) || enc.n != 1 || !reflect.DeepEqual(enc.names, names) || len(enc.types) != 1 {
			t.Fatalf("%s: encoder changed: %d envelopes, names %q, buf %x (was %x)", tc.name, enc.n, enc.names, enc.buf, before)
		}
		if got := enc.finish(1, 2); !bytes.Equal(got, onlyA) {
			t.Fatalf("%s: frame\n got %x\nwant %x", tc.name, got, onlyA)
		}
	}
}

// decodeOne parses frame, which must hold one envelope, and decodes it.
func decodeOne(t *testing.T, r *Remote, frame []byte) (any, string, error) {
	t.Helper()
	d := &batchDecoder{r: r}
	if err := parseBatch(frame, &d.batch, 1<<30); err != nil {
		t.Fatalf("parseBatch: %v", err)
	}
	if len(d.batch.envelopes) != 1 {
		t.Fatalf("%d envelopes", len(d.batch.envelopes))
	}
	var env rawEnvelope
	if err := parseEnvelope(d.batch.envelopes[0], &env); err != nil {
		t.Fatalf("parseEnvelope: %v", err)
	}
	return d.decode(&env)
}

// Generated types decode into their Go struct, made directly; a type
// registered as a dynamic message (no generated code) decodes through its
// message type, to the same content.
func TestRemoteWireDecodeGeneratedAndDynamic(t *testing.T) {
	r := newWireTestRemote()
	str, _ := proto.Marshal(wrapperspb.String("ok"))
	frame, _ := proto.Marshal(&abcastpb.ActorBatch{Envelopes: []*abcastpb.ActorEnvelope{{TypeName: "google.protobuf.StringValue", Payload: str}}})
	msg, _, err := decodeOne(t, r, frame)
	if v, ok := msg.(*wrapperspb.StringValue); err != nil || !ok || v.Value != "ok" {
		t.Fatalf("generated type: %#v, %v", msg, err)
	}
	desc := (&wrapperspb.StringValue{}).ProtoReflect().Descriptor()
	r.types.add(dynamicpb.NewMessage(desc)) // replaces the generated registration
	msg, _, err = decodeOne(t, r, frame)
	dm, ok := msg.(*dynamicpb.Message)
	if err != nil || !ok || dm.Get(desc.Fields().ByName("value")).String() != "ok" {
		t.Fatalf("dynamic type: %#v, %v", msg, err)
	}
}

func TestRemoteWireDecodeErrors(t *testing.T) {
	r := newWireTestRemote()
	str, _ := proto.Marshal(wrapperspb.String("ok"))
	const strType = "google.protobuf.StringValue"
	for _, tc := range []struct {
		name    string
		batch   *abcastpb.ActorBatch
		unknown bool // wraps ErrUnknownMessageType; else another error
		wantOK  bool
	}{
		{"control: by name", &abcastpb.ActorBatch{Envelopes: []*abcastpb.ActorEnvelope{{TypeName: strType, Payload: str}}}, false, true},
		{"control: by index", &abcastpb.ActorBatch{TypeNames: []string{"x.Y", strType}, Envelopes: []*abcastpb.ActorEnvelope{{TypeIndex: 2, Payload: str}}}, false, true},
		{"control: custom serializer", &abcastpb.ActorBatch{Envelopes: []*abcastpb.ActorEnvelope{{SerializerId: wireTestSerID, TypeName: wireTestTypeName, Payload: []byte("x")}}}, false, true},
		{"type index past the table", &abcastpb.ActorBatch{TypeNames: []string{strType}, Envelopes: []*abcastpb.ActorEnvelope{{TypeIndex: 2, Payload: str}}}, true, false},
		{"type index without a table", &abcastpb.ActorBatch{Envelopes: []*abcastpb.ActorEnvelope{{TypeIndex: 1, TypeName: strType, Payload: str}}}, true, false},
		{"huge type index", &abcastpb.ActorBatch{TypeNames: []string{strType}, Envelopes: []*abcastpb.ActorEnvelope{{TypeIndex: math.MaxUint32, Payload: str}}}, true, false},
		{"unknown type name", &abcastpb.ActorBatch{Envelopes: []*abcastpb.ActorEnvelope{{TypeName: "no.such.Type", Payload: str}}}, true, false},
		{"unknown type name by index", &abcastpb.ActorBatch{TypeNames: []string{"no.such.Type"}, Envelopes: []*abcastpb.ActorEnvelope{{TypeIndex: 1, Payload: str}}}, true, false},
		{"invalid type name", &abcastpb.ActorBatch{Envelopes: []*abcastpb.ActorEnvelope{{TypeName: "not a name!", Payload: str}}}, true, false},
		{"no type name", &abcastpb.ActorBatch{Envelopes: []*abcastpb.ActorEnvelope{{Payload: str}}}, true, false},
		{"bad payload", &abcastpb.ActorBatch{Envelopes: []*abcastpb.ActorEnvelope{{TypeName: strType, Payload: []byte{0xff}}}}, false, false},
		{"truncated payload", &abcastpb.ActorBatch{Envelopes: []*abcastpb.ActorEnvelope{{TypeName: strType, Payload: str[:len(str)-1]}}}, false, false},
		{"invalid UTF-8 in payload string", &abcastpb.ActorBatch{Envelopes: []*abcastpb.ActorEnvelope{{TypeName: strType, Payload: []byte{0x0a, 0x01, 0xff}}}}, false, false},
		{"unknown serializer id", &abcastpb.ActorBatch{Envelopes: []*abcastpb.ActorEnvelope{{SerializerId: 42, TypeName: strType, Payload: str}}}, false, false},
		{"custom serializer, unknown type", &abcastpb.ActorBatch{Envelopes: []*abcastpb.ActorEnvelope{{SerializerId: wireTestSerID, TypeName: "other", Payload: str}}}, true, false},
		{"custom serializer returns no message", &abcastpb.ActorBatch{Envelopes: []*abcastpb.ActorEnvelope{{SerializerId: wireTestSerID, TypeName: wireTestNilType}}}, false, false},
	} {
		frame, err := proto.Marshal(tc.batch)
		if err != nil {
			t.Fatal(err)
		}
		msg, _, err := decodeOne(t, r, frame)
		if tc.wantOK {
			if err != nil || msg == nil {
				t.Fatalf("%s: %v, %v", tc.name, msg, err)
			}
			continue
		}
		if err == nil || msg != nil {
			t.Fatalf("%s: decoded to %v, error %v", tc.name, msg, err)
		}
		if errors.Is(err, ErrUnknownMessageType) != tc.unknown {
			t.Fatalf("%s: error %q; wraps ErrUnknownMessageType: %v, want %v", tc.name, err, !tc.unknown, tc.unknown)
		}
	}
}

// A type decodes the same on every envelope of a batch, by index or by
// name; a bad payload of it is an error for that envelope only.
func TestRemoteWireDecodeSameType(t *testing.T) {
	r := newWireTestRemote()
	const strType = "google.protobuf.StringValue"
	one, _ := proto.Marshal(wrapperspb.String("one"))
	frame, _ := proto.Marshal(&abcastpb.ActorBatch{TypeNames: []string{strType}, Envelopes: []*abcastpb.ActorEnvelope{
		{TypeIndex: 1, Payload: one},
		{TypeName: strType, Payload: []byte{0xff}},
		{TypeIndex: 1},
	}})
	d := &batchDecoder{r: r}
	if err := parseBatch(frame, &d.batch, 1<<30); err != nil {
		t.Fatal(err)
	}
	var got []any
	for i, e := range d.batch.envelopes {
		var env rawEnvelope
		if err := parseEnvelope(e, &env); err != nil {
			t.Fatal(err)
		}
		msg, _, err := d.decode(&env)
		if (err == nil) != (i != 1) {
			t.Fatalf("envelope %d: %v, %v", i, msg, err)
		}
		got = append(got, msg)
	}
	if !proto.Equal(got[0].(proto.Message), wrapperspb.String("one")) || !proto.Equal(got[2].(proto.Message), wrapperspb.String("")) {
		t.Fatalf("decoded %v", got)
	}
	if got[0] == got[2] {
		t.Fatal("decoded envelopes share a message")
	}
}

// Framing: unknown fields are skipped at every level, as protobuf does; a
// known field with the wrong wire type is an error naming the wire type
// (protobuf would keep it as an unknown field); truncation is an error.
func TestRemoteWireParse(t *testing.T) {
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
	group := func(b []byte, num protowire.Number) []byte {
		b = tag(b, num, protowire.StartGroupType)
		b = vint(b, 1, 5)
		return tag(b, num, protowire.EndGroupType)
	}

	// Unknown fields everywhere, repeated scalars (last wins).
	entry := str(str(vint(group(nil, 7), 3, 1), 1, "k"), 2, "v")
	env := str(nil, fEnvTargetID, "first")
	env = group(env, 12)
	env = str(env, fEnvTargetID, "t")
	env = vint(env, fEnvTargetReq, 7)
	env = vint(env, 99, 1)
	env = sub(env, fEnvHeader, entry)
	env = sub(env, fEnvHeader, str(str(nil, 1, "k"), 2, "w")) // same key again: last wins
	env = protowire.AppendFixed32(tag(env, 13, protowire.Fixed32Type), 1)
	env = vint(env, fEnvSerializer, uint64(math.MaxUint64)) // -1
	env = vint(env, fEnvSystem, 2)
	frame := vint(nil, fBatchEpoch, 1)
	frame = group(frame, 5)
	frame = sub(frame, fBatchEnvelope, env)
	frame = protowire.AppendFixed64(tag(frame, 6, protowire.Fixed64Type), 1)
	frame = vint(frame, fBatchEpoch, 9)
	frame = vint(frame, fBatchSeq, 4)
	frame = str(frame, fBatchTypeNames, "a.B")

	var b rawBatch
	if err := parseBatch(frame, &b, 1<<30); err != nil {
		t.Fatal(err)
	}
	var e rawEnvelope
	if err := parseEnvelope(b.envelopes[0], &e); err != nil {
		t.Fatal(err)
	}
	var pb abcastpb.ActorBatch
	if err := proto.Unmarshal(frame, &pb); err != nil {
		t.Fatal(err)
	}
	p := pb.Envelopes[0]
	if b.epoch != 9 || b.seq != 4 || len(b.typeNames) != 1 || string(b.typeNames[0]) != "a.B" || len(b.envelopes) != 1 ||
		string(e.targetID) != "t" || e.targetReq != 7 || e.serializer != -1 || !e.system || !sameHeader(e.header, map[string]string{"k": "w"}) {
		t.Fatalf("parsed %+v, %+v", b, e)
	}
	if p.TargetId != string(e.targetID) || p.SerializerId != e.serializer || p.System != e.system || !sameHeader(p.Header, e.header) || pb.Epoch != b.epoch {
		t.Fatalf("protobuf disagrees: %v", &pb)
	}

	// Parsing reuses into, resetting what the last frame set.
	if err := parseBatch(vint(nil, fBatchSeq, 1), &b, 1<<30); err != nil || b.epoch != 0 || b.seq != 1 || len(b.envelopes) != 0 || len(b.typeNames) != 0 {
		t.Fatalf("reused rawBatch: %+v, %v", b, err)
	}
	if err := parseEnvelope(nil, &e); err != nil || e.header != nil || e.targetID != nil || e.system {
		t.Fatalf("reused rawEnvelope: %+v, %v", e, err)
	}

	okEnv := str(nil, fEnvTargetID, "t")
	okEnv = okEnv[:len(okEnv):len(okEnv)] // cases append to it
	for _, tc := range []struct {
		name      string
		frame     []byte
		wireType  bool // the error names a wrong wire type, and protobuf accepts the frame
		protoFail bool // protobuf refuses it too
	}{
		{"envelope as varint", vint(nil, fBatchEnvelope, 1), true, false},
		{"epoch as bytes", str(nil, fBatchEpoch, "x"), true, false},
		{"seq as fixed64", protowire.AppendFixed64(tag(nil, fBatchSeq, protowire.Fixed64Type), 1), true, false},
		{"type name as varint", vint(nil, fBatchTypeNames, 1), true, false},
		{"target id as varint", sub(nil, fBatchEnvelope, vint(nil, fEnvTargetID, 1)), true, false},
		{"payload as fixed32", sub(nil, fBatchEnvelope, protowire.AppendFixed32(tag(okEnv, fEnvPayload, protowire.Fixed32Type), 1)), true, false},
		{"system as bytes", sub(nil, fBatchEnvelope, str(okEnv, fEnvSystem, "x")), true, false},
		{"type index as group", sub(nil, fBatchEnvelope, tag(tag(nil, fEnvTypeIndex, protowire.StartGroupType), fEnvTypeIndex, protowire.EndGroupType)), true, false},
		{"header as varint", sub(nil, fBatchEnvelope, vint(nil, fEnvHeader, 1)), true, false},
		{"header key as varint", sub(nil, fBatchEnvelope, sub(nil, fEnvHeader, vint(nil, fHeaderEntryKey, 1))), true, false},
		{"header value as fixed64", sub(nil, fBatchEnvelope, sub(nil, fEnvHeader, protowire.AppendFixed64(tag(nil, fHeaderEntryVal, protowire.Fixed64Type), 1))), true, false},
		{"truncated envelope", sub(nil, fBatchEnvelope, okEnv)[:len(okEnv)], false, true},
		{"truncated varint", []byte{0x10, 0x80}, false, true},
		{"truncated tag", []byte{0x80}, false, true},
		{"field number 0", []byte{0x00, 0x01}, false, true},
		{"stray end group", tag(nil, 9, protowire.EndGroupType), false, true},
		{"truncated field in envelope", sub(nil, fBatchEnvelope, []byte{0x10, 0x80}), false, true},
		// Field numbers above protowire.MaxValidNumber (2^29-1) are not
		// valid protobuf: proto.Unmarshal refuses them in a message's own
		// fields (protowire.ConsumeTag takes up to 2^31-1).
		{"field number 2^29 in the batch", vint(nil, protowire.MaxValidNumber+1, 0), false, true},
		{"field number 2^31-1 in an envelope", sub(nil, fBatchEnvelope, vint(nil, math.MaxInt32, 0)), false, true},
		{"field number 2^29 in a header entry", sub(nil, fBatchEnvelope, sub(nil, fEnvHeader, vint(nil, protowire.MaxValidNumber+1, 0))), false, true},
		{"truncated header entry", sub(nil, fBatchEnvelope, sub(nil, fEnvHeader, []byte{0x0a, 0x05, 'k'})), false, true},
	} {
		if perr := proto.Unmarshal(tc.frame, &pb); (perr != nil) != tc.protoFail {
			t.Errorf("%s: protobuf says %v", tc.name, perr)
		}
		err := parseBatch(tc.frame, &b, 1<<30)
		for i := 0; err == nil && i < len(b.envelopes); i++ {
			err = parseEnvelope(b.envelopes[i], &e)
		}
		if !errors.Is(err, errBadBatch) {
			t.Errorf("%s: error %v, want errBadBatch", tc.name, err)
			continue
		}
		if got := strings.Contains(err.Error(), "wire type"); got != tc.wireType {
			t.Errorf("%s: error %q; names the wire type: %v, want %v", tc.name, err, got, tc.wireType)
		}
	}
}
