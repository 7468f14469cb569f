package quicremote

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/runtime/protoimpl"

	"github.com/abcast/abcast/proto/abcastpb"
)

// What a peer may make this node decode, and where it may deliver.

// ---- accepted protobuf types ----

// builtinMessages are the protoactor messages the remote itself carries
// (watches, stops, dead-letter answers, and PIDs, a common reply) and the
// remote's own.
var builtinMessages = []proto.Message{
	&actor.Watch{}, &actor.Unwatch{}, &actor.Terminated{}, &actor.Stop{},
	&actor.PoisonPill{}, &actor.DeadLetterResponse{}, &actor.PID{},
	// The remote's own: remote spawn and dead letters with reasons.
	&abcastpb.ActorSpawnRequest{}, &abcastpb.ActorSpawnResponse{}, &abcastpb.RemoteDeadLetter{},
}

// typeRegistry is the set of protobuf types peers may send, by full name,
// with the struct size of every message type they contain (for costScan).
// Readers never lock: the maps are replaced on every change.
type typeRegistry struct {
	mu sync.Mutex
	m  atomic.Pointer[typeMaps]
}

type typeMaps struct {
	types map[string]*typeInfo
	sizes map[protoreflect.FullName]int
}

// typeInfo is one type peers may send. A flat type (no message, repeated
// or map fields) decodes to its struct plus at most its strings and
// unknown bytes, so its cost is known from the payload's length alone,
// without walking it.
type typeInfo struct {
	mt     protoreflect.MessageType
	flat   bool
	size   int // struct size
	fields int
	// goType is the struct of a generated type (nil for others, such as
	// dynamicpb's). Decoding makes the message from it directly: the
	// message type's New hands back a reflective view, and turning that
	// into the message again costs a reflective conversion per message.
	goType reflect.Type
}

// flatCost bounds what a flat type's payload of n bytes decodes to.
func (ti *typeInfo) flatCost(n int) int { return ti.size + ti.size/8 + 2*n + 8*ti.fields + 64 }

func newTypeInfo(mt protoreflect.MessageType) *typeInfo {
	md := mt.Descriptor()
	ti := &typeInfo{mt: mt, flat: true, size: structSize(md), fields: md.Fields().Len()}
	if _, generated := mt.(*protoimpl.MessageInfo); generated {
		if t := reflect.TypeOf(mt.Zero().Interface()); t.Kind() == reflect.Pointer && t.Elem().Kind() == reflect.Struct {
			ti.goType = t.Elem()
		}
	}
	for i := range ti.fields {
		if f := md.Fields().Get(i); f.Message() != nil || f.IsList() || f.IsMap() {
			ti.flat = false
		}
	}
	return ti
}

func (t *typeRegistry) init(extra []proto.Message) {
	t.add(builtinMessages...)
	t.add(extra...)
}

func (t *typeRegistry) add(msgs ...proto.Message) {
	t.mu.Lock()
	defer t.mu.Unlock()
	next := typeMaps{types: make(map[string]*typeInfo), sizes: make(map[protoreflect.FullName]int)}
	if old := t.m.Load(); old != nil {
		for k, v := range old.types {
			next.types[k] = v
		}
		for k, v := range old.sizes {
			next.sizes[k] = v
		}
	}
	for _, m := range msgs {
		if m == nil {
			continue
		}
		mt := m.ProtoReflect().Type()
		next.types[string(mt.Descriptor().FullName())] = newTypeInfo(mt)
		addSizes(mt.Descriptor(), next.sizes)
	}
	t.m.Store(&next)
}

// addSizes records the struct size of md and of every message type its
// fields contain.
func addSizes(md protoreflect.MessageDescriptor, sizes map[protoreflect.FullName]int) {
	if _, done := sizes[md.FullName()]; done {
		return
	}
	sizes[md.FullName()] = structSize(md)
	fields := md.Fields()
	for i := range fields.Len() {
		if sub := fields.Get(i).Message(); sub != nil {
			addSizes(sub, sizes)
		}
	}
}

// sizes returns the struct sizes of the registered types.
func (t *typeRegistry) sizes() map[protoreflect.FullName]int {
	if m := t.m.Load(); m != nil {
		return m.sizes
	}
	return nil
}

