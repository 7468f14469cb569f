package abcasttest

import (
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
