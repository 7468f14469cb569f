package quicremote

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/runtime/protoiface"
)

// The remote encodes and decodes ActorBatch (proto/abcast_remote.proto)
// by hand: messages are appended straight into the batch buffer on the
// peer's send loop, and incoming batches are walked in place, so neither
// side builds an ActorEnvelope per message. The bytes are ordinary
// protobuf; FuzzDecodeActorBatch checks the decoder against proto.Unmarshal.

// Field numbers of ActorBatch and ActorEnvelope.
const (
	fBatchEnvelope  = 1
	fBatchEpoch     = 2
	fBatchSeq       = 3
	fBatchTypeNames = 4

	fEnvTargetID     = 1
	fEnvTargetReq    = 2
	fEnvSenderAddr   = 3
	fEnvSenderID     = 4
	fEnvSenderReq    = 5
	fEnvSerializer   = 6
	fEnvTypeName     = 7
	fEnvPayload      = 8
	fEnvSystem       = 9
	fEnvHeader       = 10
	fEnvTypeIndex    = 11
	fHeaderEntryKey  = 1
	fHeaderEntryVal  = 2
	maxBatchTypes    = 1 << 16 // type names one batch may declare
	envelopeOverhead = 1 + 5   // tag and length prefix of one envelope, at most (< 4 GiB)
)

// batchEncoder builds one batch frame. It is owned by a peer's send loop
// and reused from batch to batch.
type batchEncoder struct {
	r       *Remote
	buf     []byte
	payload []byte            // scratch for a payload from a serializer other than protobuf
	types   map[string]uint32 // type name -> 1-based index in this batch
	names   []string
	table   int // bytes finish will add for names
	n       int // envelopes in buf
	// The type added last and its index: a batch is mostly a few types,
	// and the descriptor's name is the same string every time, so the
	// comparison is a pointer check.
	lastName string
	lastIdx  uint32
}

// frameSize is the size of the frame finish would return now.
func (e *batchEncoder) frameSize() int { return len(e.buf) + e.table + batchTagsSize }

func (e *batchEncoder) reset() {
	e.buf = e.buf[:0]
	clear(e.types)
	e.names = e.names[:0]
	e.table = 0
	e.n = 0
	e.lastName, e.lastIdx = "", 0
}

// payloadOf is how an outgoing message's payload is made: a protobuf
// message left to the built-in serializer is marshalled straight into the
// frame once its size is known (pm, size); any other serializer's output
// is in the encoder's scratch (e.payload).
type payloadOf struct {
	ser  int32
	name string
	pm   proto.Message
	size int
}

// Sizes are computed once per message: Size caches them in the message,
// and marshalling then reuses them.
var marshalCached = proto.MarshalOptions{UseCachedSize: true}

// serialize finds the first serializer that takes msg and, for any but
// the built-in protobuf one, serializes it into e.payload. (A serializer
// may panic: the caller of add recovers, see encodeFrom.)
func (e *batchEncoder) serialize(msg any) (payloadOf, error) {
	for _, s := range e.r.sers {
		if _, builtin := s.(protoSerializer); builtin {
			m, ok := msg.(proto.Message)
			if !ok {
				break
			}
			return payloadOf{ser: protoSerializerID, name: string(m.ProtoReflect().Descriptor().FullName()), pm: m, size: proto.Size(m)}, nil
		}
		name, data, err := s.Serialize(msg)
		if errors.Is(err, ErrUnsupportedMessage) {
			continue
		}
		if err == nil {
			e.payload = append(e.payload[:0], data...)
		}
		return payloadOf{ser: s.ID(), name: name, size: len(e.payload)}, err
	}
	return payloadOf{}, fmt.Errorf("%w: %T", ErrUnsupportedMessage, msg)
}

// appendPayload appends p's bytes (tag and length included) to b.
func (e *batchEncoder) appendPayload(b []byte, p *payloadOf) ([]byte, error) {
	if p.size == 0 {
		return b, nil
	}
	b = protowire.AppendTag(b, fEnvPayload, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(p.size))
	if p.pm == nil {
		return append(b, e.payload...), nil
	}
	at := len(b)
	b, err := marshalCached.MarshalAppend(b, p.pm)
	if err != nil {
		return nil, err
	}
	if len(b)-at != p.size {
		// The message was changed after it was sent.
		return nil, fmt.Errorf("%s changed while being encoded (%d bytes, then %d)", p.name, p.size, len(b)-at)
	}
	return b, nil
}

