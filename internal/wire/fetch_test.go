package wire

import (
	"bytes"
	"errors"
	"testing"

	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/proto/abcastpb"
)

func TestFetchRequestRoundTrip(t *testing.T) {
	for _, id := range []broadcast.ArtifactID{"a", "block-17", "\x00\x01\x02", broadcast.ArtifactID(repeat('i', 8))} {
		b, err := EncodeFetchRequest(id)
		if err != nil {
			t.Fatalf("encode %q: %v", id, err)
		}
		got, err := DecodeFetchRequest(b, smallLimits)
		if err != nil {
			t.Fatalf("decode %q: %v", id, err)
		}
		if got != id {
			t.Fatalf("round trip of %q gave %q", id, got)
		}
	}
}

func TestEncodeFetchRequestRejectsEmptyID(t *testing.T) {
	_, err := EncodeFetchRequest("")
	checkInvalid(t, err, "encode fetch request: empty id")
}

func TestDecodeFetchRequestRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"nil input", nil, "fetch request: empty id"},
		{"empty id field", field(nil, 1, nil), "fetch request: empty id"},
		{"only unknown fields", varintField(nil, 7, 1), "fetch request: empty id"},
		// A request is only its id, so an oversized id is caught by the
		// length check before parsing.
		{"id over limit", mustMarshal(t, &abcastpb.FetchRequest{Id: repeat('i', 9)}), "11 bytes, longer than any valid one (10)"},
		// protobuf treats a known field number with the wrong wire type as an
		// unknown field, which is skipped.
		{"id with wrong wire type", varintField(nil, 1, 3), "fetch request: empty id"},
		{"truncated", field(nil, 1, []byte("abc"))[:3], "undecodable"},
		{"garbage", []byte{0x80, 0x80, 0x80}, "undecodable"},
		{"frame longer than any valid request", repeat(0x0a, 11), "longer than any valid one"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := DecodeFetchRequest(tc.b, smallLimits)
			checkInvalid(t, err, tc.want)
			if id != "" {
				t.Fatalf("got id %q with an error", id)
			}
		})
	}
}

func TestFetchResponseRoundTrip(t *testing.T) {
	for _, a := range []broadcast.Artifact{
		{ID: "a"},
		{ID: "b", Attribute: []byte("attr"), Payload: []byte("payload"), LatencySensitive: true},
		{ID: broadcast.ArtifactID(repeat('i', 8)), Attribute: repeat('a', 16), Payload: repeat('p', 64)},
	} {
		b, err := EncodeFetchResponse(&a)
		if err != nil {
			t.Fatalf("encode: %v", err)
		}
		got, err := DecodeFetchResponse(b, smallLimits)
		if err != nil {
			t.Fatalf("decode: %v", err)
		}
		if got == nil || !sameArtifact(*got, a) {
			t.Fatalf("round trip of %+v gave %+v", a, got)
		}
		again, err := EncodeFetchResponse(got)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs (err %v)", err)
		}
	}
}

func TestFetchResponseNotFound(t *testing.T) {
	b, err := EncodeFetchResponse(nil)
	if err != nil {
		t.Fatal(err)
	}
	a, err := DecodeFetchResponse(b, smallLimits)
	if !errors.Is(err, ErrNotFound) || a != nil {
		t.Fatalf("decode of not-found = (%v, %v), want (nil, ErrNotFound)", a, err)
	}
	if errors.Is(err, broadcast.ErrInvalid) {
		t.Fatal("not found is a valid answer but was reported as invalid")
	}
}

func TestEncodeFetchResponseRejectsEmptyID(t *testing.T) {
	_, err := EncodeFetchResponse(&broadcast.Artifact{Payload: []byte("p")})
	checkInvalid(t, err, "encode fetch response: empty id")
}

func TestDecodeFetchResponseRejects(t *testing.T) {
	resp := func(a *abcastpb.Artifact) []byte {
		return mustMarshal(t, &abcastpb.FetchResponse{Result: &abcastpb.FetchResponse_Artifact{Artifact: a}})
	}
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"nil input", nil, "no result"},
		{"only unknown fields", field(nil, 9, []byte("x")), "no result"},
		{"not_found false", varintField(nil, 2, 0), "not_found is false"},
		{"artifact without id", resp(&abcastpb.Artifact{Payload: []byte("p")}), "fetch response: empty id"},
		{"empty artifact", field(nil, 1, nil), "fetch response: empty id"},
		{"id over limit", resp(&abcastpb.Artifact{Id: repeat('i', 9)}), "id is 9 bytes, limit 8"},
		{"attribute over limit", resp(&abcastpb.Artifact{Id: []byte("i"), Attribute: repeat('a', 17)}), "attribute is 17 bytes, limit 16"},
		{"payload over limit", resp(&abcastpb.Artifact{Id: []byte("i"), Payload: repeat('p', 65)}), "payload is 65 bytes, limit 64"},
		{"not_found with wrong wire type", field(nil, 2, []byte{1}), "no result"},
		{"artifact with wrong wire type", varintField(nil, 1, 1), "no result"},
		{"truncated varint", []byte{0x10, 0x80}, "undecodable"},
		{"garbage", []byte{0xff, 0x00, 0x12}, "undecodable"},
		{"frame longer than any valid response", repeat(0, int(smallLimits.fetchResponseLen())+1), "longer than any valid one"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := DecodeFetchResponse(tc.b, smallLimits)
			checkInvalid(t, err, tc.want)
			if a != nil {
				t.Fatalf("got artifact %+v with an error", a)
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
	// Artifact after not_found: the last choice wins.
	b = field(varintField(nil, 2, 1), 1, field(nil, 1, []byte("id")))
	a, err := DecodeFetchResponse(b, smallLimits)
	if err != nil || a == nil || a.ID != "id" {
		t.Fatalf("got (%+v, %v), want artifact id", a, err)
	}
}
