package abcasttest

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/internal/wire"
)

// The wire protocol a raw member (Raw) speaks, for tests of hostile or
// broken peers: which protocol names a channel uses on the transport, and
// the encodings of its messages. Decoding applies the default limits
// (actors.DefaultConfig().Wire), as a node with the default
// configuration does.

// UpdateProtocol is the transport protocol carrying channel's slot
// updates (Push).
func UpdateProtocol(channel string) string { return "abcast/" + channel + "/update" }

// FetchProtocol is the transport protocol serving channel's fetches
// (Call): manifests, and the whole artifact when it is one chunk.
func FetchProtocol(channel string) string { return "abcast/" + channel + "/fetch" }

// ChunkProtocol is the transport protocol serving the chunks of
// channel's multi-chunk artifacts (Call with a FetchRequest naming a
// chunk); the answer is the chunk's bare bytes, not an encoded response.
func ChunkProtocol(channel string) string { return "abcast/" + channel + "/chunk" }

// UpdatesProtocol is the transport protocol of channel's update stream
// (OpenStream), on which small updates travel in batches.
func UpdatesProtocol(channel string) string { return "abcast/" + channel + "/updates" }

// HelloProtocol is the transport protocol on which a member announces the
// channels it has open (Push); Announce speaks it for a Raw transport.
const HelloProtocol = wire.HelloProtocol

// EncodeHello encodes an announcement of channels, for a member that
// speaks the transport itself rather than through Raw (use Announce with
// Raw). version must be positive and grow with each announcement on one
// connection: a node applies only a newer one.
func EncodeHello(version uint64, channels ...string) []byte {
	return wire.EncodeHello(version, channels)
}

// EncodeUpdateBatch encodes one frame of a member's update stream
// (UpdatesProtocol): updates (each an EncodeSlotUpdate encoding) numbered
// first, first+1, ... . A stream's first frame starts at 1 and each frame
// continues where the previous one ended; a node resets a stream whose
// numbering skips, and refuses a batch above 256 updates or an update above
// 16 KiB. The format belongs to package actors (update_stream.go), which
// keeps it unexported; this encoder follows it for tests of hostile
// members.
func EncodeUpdateBatch(first uint64, updates ...[]byte) []byte {
	var frame []byte
	for i, u := range updates {
		frame = protowire.AppendVarint(frame, first+uint64(i))
		frame = protowire.AppendBytes(frame, u)
	}
	return frame
}

// ErrBadUpdateAck is what DecodeUpdateAck returns for bytes that are not
// an acknowledgement.
var ErrBadUpdateAck = errors.New("abcasttest: bad update stream acknowledgement")

// DecodeUpdateAck decodes a node's answer on an update stream: every
// update numbered up to through was handled, and refused maps those it
// refused to the node's reason (nil when none was).
func DecodeUpdateAck(b []byte) (through uint64, refused map[uint64]string, err error) {
	next := func(what string) (uint64, error) {
		v, n := protowire.ConsumeVarint(b)
		if n < 0 {
			return 0, fmt.Errorf("%w: %s", ErrBadUpdateAck, what)
		}
		b = b[n:]
		return v, nil
	}
	if through, err = next("through"); err != nil {
		return 0, nil, err
	}
	count, err := next("count")
	if err != nil {
		return 0, nil, err
	}
	for range count {
		seq, err := next("refused sequence")
		if err != nil {
			return 0, nil, err
		}
		why, n := protowire.ConsumeString(b)
		if n < 0 {
			return 0, nil, fmt.Errorf("%w: reason of %d", ErrBadUpdateAck, seq)
		}
		b = b[n:]
		if refused == nil {
			refused = map[uint64]string{}
		}
		refused[seq] = why
	}
	if len(b) != 0 {
		return 0, nil, fmt.Errorf("%w: %d trailing bytes", ErrBadUpdateAck, len(b))
	}
	return through, refused, nil
}

// FetchRequest asks for an artifact's manifest (Chunk ==
// broadcast.ManifestPart) or one of its chunks.
type FetchRequest = wire.FetchRequest

// ErrNotFound is what DecodeFetchResponse returns for a "not found"
// answer.
var ErrNotFound = wire.ErrNotFound

// EncodeSlotUpdate encodes a slot update as a node sends it.
func EncodeSlotUpdate(u broadcast.SlotUpdate) ([]byte, error) { return wire.EncodeSlotUpdate(u) }

// EncodeFetchRequest encodes a fetch request.
func EncodeFetchRequest(r FetchRequest) ([]byte, error) { return wire.EncodeFetchRequest(r) }

// DecodeFetchRequest decodes a fetch request.
func DecodeFetchRequest(b []byte) (FetchRequest, error) {
	return wire.DecodeFetchRequest(b, actors.DefaultConfig().Wire)
}

// EncodeFetchNotFound encodes the answer "no such artifact or chunk".
func EncodeFetchNotFound() ([]byte, error) { return wire.EncodeFetchNotFound() }

// EncodeFetchManifest encodes the answer to a manifest request, with the
// payload when it is a single chunk.
func EncodeFetchManifest(m broadcast.Manifest, payload []byte) ([]byte, error) {
	return wire.EncodeFetchManifest(m, payload)
}

// EncodeFetchChunk encodes the answer to a chunk request.
func EncodeFetchChunk(chunk []byte) ([]byte, error) { return wire.EncodeFetchChunk(chunk) }

// DecodeFetchResponse decodes the answer to a fetch; a "not found" answer
// is ErrNotFound.
func DecodeFetchResponse(b []byte) (broadcast.Fetched, error) {
	return wire.DecodeFetchResponse(b, actors.DefaultConfig().Wire)
}