// index returns the type's 1-based index in the batch's type table,
// adding it, or 0 once the table is full (the name then travels in the
// envelope).
func (e *batchEncoder) index(typeName string) uint32 {
	if typeName == e.lastName && e.lastIdx != 0 {
		return e.lastIdx
	}
	if e.types == nil {
		e.types = make(map[string]uint32)
	}
	idx, ok := e.types[typeName]
	if !ok && len(e.names) < maxBatchTypes {
		e.names = append(e.names, typeName)
		idx = uint32(len(e.names))
		e.types[typeName] = idx
		e.table += sizeString(fBatchTypeNames, typeName)
	}
	e.lastName, e.lastIdx = typeName, idx
	return idx
}

// add appends it as one envelope. On error nothing was appended; if a
// serializer panics, the caller undoes what was (encodeFrom).
func (e *batchEncoder) add(it *outItem) error {
	r := e.r
	p, err := e.serialize(it.msg)
	if err != nil {
		return err
	}
	mark := e.mark()
	idx := e.index(p.name)
	var senderAddr, senderID string
	var senderReq uint32
	s := it.sender
	if it.alias != nil {
		s = it.alias.pid
	}
	if s != nil && s.Id != "" {
		if s.Address != r.addr && s.Address != protoactorLocalAddress {
			senderAddr = s.Address
		}
		senderID, senderReq = s.Id, s.RequestId
	}
	var header map[string]string
	if it.header != nil && it.header.Length() > 0 {
		header = it.header.ToMap()
	}

	size := sizeString(fEnvTargetID, it.target.Id) + sizeVarint(fEnvTargetReq, uint64(it.target.RequestId)) +
		sizeString(fEnvSenderAddr, senderAddr) + sizeString(fEnvSenderID, senderID) +
		sizeVarint(fEnvSenderReq, uint64(senderReq)) + sizeVarint(fEnvSerializer, uint64(int64(p.ser))) +
		sizeBytes(fEnvPayload, p.size) + sizeVarint(fEnvSystem, b2u(it.system))
	if idx != 0 {
		size += sizeVarint(fEnvTypeIndex, uint64(idx))
	} else {
		size += sizeString(fEnvTypeName, p.name)
	}
	for k, v := range header {
		size += sizeBytes(fEnvHeader, headerEntrySize(k, v))
	}

	b := protowire.AppendTag(e.buf, fBatchEnvelope, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(size))
	b = appendString(b, fEnvTargetID, it.target.Id)
	b = appendVarint(b, fEnvTargetReq, uint64(it.target.RequestId))
	b = appendString(b, fEnvSenderAddr, senderAddr)
	b = appendString(b, fEnvSenderID, senderID)
	b = appendVarint(b, fEnvSenderReq, uint64(senderReq))
	b = appendVarint(b, fEnvSerializer, uint64(int64(p.ser)))
	if idx == 0 {
		b = appendString(b, fEnvTypeName, p.name)
	}
	if b, err = e.appendPayload(b, &p); err != nil {
		e.undo(mark)
		return err
	}
	b = appendVarint(b, fEnvSystem, b2u(it.system))
	for k, v := range header {
		b = protowire.AppendTag(b, fEnvHeader, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(headerEntrySize(k, v)))
		b = protowire.AppendTag(b, fHeaderEntryKey, protowire.BytesType)
		b = protowire.AppendString(b, k)
		b = protowire.AppendTag(b, fHeaderEntryVal, protowire.BytesType)
		b = protowire.AppendString(b, v)
	}
	if idx != 0 {
		b = appendVarint(b, fEnvTypeIndex, uint64(idx))
	}
	e.buf = b
	e.n++
	return nil
}

// encMark is the encoder's state before an add, for rollback.
type encMark struct{ buf, names, table int }

func (e *batchEncoder) mark() encMark { return encMark{len(e.buf), len(e.names), e.table} }

// rollback undoes the add made since m.
func (e *batchEncoder) rollback(m encMark) {
	e.undo(m)
	e.n--
}

// undo takes back the type names and bytes added since m.
func (e *batchEncoder) undo(m encMark) {
	e.buf = e.buf[:m.buf]
	for _, name := range e.names[m.names:] {
		delete(e.types, name)
	}
	e.names = e.names[:m.names]
	e.table = m.table
	e.lastName, e.lastIdx = "", 0
}

// finish appends the type table and the ordering tags and returns the
// frame.
func (e *batchEncoder) finish(epoch, seq uint64) []byte {
	b := e.buf
	for _, name := range e.names {
		b = protowire.AppendTag(b, fBatchTypeNames, protowire.BytesType)
		b = protowire.AppendString(b, name)
	}
	b = appendBatchTags(b, epoch, seq)
	e.buf = b
	return b
}

