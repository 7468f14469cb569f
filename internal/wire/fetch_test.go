package wire

import (
	"bytes"
	"errors"
	"testing"

	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/proto/abcastpb"
)

var testDigest = broadcast.Describe([]byte("payload"), broadcast.MinChunkSize).Digest()

func TestFetchRequestRoundTrip(t *testing.T) {
	for _, r := range []FetchRequest{
		{ID: "a", Digest: testDigest, Chunk: broadcast.ManifestPart},
		{ID: "block-17", Digest: testDigest, Chunk: 0},
		{ID: "\x00\x01\x02", Chunk: broadcast.ManifestPart}, // no digest: a pushed artifact
		{ID: broadcast.ArtifactID(repeat('i', 8)), Digest: testDigest, Chunk: 0},
	} {
		b, err := EncodeFetchRequest(r)
		if err != nil {
			t.Fatalf("encode %+v: %v", r, err)
		}
		got, err := DecodeFetchRequest(b, smallLimits)
		if err != nil {
			t.Fatalf("decode %+v: %v", r, err)
		}
		if got != r {
			t.Fatalf("round trip of %+v gave %+v", r, got)
		}
	}
}

func TestEncodeFetchRequestRejects(t *testing.T) {
	_, err := EncodeFetchRequest(FetchRequest{Chunk: broadcast.ManifestPart})
	checkInvalid(t, err, "encode fetch request: empty id")
	_, err = EncodeFetchRequest(FetchRequest{ID: "a", Chunk: -2})
	checkInvalid(t, err, "encode fetch request: chunk -2")
}

func TestDecodeFetchRequestRejects(t *testing.T) {
	req := func(m *abcastpb.FetchRequest) []byte { return mustMarshal(t, m) }
	manifest := &abcastpb.FetchRequest_Manifest{Manifest: true}
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"nil input", nil, "fetch request: empty id"},
		{"empty id field", field(nil, 1, nil), "fetch request: empty id"},
		{"only unknown fields", varintField(nil, 7, 1), "fetch request: empty id"},
		{"id over limit", req(&abcastpb.FetchRequest{Id: repeat('i', 9), Part: manifest}), "id is 9 bytes, limit 8"},
		{"no part", req(&abcastpb.FetchRequest{Id: []byte("a")}), "no part"},
		{"manifest false", req(&abcastpb.FetchRequest{Id: []byte("a"), Part: &abcastpb.FetchRequest_Manifest{}}), "manifest is false"},
		{"short digest", req(&abcastpb.FetchRequest{Id: []byte("a"), Digest: []byte("short"), Part: manifest}), "digest of 5 bytes"},
		// A payload of 64 bytes has one chunk at most.
		{"chunk beyond the limits", req(&abcastpb.FetchRequest{Id: []byte("a"), Part: &abcastpb.FetchRequest_Chunk{Chunk: 1}}), "chunk 1, a payload within limits has at most 1"},
		// protobuf treats a known field number with the wrong wire type as an
		// unknown field, which is skipped.
		{"id with wrong wire type", varintField(nil, 1, 3), "fetch request: empty id"},
		{"truncated", field(nil, 1, []byte("abc"))[:3], "undecodable"},
		{"garbage", []byte{0x80, 0x80, 0x80}, "undecodable"},
		{"frame longer than any valid request", repeat(0x0a, int(smallLimits.fetchRequestLen())+1), "longer than any valid one"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := DecodeFetchRequest(tc.b, smallLimits)
			checkInvalid(t, err, tc.want)
			if r != (FetchRequest{}) {
				t.Fatalf("got request %+v with an error", r)
			}
		})
	}
}

func sameFetched(a, b broadcast.Fetched) bool {
	if (a.Manifest == nil) != (b.Manifest == nil) || !bytes.Equal(a.Data, b.Data) || (a.Data == nil) != (b.Data == nil) {
		return false
	}
	return a.Manifest == nil || (a.Manifest.Size == b.Manifest.Size && a.Manifest.ChunkSize == b.Manifest.ChunkSize && bytes.Equal(a.Manifest.Hashes, b.Manifest.Hashes))
}

// encodeFetched encodes a decoded answer again.
func encodeFetched(f broadcast.Fetched) ([]byte, error) {
	if f.Manifest != nil {
		return EncodeFetchManifest(*f.Manifest, f.Data)
	}
	return EncodeFetchChunk(f.Data)
}