// lookup returns the accepted type named name, or nil.
func (t *typeRegistry) lookup(name string) *typeInfo {
	if m := t.m.Load(); m != nil {
		return m.types[name]
	}
	return nil
}

// lookupBytes is lookup without allocating a string.
func (t *typeRegistry) lookupBytes(name []byte) *typeInfo {
	if m := t.m.Load(); m != nil {
		return m.types[string(name)]
	}
	return nil
}

// RegisterMessages lets peers send msgs' protobuf types to this node, in
// addition to Config.Messages; each value only names its type. It may be
// called at any time; a message that arrives before its type is
// registered is refused (DeadLetterUndecodable, UnknownTypes).
func (r *Remote) RegisterMessages(msgs ...proto.Message) { r.types.add(msgs...) }

// ---- hidden actors ----

// hiddenSet holds the ids Hide was given. Readers never lock.
type hiddenSet struct {
	mu sync.Mutex
	m  atomic.Pointer[map[string]struct{}]
}

func (h *hiddenSet) change(id string, hide bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	next := make(map[string]struct{})
	if old := h.m.Load(); old != nil {
		for k := range *old {
			next[k] = struct{}{}
		}
	}
	if hide {
		next[id] = struct{}{}
	} else {
		delete(next, id)
	}
	h.m.Store(&next)
}

// covers reports whether id or one of its ancestors (the prefixes of id
// that end before a '/') is hidden.
func (h *hiddenSet) covers(id string) bool { return coveredBy(h.m.Load(), id) }

// coveredBy is covers against one version of the set.
func coveredBy(m *map[string]struct{}, id string) bool {
	if m == nil || len(*m) == 0 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] == '/' {
			if _, ok := (*m)[id[:i]]; ok {
				return true
			}
		}
	}
	_, ok := (*m)[id]
	return ok
}

// Hide makes the local actor pid, and every actor under it (ids that start
// with pid.Id+"/", its children and theirs), unreachable from peers: their
// messages to it are refused with DeadLetterHidden (the sender's request
// fails with a dead letter, a Watch ends at once with Terminated NotFound),
// exactly as if it did not exist. Local actors reach it as before. Hide
// only the actors the node uses internally; it may be called at any time,
// also before the actor is spawned.
//
// A hidden actor can still send to peers, watch their actors (their
// Terminated reaches it) and ask them with RequestFuture (a future is not
// hidden), but answers to its own Request (ctx.Request with itself as
// sender) are refused like any other message to it.
func (r *Remote) Hide(pid *actor.PID) {
	if pid != nil && pid.Id != "" {
		r.hidden.change(pid.Id, true)
	}
}

// Unhide makes an actor hidden with Hide reachable again (unless an
// ancestor is hidden too).
func (r *Remote) Unhide(pid *actor.PID) {
	if pid != nil && pid.Id != "" {
		r.hidden.change(pid.Id, false)
	}
}

// internalProcess reports protoactor's own processes, which peers never
// reach: the event stream (a peer would publish on it), guardians (a user
// message makes one panic) and the dead-letter process; and the remote's
// own (reservedPrefix).
func internalProcess(id string) bool {
	return id == "eventstream" || id == "deadletter" || strings.HasPrefix(id, "guardian$") || strings.HasPrefix(id, reservedPrefix)
}

// ---- decoding cost ----

// maxDecodeDepth bounds message nesting in what peers send; protobuf's own
// default (10,000) would let a small frame recurse deeply.
const maxDecodeDepth = 64

// unmarshalOpts decodes what peers send: extensions are kept as unknown
// bytes rather than resolved against every type linked into the program.
var unmarshalOpts = proto.UnmarshalOptions{RecursionLimit: maxDecodeDepth, Resolver: (*protoregistry.Types)(nil)}

// unmarshalFresh is unmarshalOpts for a message just made (nothing to
// reset).
var unmarshalFresh = proto.UnmarshalOptions{Merge: true, RecursionLimit: maxDecodeDepth, Resolver: (*protoregistry.Types)(nil)}

var errDecodeLimit = errors.New("quicremote: message would decode beyond the limits")

// decodeCost is what decoding one payload would hold: an estimate of the
// bytes of the decoded message and the count of its elements (messages,
// nested ones included, repeated elements and map entries).
type decodeCost struct{ bytes, elems int }