// batchTagsSize bounds what appendBatchTags adds.
const batchTagsSize = 2 * (1 + 10)

// appendBatchTags appends ActorBatch's epoch and seq fields.
func appendBatchTags(b []byte, epoch, seq uint64) []byte {
	b = appendVarintField(b, fBatchEpoch, epoch)
	return appendVarintField(b, fBatchSeq, seq)
}

// appendVarintField appends a varint field even when it is zero.
func appendVarintField(b []byte, num protowire.Number, v uint64) []byte {
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

func headerEntrySize(k, v string) int {
	return protowire.SizeTag(1) + protowire.SizeBytes(len(k)) + protowire.SizeTag(2) + protowire.SizeBytes(len(v))
}

// Field helpers for proto3 implicit presence: zero values are omitted.
func sizeString(num protowire.Number, s string) int {
	if s == "" {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeBytes(len(s))
}

func sizeBytes(num protowire.Number, n int) int {
	if n == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeBytes(n)
}

func sizeVarint(num protowire.Number, v uint64) int {
	if v == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeVarint(v)
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendVarint(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	return appendVarintField(b, num, v)
}

func b2u(v bool) uint64 {
	if v {
		return 1
	}
	return 0
}

// ---- decoding ----

var errBadBatch = errors.New("malformed actor batch")

// rawBatch is an incoming batch frame, checked and split but not decoded:
// envelopes and type names alias the frame.
type rawBatch struct {
	epoch, seq uint64
	envelopes  [][]byte
	typeNames  [][]byte
}

// parseBatch checks the batch's framing and splits it. Unknown fields are
// skipped, as protobuf does; a known field with the wrong wire type is an
// error.
//
// maxEnvelopes bounds the envelopes (and type names) one batch may carry:
// decoding keeps per-envelope state, so a frame of empty envelopes would
// otherwise cost far more memory than its bytes (which the transport
// charges to the peer's budget).
func parseBatch(frame []byte, into *rawBatch, maxEnvelopes int) error {
	into.epoch, into.seq = 0, 0
	into.envelopes = into.envelopes[:0]
	into.typeNames = into.typeNames[:0]
	for b := frame; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("%w: %v", errBadBatch, protowire.ParseError(n))
		}
		if num > protowire.MaxValidNumber {
			return fmt.Errorf("%w: field number %d out of range", errBadBatch, num)
		}
		b = b[n:]
		switch {
		case num == fBatchEnvelope && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return fmt.Errorf("%w: envelope: %v", errBadBatch, protowire.ParseError(n))
			}
			if len(into.envelopes) >= maxEnvelopes {
				return fmt.Errorf("%w: more than %d envelopes", errBadBatch, maxEnvelopes)
			}
			into.envelopes = append(into.envelopes, v)
			b = b[n:]
		case num == fBatchTypeNames && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return fmt.Errorf("%w: type name: %v", errBadBatch, protowire.ParseError(n))
			}
			if len(into.typeNames) >= maxEnvelopes {
				return fmt.Errorf("%w: more than %d type names", errBadBatch, maxEnvelopes)
			}
			into.typeNames = append(into.typeNames, v)
			b = b[n:]
		case (num == fBatchEpoch || num == fBatchSeq) && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return fmt.Errorf("%w: %v", errBadBatch, protowire.ParseError(n))
			}
			if num == fBatchEpoch {
				into.epoch = v
			} else {
				into.seq = v
			}
			b = b[n:]
		case num >= fBatchEnvelope && num <= fBatchTypeNames:
			return fmt.Errorf("%w: field %d with wire type %d", errBadBatch, num, typ)
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return fmt.Errorf("%w: %v", errBadBatch, protowire.ParseError(n))
			}
			b = b[n:]
		}
	}
	return nil
}

// rawEnvelope is one decoded envelope; byte fields alias the frame.
type rawEnvelope struct {
	targetID, senderAddr, senderID, typeName, payload []byte
	targetReq, senderReq, typeIndex                   uint32
	serializer                                        int32
	system                                            bool
	header                                            map[string]string
}