func TestFetchResponseRoundTrip(t *testing.T) {
	one := broadcast.Describe([]byte("payload"), broadcast.MinChunkSize)
	two := broadcast.Describe(repeat('p', 3000), broadcast.MinChunkSize)
	for _, f := range []broadcast.Fetched{
		{Manifest: &one, Data: []byte("payload")},
		{Manifest: &two},
		{Data: repeat('c', 64)},
		{Data: []byte{}}, // an empty chunk decodes as empty, not absent
	} {
		b, err := encodeFetched(f)
		if err != nil {
			t.Fatalf("encode: %v", err)
		}
		got, err := DecodeFetchResponse(b, DefaultLimits())
		if err != nil {
			t.Fatalf("decode: %v", err)
		}
		if !sameFetched(got, f) {
			t.Fatalf("round trip of %+v gave %+v", f, got)
		}
		again, err := encodeFetched(got)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs (err %v)", err)
		}
	}
}

func TestFetchResponseNotFound(t *testing.T) {
	b, err := EncodeFetchNotFound()
	if err != nil {
		t.Fatal(err)
	}
	f, err := DecodeFetchResponse(b, smallLimits)
	if !errors.Is(err, ErrNotFound) || f.Manifest != nil || f.Data != nil {
		t.Fatalf("decode of not-found = (%+v, %v), want ErrNotFound", f, err)
	}
	if errors.Is(err, broadcast.ErrInvalid) {
		t.Fatal("not found is a valid answer but was reported as invalid")
	}
}

func TestDecodeFetchResponseRejects(t *testing.T) {
	man := func(m *abcastpb.Manifest) []byte {
		return mustMarshal(t, &abcastpb.FetchResponse{Result: &abcastpb.FetchResponse_Manifest{Manifest: m}})
	}
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"nil input", nil, "no result"},
		{"only unknown fields", field(nil, 9, []byte("x")), "no result"},
		{"not_found false", varintField(nil, 2, 0), "not_found is false"},
		{"the retired whole artifact", field(nil, 1, field(nil, 1, []byte("id"))), "no result"},
		{"manifest of a payload over the limit", man(&abcastpb.Manifest{Size: 65, ChunkSize: 1024}), "manifest of 65 bytes, limit 64"},
		{"chunks over the largest chunk size", man(&abcastpb.Manifest{Size: 1, ChunkSize: broadcast.MaxChunkSize + 1}), "chunks of 1048577 bytes"},
		{"too many hashes", man(&abcastpb.Manifest{Size: 1, ChunkSize: 1024, Hashes: repeat('h', 33)}), "33 bytes of hashes, limit 32"},
		{"payload over the limit", man(&abcastpb.Manifest{Size: 1, ChunkSize: 1024, Payload: repeat('p', 65)}), "payload of 65 bytes with the manifest, limit 64"},
		{"chunk over the limit", mustMarshal(t, &abcastpb.FetchResponse{Result: &abcastpb.FetchResponse_Chunk{Chunk: repeat('c', 65)}}), "chunk of 65 bytes, limit 64"},
		{"not_found with wrong wire type", field(nil, 2, []byte{1}), "no result"},
		{"truncated varint", []byte{0x10, 0x80}, "undecodable"},
		{"garbage", []byte{0xff, 0x00, 0x12}, "undecodable"},
		{"frame longer than any valid response", repeat(0, int(smallLimits.fetchResponseLen())+1), "longer than any valid one"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := DecodeFetchResponse(tc.b, smallLimits)
			checkInvalid(t, err, tc.want)
			if f.Manifest != nil || f.Data != nil {
				t.Fatalf("got %+v with an error", f)
			}
		})
	}
}

func TestDecodeFetchResponseAccepts(t *testing.T) {
	// A varint true written with a redundant continuation byte is still true.
	b := append(varintField(nil, 9, 5), 0x10, 0x81, 0x00)
	if _, err := DecodeFetchResponse(b, smallLimits); !errors.Is(err, ErrNotFound) {
		t.Fatalf("padded not_found: %v, want ErrNotFound", err)
	}
	// A chunk after not_found: the last choice wins.
	b = field(varintField(nil, 2, 1), 4, []byte("data"))
	f, err := DecodeFetchResponse(b, smallLimits)
	if err != nil || string(f.Data) != "data" {
		t.Fatalf("got (%+v, %v), want the chunk", f, err)
	}
}

// Fetch responses are bounded by a chunk or a manifest, not by the largest
// payload: that is what a caller may read of one.
func TestFetchResponsesAreBoundedByAChunk(t *testing.T) {
	lim := DefaultLimits()
	if n := lim.MaxFetchResponseLen(); n > broadcast.MaxChunkSize+(4<<20)+64 {
		t.Fatalf("largest fetch response %d bytes", n)
	}
}