// costScan walks protobuf wire bytes by a message descriptor the way
// proto.Unmarshal will, without allocating, adding up decodeCost and
// stopping as soon as a limit is passed.
type costScan struct {
	decodeCost
	maxBytes, maxElems int
	sizes              map[protoreflect.FullName]int // struct sizes known beforehand
}

// scanCost returns what decoding b as md would cost, or an error wrapping
// errDecodeLimit past maxBytes or maxElems, or a malformed-payload error.
// sizes, if not nil, holds the struct sizes of md's message types.
func scanCost(md protoreflect.MessageDescriptor, b []byte, maxBytes, maxElems int, sizes map[protoreflect.FullName]int) (decodeCost, error) {
	s := costScan{maxBytes: maxBytes, maxElems: maxElems, sizes: sizes}
	err := s.message(md, b, 0, false)
	return s.decodeCost, err
}

func (s *costScan) add(bytes, elems int) error {
	s.bytes += bytes
	s.elems += elems
	if s.bytes > s.maxBytes || s.elems > s.maxElems {
		return fmt.Errorf("%w: over %d bytes or %d elements decoded", errDecodeLimit, s.maxBytes, s.maxElems)
	}
	return nil
}

var errMalformed = errors.New("malformed protobuf")

// Costs of decoded parts, in bytes, on a 64-bit platform. A slice element
// is counted three times over: a slice grown by appending allocates about
// twice its final size along the way, and may end half empty. Every
// allocation may round up to its size class, by at most an eighth.
const (
	costListSlot = 3 * 8  // a pointer or scalar in a repeated field
	costString   = 3 * 16 // a string header in a repeated field
	costMapEntry = 256    // a map entry's share of a table grown by doubling
)

// message scans one message of md; a map entry (entry) is no message of
// its own, only its key and value cost.
func (s *costScan) message(md protoreflect.MessageDescriptor, b []byte, depth int, entry bool) error {
	// Deeper than protobuf decodes: it refuses those itself.
	if depth > maxDecodeDepth+1 {
		return fmt.Errorf("%w: nested deeper than %d", errMalformed, maxDecodeDepth)
	}
	if !entry {
		size, known := s.sizes[md.FullName()]
		if !known {
			size = structSize(md)
		}
		if err := s.add(size+size/8, 1); err != nil {
			return err
		}
	}
	fields := md.Fields()
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || num > protowire.MaxValidNumber {
			return errMalformed
		}
		b = b[n:]
		fd := fields.ByNumber(num)
		var v []byte
		var m int
		var err error
		switch {
		case fd != nil && fd.IsMap() && typ == protowire.BytesType:
			if v, m = protowire.ConsumeBytes(b); m >= 0 {
				if err = s.add(costMapEntry, 1); err == nil {
					err = s.message(fd.Message(), v, depth+1, true)
				}
			}
		case fd != nil && (fd.Kind() == protoreflect.MessageKind && typ == protowire.BytesType ||
			fd.Kind() == protoreflect.GroupKind && typ == protowire.StartGroupType):
			if typ == protowire.BytesType {
				v, m = protowire.ConsumeBytes(b)
			} else {
				v, m = protowire.ConsumeGroup(num, b)
			}
			if m >= 0 && fd.IsList() {
				err = s.add(costListSlot, 1)
			}
			if m >= 0 && err == nil {
				err = s.message(fd.Message(), v, depth+1, false)
			}
		case fd != nil && (fd.Kind() == protoreflect.StringKind || fd.Kind() == protoreflect.BytesKind) && typ == protowire.BytesType:
			if v, m = protowire.ConsumeBytes(b); m >= 0 {
				// Allocations round up to a size class: at most 1/8
				// more, and at least 8 bytes.
				size := len(v) + len(v)/8 + 8
				if fd.IsList() {
					err = s.add(size+costString, 1)
				} else {
					err = s.add(size, 0)
				}
			}
		case fd != nil && fd.IsList() && typ == protowire.BytesType:
			// A packed run of scalars: one slot per value.
			if v, m = protowire.ConsumeBytes(b); m >= 0 {
				err = s.add(3*scalarWidth(fd.Kind())*packedCount(fd.Kind(), v), 0)
			}
		case fd != nil && fd.IsList():
			m = protowire.ConsumeFieldValue(num, typ, b)
			err = s.add(costListSlot, 1)
		default:
			// A scalar costs nothing beyond its struct field, but one
			// of an unknown number or with a mismatched wire type is
			// kept as unknown bytes, in a slice grown by appending:
			// counting every one that way keeps the walk simple and
			// the estimate on the safe side.
			m = protowire.ConsumeFieldValue(num, typ, b)
			err = s.add(2*(n+max(m, 0)), 0)
		}
		if err != nil {
			return err
		}
		if m < 0 {
			return errMalformed
		}
		b = b[m:]
	}
	return nil
}

