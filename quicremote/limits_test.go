package quicremote

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/rand"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/abcast/abcast/proto/abcastpb"
)

// The backlog bound reads protoactor's unexported ActorProcess.mailbox: if
// an upgrade renames or retypes it, this fails (at run time the bound
// would silently be off).
func TestMailboxOfMatchesProtoactor(t *testing.T) {
	if !mailboxKnown {
		t.Fatal("actor.ActorProcess has no mailbox field of type actor.Mailbox: the backlog bound is off")
	}
	sys := actor.NewActorSystem()
	release := make(chan struct{})
	var mb actor.Mailbox
	props := actor.PropsFromFunc(func(c actor.Context) {
		if _, ok := c.Message().(string); ok {
			<-release
		}
	}, actor.WithMailbox(func() actor.Mailbox {
		mb = actor.Unbounded()()
		return mb
	}))
	pid := sys.Root.Spawn(props)
	defer close(release)
	for range 5 {
		sys.Root.Send(pid, "x")
	}
	proc, ok := sys.ProcessRegistry.GetLocal(pid.Id)
	if !ok {
		t.Fatal("actor not registered")
	}
	got := mailboxOf(proc)
	if got != mb || got.UserMessageCount() < 4 {
		t.Fatalf("mailboxOf = %v (count %d), want the actor's mailbox %v", got, got.UserMessageCount(), mb)
	}
	if mailboxOf(sys.DeadLetter) != nil {
		t.Fatal("the dead-letter process has no mailbox")
	}
}

// decodedBytes measures what proto.Unmarshal allocates for data as a new
// message like m: the least of three tries, as anything else running
// (the runtime itself) allocates too.
func decodedBytes(m proto.Message, data []byte) uint64 {
	least := uint64(1<<63 - 1)
	for range 3 {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		out := m.ProtoReflect().New().Interface()
		if err := unmarshalOpts.Unmarshal(data, out); err != nil {
			panic(err)
		}
		runtime.ReadMemStats(&after)
		runtime.KeepAlive(out)
		least = min(least, after.TotalAlloc-before.TotalAlloc)
	}
	return least
}

// scanCost's estimate covers what decoding really allocates (checked
// without the race detector, which allocates more), for shapes
// that amplify (many empty messages, map entries, repeated strings, packed
// scalars, deep nesting), without being wildly above it.
func TestScanCostCoversDecoding(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewSource(seed))
	files := &descriptorpb.FileDescriptorSet{}
	for range 2000 {
		files.File = append(files.File, &descriptorpb.FileDescriptorProto{})
	}
	header := map[string]string{}
	for i := range 500 {
		header[strings.Repeat("k", rng.Intn(20))+string(rune('a'+i%26))+string(rune(i))] = strings.Repeat("v", rng.Intn(30))
	}
	deps := &descriptorpb.FileDescriptorProto{}
	loc := &descriptorpb.SourceCodeInfo_Location{}
	for range 3000 {
		deps.Dependency = append(deps.Dependency, strings.Repeat("d", rng.Intn(10)))
		loc.Path = append(loc.Path, rng.Int31n(1<<20))
	}
	deep := &descriptorpb.DescriptorProto{Name: proto.String("leaf")}
	for range 40 {
		deep = &descriptorpb.DescriptorProto{NestedType: []*descriptorpb.DescriptorProto{deep}}
	}
	for name, m := range map[string]proto.Message{
		"empty entries": files,
		"map entries":   &abcastpb.ActorEnvelope{Header: header},
		"strings":       deps,
		"packed":        loc,
		"nested":        deep,
		"bytes":         &abcastpb.ActorEnvelope{Payload: bytes.Repeat([]byte{7}, 100000)},
	} {
		data, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		c, err := scanCost(m.ProtoReflect().Descriptor(), data, 1<<30, 1<<30, nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		real := decodedBytes(m, data)
		t.Logf("%s: %d wire bytes, %d elements, estimate %d, decoding allocated %d", name, len(data), c.elems, c.bytes, real)
		if uint64(c.bytes) < real && !raceEnabled { // the race detector allocates more

			t.Fatalf("%s: estimate %d below the %d bytes decoding allocated", name, c.bytes, real)
		}
		if uint64(c.bytes) > 4*real+4096 {
			t.Fatalf("%s: estimate %d far above the %d bytes decoding allocated", name, c.bytes, real)
		}
		if _, err := scanCost(m.ProtoReflect().Descriptor(), data, c.bytes-1, 1<<30, nil); err == nil {
			t.Fatalf("%s: a byte limit below the estimate passed", name)
		}
		if _, err := scanCost(m.ProtoReflect().Descriptor(), data, 1<<30, c.elems-1, nil); err == nil {
			t.Fatalf("%s: an element limit below the count passed", name)
		}
	}
}

