package wire

import (
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/proto/abcastpb"
)

// FetchRequest asks for part of the artifact ID whose manifest has Digest:
// the manifest when Chunk is broadcast.ManifestPart, else that chunk. A
// zero Digest (for an artifact that was pushed, whose digest nobody
// advertised) asks for the manifest the server holds for the id.
type FetchRequest struct {
	ID     broadcast.ArtifactID
	Digest broadcast.Digest
	Chunk  int
}

// EncodeFetchRequest encodes r. An empty id or a chunk below
// broadcast.ManifestPart is refused with an error wrapping
// broadcast.ErrInvalid.
func EncodeFetchRequest(r FetchRequest) ([]byte, error) {
	if r.ID == "" {
		return nil, invalidf("encode fetch request: empty id")
	}
	m := &abcastpb.FetchRequest{Id: []byte(r.ID)}
	if r.Digest != (broadcast.Digest{}) {
		m.Digest = r.Digest[:]
	}
	switch {
	case r.Chunk == broadcast.ManifestPart:
		m.Part = &abcastpb.FetchRequest_Manifest{Manifest: true}
	case r.Chunk >= 0 && r.Chunk <= maxUint32:
		m.Part = &abcastpb.FetchRequest_Chunk{Chunk: uint32(r.Chunk)}
	default:
		return nil, invalidf("encode fetch request: chunk %d", r.Chunk)
	}
	return marshal("fetch request", m)
}

const maxUint32 = 1<<32 - 1

// DecodeFetchRequest decodes a fetch request received from a peer. An empty
// or oversized id, a digest that is neither empty nor 32 bytes, a missing
// part, a chunk beyond what lim's largest payload can have, or bytes that
// are not a FetchRequest are refused with an error wrapping
// broadcast.ErrInvalid. Invalid limits yield ErrLimits.
func DecodeFetchRequest(b []byte, lim Limits) (FetchRequest, error) {
	if err := lim.Validate(); err != nil {
		return FetchRequest{}, err
	}
	var m abcastpb.FetchRequest
	if err := unmarshal("fetch request", b, lim.fetchRequestLen(), &m); err != nil {
		return FetchRequest{}, err
	}
	if err := checkID("fetch request", m.GetId(), lim); err != nil {
		return FetchRequest{}, err
	}
	r := FetchRequest{ID: broadcast.ArtifactID(m.GetId())}
	if d := m.GetDigest(); len(d) != 0 {
		if len(d) != len(r.Digest) {
			return FetchRequest{}, invalidf("fetch request: digest of %d bytes", len(d))
		}
		copy(r.Digest[:], d)
	}
	switch p := m.GetPart().(type) {
	case *abcastpb.FetchRequest_Manifest:
		if !p.Manifest {
			return FetchRequest{}, invalidf("fetch request: manifest is false")
		}
		r.Chunk = broadcast.ManifestPart
	case *abcastpb.FetchRequest_Chunk:
		if int64(p.Chunk) >= lim.maxChunks() {
			return FetchRequest{}, invalidf("fetch request: chunk %d, a payload within limits has at most %d", p.Chunk, lim.maxChunks())
		}
		r.Chunk = int(p.Chunk)
	default:
		return FetchRequest{}, invalidf("fetch request: no part (manifest or chunk)")
	}
	return r, nil
}

// EncodeFetchNotFound encodes the answer of a peer that holds no artifact
// under the requested id and digest, or no such chunk.
func EncodeFetchNotFound() ([]byte, error) {
	return marshal("fetch response", &abcastpb.FetchResponse{Result: &abcastpb.FetchResponse_NotFound{NotFound: true}})
}

// EncodeFetchManifest encodes the answer to a manifest request, with the
// payload when it is a single chunk (nil otherwise).
func EncodeFetchManifest(m broadcast.Manifest, payload []byte) ([]byte, error) {
	if m.Size < 0 || m.ChunkSize < 0 || int64(m.ChunkSize) > maxUint32 {
		return nil, invalidf("encode fetch response: manifest of %d bytes in chunks of %d", m.Size, m.ChunkSize)
	}
	return marshal("fetch response", &abcastpb.FetchResponse{Result: &abcastpb.FetchResponse_Manifest{Manifest: &abcastpb.Manifest{
		Size: uint64(m.Size), ChunkSize: uint32(m.ChunkSize), Hashes: m.Hashes, Payload: payload,
	}}})
}

// EncodeFetchManifestWith encodes the answer to a manifest request of a
// one-chunk artifact, copying payload into it once, and returns the answer
// and the payload's place in it. A server keeps the answer and uses that
// place as the artifact's payload from then on, so the answer is served
// as it is to every peer that asks, without a copy per request, and the
// payload is held once.
func EncodeFetchManifestWith(m broadcast.Manifest, payload []byte) (resp, inResp []byte, err error) {
	head, err := EncodeFetchManifest(m, nil)
	if err != nil {
		return nil, nil, err
	}
	// head is the FetchResponse with the manifest's other fields; the
	// payload is the manifest's last field, so it is appended to the
	// manifest message and that message's length grows accordingly.
	_, _, n := protowire.ConsumeTag(head)
	inner, m2 := protowire.ConsumeBytes(head[n:])
	if n < 0 || m2 < 0 || n+m2 != len(head) {
		return nil, nil, fmt.Errorf("wire: encode fetch response: unexpected manifest layout")
	}
	innerLen := len(inner) + protowire.SizeTag(4) + protowire.SizeBytes(len(payload))
	resp = make([]byte, 0, n+protowire.SizeVarint(uint64(innerLen))+innerLen)
	resp = protowire.AppendTag(resp, 3, protowire.BytesType)
	resp = protowire.AppendVarint(resp, uint64(innerLen))
	resp = append(resp, inner...)
	resp = protowire.AppendTag(resp, 4, protowire.BytesType)
	resp = protowire.AppendVarint(resp, uint64(len(payload)))
	at := len(resp)
	resp = append(resp, payload...)
	return resp, resp[at:len(resp):len(resp)], nil
}

