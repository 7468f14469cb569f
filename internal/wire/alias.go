package wire

import (
	"google.golang.org/protobuf/encoding/protowire"
)

// The decoders below read the two messages that carry payloads (slot
// updates and fetch responses) without copying their bytes fields: the
// results alias the frame, which the transport hands over to us and never
// touches again. protobuf-go copies every bytes field on decode, which for
// a payload-sized field was a second full pass over every delivered byte.
//
// They accept only what our own encoder writes: each known field at most
// once, in field-number order, with its declared wire type, and nothing
// else. Anything else (unknown or repeated fields, a second oneof choice,
// a message merged from parts) makes them report false, and the caller
// decodes the frame with protobuf-go instead, so that every frame means
// exactly what protobuf says it means whichever path read it. Hostile
// frames therefore cost at most one extra scan before the copying path.

// fieldReader walks the fields of one message in a frame.
type fieldReader struct {
	b    []byte
	last protowire.Number
}

// next returns the next field's number, type and (for a bytes field) its
// contents or (for a varint) its value, or ok false when the message
// leaves the canonical form. done reports the end of the message.
func (r *fieldReader) next() (num protowire.Number, typ protowire.Type, v uint64, b []byte, done, ok bool) {
	if len(r.b) == 0 {
		return 0, 0, 0, nil, true, true
	}
	num, typ, n := protowire.ConsumeTag(r.b)
	if n < 0 || num <= r.last {
		return 0, 0, 0, nil, false, false
	}
	r.b, r.last = r.b[n:], num
	switch typ {
	case protowire.VarintType:
		v, n = protowire.ConsumeVarint(r.b)
	case protowire.BytesType:
		b, n = protowire.ConsumeBytes(r.b)
	default:
		return 0, 0, 0, nil, false, false
	}
	if n < 0 {
		return 0, 0, 0, nil, false, false
	}
	r.b = r.b[n:]
	return num, typ, v, b, false, true
}

// fields reads a message whose fields are all in want (number → type) and
// calls f for each; it reports false for anything else.
func readFields(b []byte, want map[protowire.Number]protowire.Type, f func(num protowire.Number, v uint64, b []byte)) bool {
	r := fieldReader{b: b}
	for {
		num, typ, v, fb, done, ok := r.next()
		if done {
			return true
		}
		if !ok {
			return false
		}
		if t, known := want[num]; !known || t != typ {
			return false
		}
		f(num, v, fb)
	}
}

const (
	varintT = protowire.VarintType
	bytesT  = protowire.BytesType
)

var (
	slotUpdateFields = map[protowire.Number]protowire.Type{1: varintT, 2: varintT, 3: bytesT, 4: bytesT, 5: bytesT, 6: bytesT}
	artifactFields   = map[protowire.Number]protowire.Type{1: bytesT, 2: bytesT, 3: bytesT, 4: varintT}
	advertFields     = map[protowire.Number]protowire.Type{1: bytesT, 2: bytesT, 3: bytesT}
	emptyFields      = map[protowire.Number]protowire.Type{}
	fetchRespFields  = map[protowire.Number]protowire.Type{2: varintT, 3: bytesT, 4: bytesT}
	manifestFields   = map[protowire.Number]protowire.Type{1: varintT, 2: varintT, 3: bytesT, 4: bytesT}
)

// rawSlotUpdate is a slot update as read from the wire, before checks.
type rawSlotUpdate struct {
	commit, slot uint64
	state        protowire.Number // 3 advert, 4 artifact, 5 cleared, 6 sync; 0 none
	id, attr     []byte
	payload      []byte
	digest       []byte
	latency      bool
}

// aliasSlotUpdate reads b in canonical form without copying.
func aliasSlotUpdate(b []byte) (rawSlotUpdate, bool) {
	var u rawSlotUpdate
	inner := true
	ok := readFields(b, slotUpdateFields, func(num protowire.Number, v uint64, fb []byte) {
		switch num {
		case 1:
			u.commit = v
		case 2:
			u.slot = v
		default:
			if u.state != 0 {
				inner = false // a second oneof choice: protobuf keeps the last
				return
			}
			u.state = num
			switch num {
			case 3:
				inner = readFields(fb, advertFields, func(num protowire.Number, _ uint64, fb []byte) {
					switch num {
					case 1:
						u.id = fb
					case 2:
						u.attr = fb
					case 3:
						u.digest = fb
					}
				})
			case 4:
				inner = readFields(fb, artifactFields, func(num protowire.Number, v uint64, fb []byte) {
					switch num {
					case 1:
						u.id = fb
					case 2:
						u.attr = fb
					case 3:
						u.payload = fb
					case 4:
						if v > 1 {
							inner = false // protobuf reads any non-zero as true; leave odd encodings to it
						}
						u.latency = v == 1
					}
				}) && inner
			default:
				inner = readFields(fb, emptyFields, nil)
			}
		}
	})
	return u, ok && inner
}

// rawFetchResponse is a fetch response as read from the wire.
type rawFetchResponse struct {
	result          protowire.Number // 2 not found, 3 manifest, 4 chunk; 0 none
	notFound        bool
	size, chunkSize uint64
	hashes, payload []byte
	chunk           []byte
}

// aliasFetchResponse reads b in canonical form without copying.
func aliasFetchResponse(b []byte) (rawFetchResponse, bool) {
	var r rawFetchResponse
	inner := true
	ok := readFields(b, fetchRespFields, func(num protowire.Number, v uint64, fb []byte) {
		if r.result != 0 {
			inner = false
			return
		}
		r.result = num
		switch num {
		case 2:
			if v > 1 {
				inner = false
			}
			r.notFound = v == 1
		case 3:
			inner = readFields(fb, manifestFields, func(num protowire.Number, v uint64, fb []byte) {
				switch num {
				case 1:
					r.size = v
				case 2:
					if v > maxUint32 {
						inner = false // protobuf truncates a uint32; leave that to it
					}
					r.chunkSize = v
				case 3:
					r.hashes = fb
				case 4:
					r.payload = fb
				}
			}) && inner
		case 4:
			r.chunk = fb
			if r.chunk == nil {
				r.chunk = []byte{}
			}
		}
	})
	return r, ok && inner
}