// A flat type's cost, known from the payload's length alone, covers what
// decoding allocates, strings and unknown fields included.
func TestFlatCostCoversDecoding(t *testing.T) {
	str, _ := proto.Marshal(wrapperspb.String(strings.Repeat("s", 5000)))
	unknown := protowire.AppendBytes(protowire.AppendTag(nil, 9, protowire.BytesType), bytes.Repeat([]byte{1}, 7000))
	for name, tc := range map[string]struct {
		m    proto.Message
		data []byte
	}{
		"string":         {&wrapperspb.StringValue{}, str},
		"bytes":          {&wrapperspb.BytesValue{}, mustMarshalT(t, wrapperspb.Bytes(make([]byte, 100000)))},
		"unknown fields": {&wrapperspb.Int64Value{}, append(mustMarshalT(t, wrapperspb.Int64(-1)), unknown...)},
		"empty":          {&wrapperspb.BoolValue{}, nil},
	} {
		ti := newTypeInfo(tc.m.ProtoReflect().Type())
		if !ti.flat {
			t.Fatalf("%s: not flat", name)
		}
		real := decodedBytes(tc.m, tc.data)
		t.Logf("%s: %d bytes, cost %d, decoding allocated %d", name, len(tc.data), ti.flatCost(len(tc.data)), real)
		if uint64(ti.flatCost(len(tc.data))) < real && !raceEnabled {
			t.Fatalf("%s: cost %d below the %d bytes decoding allocated", name, ti.flatCost(len(tc.data)), real)
		}
	}
	if newTypeInfo((&descriptorpb.FileDescriptorSet{}).ProtoReflect().Type()).flat || newTypeInfo((&abcastpb.ActorEnvelope{}).ProtoReflect().Type()).flat {
		t.Fatal("a type with repeated or map fields is flat")
	}
}

func mustMarshalT(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzAckReader: any frame is either refused or acknowledges between 0 and
// the batches awaiting, exactly the varint it holds minus those acked
// before; no frame longer than maxAckSize is taken.
func FuzzAckReader(f *testing.F) {
	for _, seed := range [][]byte{{0}, {5}, {0x80, 0x01}, {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, {}, bytes.Repeat([]byte{0x80}, 11), {1, 0}} {
		f.Add(seed, uint64(3), uint8(4))
	}
	f.Fuzz(func(t *testing.T, frame []byte, acked uint64, unacked uint8) {
		done, err := parseAck(frame, acked, int(unacked))
		if err != nil {
			if done != 0 {
				t.Fatalf("refused with %d acknowledged", done)
			}
			return
		}
		if len(frame) > maxAckSize || len(frame) == 0 {
			t.Fatalf("took a %d-byte acknowledgement", len(frame))
		}
		var n uint64
		for i := len(frame) - 1; i >= 0; i-- {
			n = n<<7 | uint64(frame[i]&0x7f)
		}
		if done < 0 || done > int(unacked) || n != acked+uint64(done) {
			t.Fatalf("frame %x (=%d) after %d with %d awaiting: acknowledged %d", frame, n, acked, unacked, done)
		}
	})
}

// FuzzScanCost: the cost walk never panics, never calls malformed what
// protobuf decodes, and with no limits never refuses.
func FuzzScanCost(f *testing.F) {
	set := &descriptorpb.FileDescriptorSet{File: []*descriptorpb.FileDescriptorProto{{
		Name: proto.String("a"), Dependency: []string{"b", "c"},
		MessageType:    []*descriptorpb.DescriptorProto{{Name: proto.String("M"), NestedType: []*descriptorpb.DescriptorProto{{}}}},
		SourceCodeInfo: &descriptorpb.SourceCodeInfo{Location: []*descriptorpb.SourceCodeInfo_Location{{Path: []int32{1, 2, 300}}}},
	}}}
	seed, _ := proto.Marshal(set)
	env, _ := proto.Marshal(&abcastpb.ActorEnvelope{TargetId: "t", Header: map[string]string{"k": "v"}, Payload: []byte{1}})
	f.Add(seed, false)
	f.Add(env, true)
	f.Add([]byte{0x0a, 0x00, 0x0a, 0x02, 0x0a, 0x00}, false)
	f.Fuzz(func(t *testing.T, data []byte, asEnvelope bool) {
		var m proto.Message = &descriptorpb.FileDescriptorSet{}
		if asEnvelope {
			m = &abcastpb.ActorEnvelope{}
		}
		_, err := scanCost(m.ProtoReflect().Descriptor(), data, 1<<40, 1<<40, nil)
		if err == nil {
			return
		}
		if errors.Is(err, errDecodeLimit) {
			t.Fatalf("refused without limits: %v", err)
		}
		if perr := unmarshalOpts.Unmarshal(data, m); perr == nil {
			t.Fatalf("walk says %v, protobuf decodes %x", err, data)
		}
	})
}

// FuzzJSONDeserialize: any payload either decodes as encoding/json decodes
// it, or is refused (over the limits, or not JSON for the type); the value
// count never undercounts the elements a decoded slice gets.
func FuzzJSONDeserialize(f *testing.F) {
	type item struct {
		A string
		B []int
		C map[string]*item
	}
	js := NewJSONSerializer(3)
	if err := js.Register("item", &item{}); err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{`{"A":"x","B":[1,2,3],"C":{"k":{"A":"y"}}}`, `[]`, `{"A":"\"[,{"}`, `{"B":[` + strings.Repeat("0,", 100) + `0]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		msg, err := js.Deserialize("item", data)
		n, cerr := jsonValues(data)
		if cerr != nil {
			if err == nil {
				t.Fatalf("decoded past the limits: %v", cerr)
			}
			return
		}
		var want item
		werr := json.Unmarshal(data, &want)
		if (err == nil) != (werr == nil) {
			t.Fatalf("decoded %v with %v; encoding/json: %v", msg, err, werr)
		}
		if err == nil && len(msg.(*item).B) > n {
			t.Fatalf("%d elements from %d counted values", len(msg.(*item).B), n)
		}
	})
}