// EncodeFetchChunk encodes the answer to a chunk request.
func EncodeFetchChunk(chunk []byte) ([]byte, error) {
	return marshal("fetch response", &abcastpb.FetchResponse{Result: &abcastpb.FetchResponse_Chunk{Chunk: chunk}})
}

// DecodeFetchResponse decodes the answer to a fetch request. A "not found"
// answer returns ErrNotFound. A response with no result, a not_found field
// set to false, a manifest or chunk larger than lim allows, or bytes that
// are not a FetchResponse are refused with an error wrapping
// broadcast.ErrInvalid. Whether the answer matches the request (its digest,
// its chunk hash) is for the caller to check. Invalid limits yield
// ErrLimits.
//
// The answer's hashes and data alias b: b becomes the answer's and must not
// be reused.
func DecodeFetchResponse(b []byte, lim Limits) (broadcast.Fetched, error) {
	if err := lim.Validate(); err != nil {
		return broadcast.Fetched{}, err
	}
	r, err := decodeFetchResponse(b, lim)
	if err != nil {
		return broadcast.Fetched{}, err
	}
	switch r.result {
	case 3:
		switch {
		case r.size > uint64(lim.MaxPayloadLen):
			return broadcast.Fetched{}, invalidf("fetch response: manifest of %d bytes, limit %d", r.size, lim.MaxPayloadLen)
		case r.chunkSize > broadcast.MaxChunkSize:
			return broadcast.Fetched{}, invalidf("fetch response: chunks of %d bytes, limit %d", r.chunkSize, broadcast.MaxChunkSize)
		case int64(len(r.hashes)) > lim.maxHashesLen():
			return broadcast.Fetched{}, invalidf("fetch response: %d bytes of hashes, limit %d", len(r.hashes), lim.maxHashesLen())
		case int64(len(r.payload)) > lim.maxChunkLen():
			return broadcast.Fetched{}, invalidf("fetch response: payload of %d bytes with the manifest, limit %d", len(r.payload), lim.maxChunkLen())
		}
		man := &broadcast.Manifest{Size: int(r.size), ChunkSize: int(r.chunkSize), Hashes: r.hashes}
		return broadcast.Fetched{Manifest: man, Data: nilIfEmpty(r.payload)}, nil
	case 4:
		if int64(len(r.chunk)) > lim.maxChunkLen() {
			return broadcast.Fetched{}, invalidf("fetch response: chunk of %d bytes, limit %d", len(r.chunk), lim.maxChunkLen())
		}
		// An empty chunk is a valid answer only for an empty payload, which
		// has none: the caller's check refuses it. Keep it non-nil so that
		// it is told from a manifest answer.
		if r.chunk == nil {
			r.chunk = []byte{}
		}
		return broadcast.Fetched{Data: r.chunk}, nil
	case 2:
		// The field is present on the wire, so the peer chose this case;
		// false would say "found" without an answer, which means nothing.
		if !r.notFound {
			return broadcast.Fetched{}, invalidf("fetch response: not_found is false")
		}
		return broadcast.Fetched{}, ErrNotFound
	default:
		return broadcast.Fetched{}, invalidf("fetch response: no result (manifest, chunk or not_found)")
	}
}

// decodeFetchResponse reads b without copying its bytes fields when it is
// in the canonical form (alias.go), else through protobuf.
func decodeFetchResponse(b []byte, lim Limits) (rawFetchResponse, error) {
	if int64(len(b)) > lim.fetchResponseLen() {
		return rawFetchResponse{}, invalidf("fetch response: %d bytes, longer than any valid one (%d)", len(b), lim.fetchResponseLen())
	}
	if r, ok := aliasFetchResponse(b); ok {
		return r, nil
	}
	var m abcastpb.FetchResponse
	if err := unmarshal("fetch response", b, lim.fetchResponseLen(), &m); err != nil {
		return rawFetchResponse{}, err
	}
	return fetchRawFromPB(&m), nil
}

// fetchRawFromPB is what protobuf decoded, in the form the checks read.
func fetchRawFromPB(m *abcastpb.FetchResponse) rawFetchResponse {
	var r rawFetchResponse
	switch x := m.GetResult().(type) {
	case *abcastpb.FetchResponse_Manifest:
		mf := x.Manifest
		r.result, r.size, r.chunkSize, r.hashes, r.payload = 3, mf.GetSize(), uint64(mf.GetChunkSize()), mf.GetHashes(), mf.GetPayload()
	case *abcastpb.FetchResponse_Chunk:
		r.result, r.chunk = 4, x.Chunk
	case *abcastpb.FetchResponse_NotFound:
		r.result, r.notFound = 2, x.NotFound
	}
	return r
}
