package wire

import (
	"errors"
	"fmt"
	"math"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/abcast/abcast/broadcast"
)

// ErrLimits reports a Limits value that cannot be used. It is the caller's
// mistake, not the peer's, so it does not wrap broadcast.ErrInvalid.
var ErrLimits = errors.New("wire: invalid limits")

// Limits bounds the sizes a decoder accepts from a peer. Every field must be
// positive.
type Limits struct {
	// MaxIDLen is the longest artifact id, in bytes. Default 128: ids are
	// hashes or short keys, and a receiver keeps one per advertised slot.
	MaxIDLen int
	// MaxAttributeLen is the longest attribute, in bytes. Default 1024: the
	// attribute is read by the admission function before any fetch and is
	// kept with every advert, so it has to stay small.
	MaxAttributeLen int
	// MaxPayloadLen is the longest payload, in bytes. Default 128 MiB, the
	// per-stream message limit of DESIGN.md §5.
	MaxPayloadLen int
}

// DefaultLimits returns the limits described on each field of Limits.
func DefaultLimits() Limits {
	return Limits{
		MaxIDLen:        128,
		MaxAttributeLen: 1024,
		MaxPayloadLen:   128 << 20,
	}
}

// maxProtoMessage is the largest message protobuf implementations agree to
// handle (2 GiB - 1).
const maxProtoMessage = math.MaxInt32

// Validate reports whether the limits are usable: each must be positive, and
// the largest message they allow must stay below protobuf's 2 GiB bound.
func (l Limits) Validate() error {
	switch {
	case l.MaxIDLen <= 0:
		return fmt.Errorf("%w: MaxIDLen is %d, must be positive", ErrLimits, l.MaxIDLen)
	case l.MaxAttributeLen <= 0:
		return fmt.Errorf("%w: MaxAttributeLen is %d, must be positive", ErrLimits, l.MaxAttributeLen)
	case l.MaxPayloadLen <= 0:
		return fmt.Errorf("%w: MaxPayloadLen is %d, must be positive", ErrLimits, l.MaxPayloadLen)
	}
	// Each field is checked on its own first so that the sum below cannot
	// overflow.
	if l.MaxIDLen > maxProtoMessage || l.MaxAttributeLen > maxProtoMessage || l.MaxPayloadLen > maxProtoMessage {
		return fmt.Errorf("%w: a limit exceeds %d bytes", ErrLimits, maxProtoMessage)
	}
	if n := l.slotUpdateLen(); n > maxProtoMessage {
		return fmt.Errorf("%w: largest message would be %d bytes, protobuf allows %d", ErrLimits, n, maxProtoMessage)
	}
	return nil
}

// MaxMessageLen is the encoded length of the largest message any decoder in
// this package accepts under l: a slot update carrying an artifact with
// every field at its limit (fetch responses carry at most a chunk or a
// manifest, far less). The transport can use it as its per-stream frame
// limit. It is meaningful only for limits that pass Validate.
func (l Limits) MaxMessageLen() int {
	return int(max(l.slotUpdateLen(), l.fetchResponseLen()))
}

// MaxFetchResponseLen is the encoded length of the largest fetch response
// DecodeFetchResponse accepts under l: a chunk or a manifest, never a whole
// large payload. A caller can bound what it reads of a response with it.
func (l Limits) MaxFetchResponseLen() int { return int(l.fetchResponseLen()) }

// MaxChunkLen is the longest chunk a fetch may bring, in bytes.
func (l Limits) MaxChunkLen() int { return int(l.maxChunkLen()) }

// The functions below compute the length of the canonical encoding of the
// largest valid message of each type. Encoders always produce canonical
// encodings, so anything longer came from a peer that padded it (unknown
// fields, repeated fields, overlong varints) and is refused unparsed.
// Lengths are int64 so that they cannot overflow before Validate has bounded
// the limits.

func (l Limits) artifactLen() int64 {
	return bytesFieldLen(int64(l.MaxIDLen)) +
		bytesFieldLen(int64(l.MaxAttributeLen)) +
		bytesFieldLen(int64(l.MaxPayloadLen)) +
		2 // latency_sensitive: tag and one byte
}

func (l Limits) slotUpdateLen() int64 {
	// commit_id and slot are varints of at most 10 bytes each, after a
	// one-byte tag; of the oneof choices, the artifact is the largest.
	advert := bytesFieldLen(int64(l.MaxIDLen)) + bytesFieldLen(int64(l.MaxAttributeLen)) + bytesFieldLen(32)
	return 2*(1+10) + bytesFieldLen(max(l.artifactLen(), advert))
}

func (l Limits) fetchRequestLen() int64 {
	// id, digest, and the larger part choice: the highest chunk index, or
	// the manifest flag.
	return bytesFieldLen(int64(l.MaxIDLen)) + bytesFieldLen(32) + 1 + int64(protowire.SizeVarint(uint64(max(l.maxChunks()-1, 1))))
}

// maxChunks is the most chunks a payload within the limits can have.
func (l Limits) maxChunks() int64 {
	return (int64(l.MaxPayloadLen) + broadcast.MinChunkSize - 1) / broadcast.MinChunkSize
}

// maxHashesLen is the longest list of chunk hashes a manifest may carry.
func (l Limits) maxHashesLen() int64 { return l.maxChunks() * 32 }

// maxChunkLen is the longest chunk (or single-chunk payload).
func (l Limits) maxChunkLen() int64 { return min(int64(l.MaxPayloadLen), broadcast.MaxChunkSize) }

func (l Limits) fetchResponseLen() int64 {
	manifest := 1 + int64(protowire.SizeVarint(uint64(l.MaxPayloadLen))) + 1 + int64(protowire.SizeVarint(broadcast.MaxChunkSize)) +
		bytesFieldLen(l.maxHashesLen()) + bytesFieldLen(l.maxChunkLen())
	return max(bytesFieldLen(manifest), bytesFieldLen(l.maxChunkLen()))
}

// bytesFieldLen is the length of a length-delimited field with a one-byte tag
// and n bytes of content.
func bytesFieldLen(n int64) int64 {
	return 1 + int64(protowire.SizeVarint(uint64(n))) + n
}