// packedCount is the number of values in a packed run of kind.
func packedCount(kind protoreflect.Kind, v []byte) int {
	switch kind {
	case protoreflect.Fixed32Kind, protoreflect.Sfixed32Kind, protoreflect.FloatKind:
		return len(v) / 4
	case protoreflect.Fixed64Kind, protoreflect.Sfixed64Kind, protoreflect.DoubleKind:
		return len(v) / 8
	}
	n := 0
	for _, c := range v {
		if c < 0x80 {
			n++
		}
	}
	return n
}

// scalarWidth is the size of a scalar of kind in a Go slice.
func scalarWidth(kind protoreflect.Kind) int {
	switch kind {
	case protoreflect.BoolKind:
		return 1
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Uint32Kind, protoreflect.EnumKind,
		protoreflect.Fixed32Kind, protoreflect.Sfixed32Kind, protoreflect.FloatKind:
		return 4
	}
	return 8
}

// structSizes caches structSize per descriptor.
var structSizes sync.Map // protoreflect.FullName -> int

// structSize is the size of the Go struct a message of md decodes into,
// or a generous guess for a type without generated code.
func structSize(md protoreflect.MessageDescriptor) int {
	if v, ok := structSizes.Load(md.FullName()); ok {
		return v.(int)
	}
	size := 64 + 24*md.Fields().Len()
	if mt, err := protoregistry.GlobalTypes.FindMessageByName(md.FullName()); err == nil {
		if t := reflect.TypeOf(mt.Zero().Interface()); t.Kind() == reflect.Pointer && t.Elem().Kind() == reflect.Struct {
			size = int(t.Elem().Size())
		}
	}
	structSizes.Store(md.FullName(), size)
	return size
}

// ---- target mailboxes ----

// protoactor's ActorProcess keeps its mailbox in an unexported field; the
// remote reads the field's offset once, by reflection, to learn how many
// user messages a target has queued. TestMailboxOfMatchesProtoactor fails
// if a protoactor upgrade changes the field; at run time a missing field
// only turns the backlog bound off.
var mailboxOffset, mailboxKnown = func() (uintptr, bool) {
	f, ok := reflect.TypeOf(actor.ActorProcess{}).FieldByName("mailbox")
	if !ok || f.Type != reflect.TypeOf((*actor.Mailbox)(nil)).Elem() {
		return 0, false
	}
	return f.Offset, true
}()

// The process's dead flag, which protoactor sets when the actor stops or
// leaves the registry, is read the same way (targetTable keeps a process
// only while it is not set; without the field it keeps none).
var deadOffset, deadKnown = func() (uintptr, bool) {
	f, ok := reflect.TypeOf(actor.ActorProcess{}).FieldByName("dead")
	if !ok || f.Type != reflect.TypeOf(int32(0)) {
		return 0, false
	}
	return f.Offset, true
}()

// processDead reports whether protoactor has marked ap dead.
func processDead(ap *actor.ActorProcess) bool {
	return !deadKnown || atomic.LoadInt32((*int32)(unsafe.Add(unsafe.Pointer(ap), deadOffset))) != 0
}

// mailboxOf returns the mailbox of a local actor's process, or nil for
// any other process (futures, routers, the dead-letter process).
func mailboxOf(p actor.Process) actor.Mailbox {
	ap, ok := p.(*actor.ActorProcess)
	if !ok || !mailboxKnown || ap == nil {
		return nil
	}
	// The field is set when the process is made and never written again.
	return *(*actor.Mailbox)(unsafe.Add(unsafe.Pointer(ap), mailboxOffset))
}