// parseEnvelope decodes one envelope (last value wins for repeated scalar
// fields, as in protobuf).
func parseEnvelope(b []byte, env *rawEnvelope) error {
	*env = rawEnvelope{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("%w: envelope: %v", errBadBatch, protowire.ParseError(n))
		}
		if num > protowire.MaxValidNumber {
			return fmt.Errorf("%w: envelope field number %d out of range", errBadBatch, num)
		}
		b = b[n:]
		var want protowire.Type
		switch num {
		case fEnvTargetID, fEnvSenderAddr, fEnvSenderID, fEnvTypeName, fEnvPayload, fEnvHeader:
			want = protowire.BytesType
		case fEnvTargetReq, fEnvSenderReq, fEnvSerializer, fEnvSystem, fEnvTypeIndex:
			want = protowire.VarintType
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return fmt.Errorf("%w: envelope: %v", errBadBatch, protowire.ParseError(n))
			}
			b = b[n:]
			continue
		}
		if typ != want {
			return fmt.Errorf("%w: envelope field %d with wire type %d", errBadBatch, num, typ)
		}
		if want == protowire.VarintType {
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return fmt.Errorf("%w: envelope: %v", errBadBatch, protowire.ParseError(n))
			}
			b = b[n:]
			switch num {
			case fEnvTargetReq:
				env.targetReq = uint32(v)
			case fEnvSenderReq:
				env.senderReq = uint32(v)
			case fEnvSerializer:
				env.serializer = int32(v)
			case fEnvSystem:
				env.system = v != 0
			case fEnvTypeIndex:
				env.typeIndex = uint32(v)
			}
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return fmt.Errorf("%w: envelope: %v", errBadBatch, protowire.ParseError(n))
		}
		b = b[n:]
		switch num {
		case fEnvTargetID:
			env.targetID = v
		case fEnvSenderAddr:
			env.senderAddr = v
		case fEnvSenderID:
			env.senderID = v
		case fEnvTypeName:
			env.typeName = v
		case fEnvPayload:
			env.payload = v
		case fEnvHeader:
			k, val, err := parseHeaderEntry(v)
			if err != nil {
				return err
			}
			if env.header == nil {
				env.header = make(map[string]string)
			}
			env.header[k] = val
		}
	}
	return nil
}

func parseHeaderEntry(b []byte) (string, string, error) {
	var k, v []byte
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return "", "", fmt.Errorf("%w: header: %v", errBadBatch, protowire.ParseError(n))
		}
		if num > protowire.MaxValidNumber {
			return "", "", fmt.Errorf("%w: header field number %d out of range", errBadBatch, num)
		}
		b = b[n:]
		if (num == fHeaderEntryKey || num == fHeaderEntryVal) && typ == protowire.BytesType {
			s, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return "", "", fmt.Errorf("%w: header: %v", errBadBatch, protowire.ParseError(n))
			}
			b = b[n:]
			if num == fHeaderEntryKey {
				k = s
			} else {
				v = s
			}
			continue
		}
		if num == fHeaderEntryKey || num == fHeaderEntryVal {
			return "", "", fmt.Errorf("%w: header field %d with wire type %d", errBadBatch, num, typ)
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return "", "", fmt.Errorf("%w: header: %v", errBadBatch, protowire.ParseError(n))
		}
		b = b[n:]
	}
	return string(k), string(v), nil
}

// batchDecoder turns the envelopes of one incoming stream into messages.
// It remembers the targets (targetTable), so a stream of messages to one
// actor builds one PID and looks the actor up once.
type batchDecoder struct {
	r       *Remote
	batch   rawBatch
	envs    []rawEnvelope
	targets targetTable
	// The type looked up last: a batch's messages are mostly of a few
	// types. Registered types are never removed, so it stays valid.
	lastName []byte
	lastInfo *typeInfo
}

// typeName resolves the envelope's type name against the batch's table.
func (d *batchDecoder) typeName(env *rawEnvelope) ([]byte, error) {
	if env.typeIndex == 0 {
		return env.typeName, nil
	}
	if int(env.typeIndex) > len(d.batch.typeNames) {
		return nil, fmt.Errorf("%w: type index %d of %d", ErrUnknownMessageType, env.typeIndex, len(d.batch.typeNames))
	}
	return d.batch.typeNames[env.typeIndex-1], nil
}

// decodePlan says how an envelope's payload decodes and what the decoded
// message will hold (cost, in bytes, an estimate).
type decodePlan struct {
	name []byte
	mt   protoreflect.MessageType // a protobuf type peers may send, or
	ti   *typeInfo                // (its registration)
	ser  Serializer               // another serializer
	cost int
}

