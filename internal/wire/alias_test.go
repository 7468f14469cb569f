package wire

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/proto/abcastpb"
)

// The aliasing readers must never give a frame another meaning than
// protobuf does: whenever they accept one, it decodes to the same values
// through protobuf-go.

// seedsOf adds the committed fuzz seeds of target to f, so that the
// comparison runs over every hand-written corner case with each go test.
func seedsOf(f *testing.F, target string) {
	files, _ := filepath.Glob(filepath.Join("testdata", "fuzz", target, "*"))
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		// go test fuzz v1 files hold one []byte("...") line.
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := parseFuzzBytes(line); ok {
				f.Add(v)
			}
		}
	}
}

func FuzzAliasSlotUpdateMatchesProto(f *testing.F) {
	seedsOf(f, "FuzzDecodeSlotUpdate")
	for _, u := range []broadcast.SlotUpdate{
		{Commit: 7, Slot: 3, Kind: broadcast.KindPush, Artifact: broadcast.Artifact{ID: "a", Attribute: []byte("x"), Payload: []byte("payload"), LatencySensitive: true}},
		{Commit: 8, Slot: 1, Kind: broadcast.KindAdvert, Artifact: broadcast.Artifact{ID: "b"}, Digest: broadcast.Digest{1}},
		{Commit: 9, Slot: 2, Kind: broadcast.KindCleared},
		{Commit: 10, Kind: broadcast.KindSync},
	} {
		b, err := EncodeSlotUpdate(u)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		raw, ok := aliasSlotUpdate(b)
		if !ok {
			return
		}
		var m abcastpb.SlotUpdate
		if err := unmarshalOpts.Unmarshal(b, &m); err != nil {
			t.Fatalf("alias reader accepted what protobuf refuses (%v): % x", err, b)
		}
		want := rawFromPB(&m)
		if raw.commit != want.commit || raw.slot != want.slot || raw.state != want.state || raw.latency != want.latency ||
			!bytes.Equal(raw.id, want.id) || !bytes.Equal(raw.attr, want.attr) || !bytes.Equal(raw.payload, want.payload) || !bytes.Equal(raw.digest, want.digest) {
			t.Fatalf("alias reader and protobuf disagree on % x:\n%+v\n%+v", b, raw, want)
		}
	})
}

func FuzzAliasFetchResponseMatchesProto(f *testing.F) {
	seedsOf(f, "FuzzDecodeFetchResponse")
	man := broadcast.Describe(bytes.Repeat([]byte{1}, 3000), broadcast.MinChunkSize)
	for _, enc := range []func() ([]byte, error){
		EncodeFetchNotFound,
		func() ([]byte, error) { return EncodeFetchChunk([]byte("chunk")) },
		func() ([]byte, error) { return EncodeFetchChunk(nil) },
		func() ([]byte, error) { return EncodeFetchManifest(man, nil) },
		func() ([]byte, error) {
			return EncodeFetchManifest(broadcast.Describe([]byte("p"), broadcast.MinChunkSize), []byte("p"))
		},
	} {
		b, err := enc()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		raw, ok := aliasFetchResponse(b)
		if !ok {
			return
		}
		var m abcastpb.FetchResponse
		if err := unmarshalOpts.Unmarshal(b, &m); err != nil {
			t.Fatalf("alias reader accepted what protobuf refuses (%v): % x", err, b)
		}
		want := fetchRawFromPB(&m)
		if raw.result != want.result || raw.notFound != want.notFound || raw.size != want.size || raw.chunkSize != want.chunkSize ||
			!bytes.Equal(raw.hashes, want.hashes) || !bytes.Equal(raw.payload, want.payload) || !bytes.Equal(raw.chunk, want.chunk) {
			t.Fatalf("alias reader and protobuf disagree on % x:\n%+v\n%+v", b, raw, want)
		}
	})
}

// within reports whether sub lies inside buf's memory.
func within(sub, buf []byte) bool {
	if len(sub) == 0 {
		return false
	}
	s, b := uintptr(unsafe.Pointer(unsafe.SliceData(sub))), uintptr(unsafe.Pointer(unsafe.SliceData(buf)))
	return s >= b && s+uintptr(len(sub)) <= b+uintptr(len(buf))
}

// A decoded payload is the frame's own bytes, not a copy: the receive path
// makes no pass over a delivered payload beyond the transport's read.
func TestDecodeAliasesTheFrame(t *testing.T) {
	lim := DefaultLimits()
	push, err := EncodeSlotUpdate(broadcast.SlotUpdate{Commit: 1, Slot: 2, Kind: broadcast.KindPush, Artifact: broadcast.Artifact{ID: "id", Payload: bytes.Repeat([]byte{7}, 4096)}})
	if err != nil {
		t.Fatal(err)
	}
	u, err := DecodeSlotUpdate(push, lim)
	if err != nil {
		t.Fatal(err)
	}
	if !within(u.Artifact.Payload, push) {
		t.Error("pushed payload was copied out of the frame")
	}
	chunk, err := EncodeFetchChunk(bytes.Repeat([]byte{8}, 4096))
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeFetchResponse(chunk, lim)
	if err != nil {
		t.Fatal(err)
	}
	if !within(got.Data, chunk) {
		t.Error("fetched chunk was copied out of the frame")
	}
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := DecodeFetchResponse(chunk, lim); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 0 {
		t.Errorf("decoding a chunk allocates %.0f times, want 0", allocs)
	}
}

// parseFuzzBytes reads a `[]byte("...")` line of a seed file.
func parseFuzzBytes(line string) ([]byte, bool) {
	s, ok := strings.CutPrefix(line, "[]byte(")
	if !ok {
		return nil, false
	}
	s, ok = strings.CutSuffix(s, ")")
	if !ok {
		return nil, false
	}
	v, err := strconv.Unquote(s)
	return []byte(v), err == nil
}

// The answer a server keeps for a one-chunk artifact is the one the
// protobuf encoder writes, and the payload's place in it is the payload.
func TestEncodeFetchManifestWith(t *testing.T) {
	for _, n := range []int{1, 127, 128, 100 << 10, 1 << 20} {
		payload := bytes.Repeat([]byte{9}, n)
		payload[0] = 1
		m := broadcast.Describe(payload, broadcast.MaxChunkSize)
		want, err := EncodeFetchManifest(m, payload)
		if err != nil {
			t.Fatal(err)
		}
		got, in, err := EncodeFetchManifestWith(m, payload)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%d bytes: encoding differs from protobuf's", n)
		}
		if !bytes.Equal(in, payload) || !within(in, got) {
			t.Fatalf("%d bytes: payload's place is not the payload inside the answer", n)
		}
	}
}