// plan checks that the envelope's payload may be decoded, and within the
// limits (Config.MaxDecodedBytes, MaxDecodedElements), before anything is
// allocated for it. Errors wrap ErrUnknownMessageType (a type peers may not
// send, an unknown serializer), errDecodeLimit, or say the payload is
// malformed.
func (d *batchDecoder) plan(env *rawEnvelope) (decodePlan, error) {
	name, err := d.typeName(env)
	if err != nil {
		return decodePlan{}, err
	}
	p := decodePlan{name: name}
	cfg := &d.r.cfg
	if env.serializer == protoSerializerID {
		ti := d.lastInfo
		if ti == nil || !bytes.Equal(name, d.lastName) {
			if ti = d.r.types.lookupBytes(name); ti == nil {
				return p, fmt.Errorf("%w: %q is not a type peers may send", ErrUnknownMessageType, name)
			}
			d.lastName, d.lastInfo = append(d.lastName[:0], name...), ti
		}
		p.mt, p.ti = ti.mt, ti
		if ti.flat {
			p.cost = ti.flatCost(len(env.payload))
			if p.cost > cfg.MaxDecodedBytes {
				return p, fmt.Errorf("quicremote: decoding %s: %w: about %d bytes, MaxDecodedBytes %d", name, errDecodeLimit, p.cost, cfg.MaxDecodedBytes)
			}
			return p, nil
		}
		c, err := scanCost(p.mt.Descriptor(), env.payload, cfg.MaxDecodedBytes, cfg.MaxDecodedElements, d.r.types.sizes())
		if err != nil {
			return p, fmt.Errorf("quicremote: decoding %s: %w", name, err)
		}
		p.cost = c.bytes
		return p, nil
	}
	if p.ser = d.r.serByID[env.serializer]; p.ser == nil {
		return p, fmt.Errorf("unknown serializer id %d", env.serializer)
	}
	// Other serializers bound their own decoding (see Serializer); the
	// copy handed to them and what they make of it are estimated.
	p.cost = 2*len(env.payload) + 256
	if e, ok := p.ser.(decodeEstimator); ok {
		if p.cost, err = e.estimateDecoded(string(name), env.payload); err != nil {
			return p, err
		}
	}
	if p.cost > cfg.MaxDecodedBytes {
		return p, fmt.Errorf("%w: about %d bytes decoded, MaxDecodedBytes %d", errDecodeLimit, p.cost, cfg.MaxDecodedBytes)
	}
	return p, nil
}

// decodeEstimator is a Serializer that can say what decoding will cost.
type decodeEstimator interface {
	estimateDecoded(typeName string, data []byte) (int, error)
}

// finish decodes the payload as planned.
func (d *batchDecoder) finish(p *decodePlan, env *rawEnvelope) (any, error) {
	if p.mt != nil {
		// Into a new message: merging skips the reset Unmarshal would do.
		var m proto.Message
		if t := p.ti.goType; t != nil {
			m = reflect.New(t).Interface().(proto.Message)
		} else {
			m = p.mt.New().Interface()
		}
		if _, err := unmarshalFresh.UnmarshalState(protoiface.UnmarshalInput{Message: m.ProtoReflect(), Buf: env.payload}); err != nil {
			return nil, fmt.Errorf("quicremote: decoding %s: %w", p.name, err)
		}
		return m, nil
	}
	// A custom serializer may keep what it is given; hand it its own copy.
	msg, err := p.ser.Deserialize(string(p.name), bytes.Clone(env.payload))
	if err == nil && msg == nil {
		err = errors.New("serializer returned no message")
	}
	return msg, err
}

// decode plans and decodes the envelope's message, charging nothing (the
// remote's delivery charges the plan's cost between the two).
func (d *batchDecoder) decode(env *rawEnvelope) (any, string, error) {
	p, err := d.plan(env)
	if err != nil {
		return nil, string(p.name), err
	}
	msg, err := d.finish(&p, env)
	return msg, string(p.name), err
}

// release forgets the batch just handled, so that nothing keeps its frame
// alive once the transport has handed the frame's bytes back to the
// peer's budget. Entries past the lengths were cleared by an earlier
// release.
func (d *batchDecoder) release() {
	clear(d.envs)
	d.envs = d.envs[:0]
	clear(d.batch.envelopes)
	d.batch.envelopes = d.batch.envelopes[:0]
	clear(d.batch.typeNames)
	d.batch.typeNames = d.batch.typeNames[:0]
}

// targetOf returns the local PID the envelope is for: the same PID for
// every envelope to that target on the stream.
func (d *batchDecoder) targetOf(env *rawEnvelope) *actor.PID { return &d.target(env).pid }

// target returns the stream's entry for the envelope's target.
func (d *batchDecoder) target(env *rawEnvelope) *targetEntry { return d.targets.entry(d.r, env) }
