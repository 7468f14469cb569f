package wire

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/proto/abcastpb"
)

// Fuzz targets: whatever a peer sends, decoding never panics, fails only
// with broadcast.ErrInvalid (or ErrNotFound for fetch responses), and a
// decoded value survives encode → decode unchanged, with the encoding stable
// from then on. Decoding is also monotonic in the limits: what passes the
// small limits passes the default ones and means the same.
//
// The committed seeds under testdata/fuzz run with every `go test`; they are
// generated from seedCorpus below by
//
//	go test ./internal/wire -run TestSeedCorpus -update-corpus

var updateCorpus = flag.Bool("update-corpus", false, "rewrite the fuzz seed files in testdata/fuzz from seedCorpus")

func FuzzDecodeSlotUpdate(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		var first *broadcast.SlotUpdate
		for _, lim := range []Limits{smallLimits, DefaultLimits()} {
			u, err := DecodeSlotUpdate(b, lim)
			if err != nil {
				if !errors.Is(err, broadcast.ErrInvalid) {
					t.Fatalf("error does not wrap ErrInvalid: %v", err)
				}
				if first != nil {
					t.Fatalf("accepted under %+v but refused under %+v: %v", smallLimits, lim, err)
				}
				continue
			}
			if first != nil && !sameUpdate(*first, u) {
				t.Fatalf("limits changed the value: %+v vs %+v", *first, u)
			}
			first = &u
			b2, err := EncodeSlotUpdate(u)
			if err != nil {
				t.Fatalf("decoded %+v but cannot encode it: %v", u, err)
			}
			u2, err := DecodeSlotUpdate(b2, lim)
			if err != nil {
				t.Fatalf("re-encoded %+v does not decode: %v", u, err)
			}
			if !sameUpdate(u, u2) {
				t.Fatalf("round trip changed the update:\n%+v\n%+v", u, u2)
			}
			if b3, err := EncodeSlotUpdate(u2); err != nil || !bytes.Equal(b2, b3) {
				t.Fatalf("encoding is not stable (err %v):\n% x\n% x", err, b2, b3)
			}
		}
	})
}

func FuzzDecodeFetchRequest(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		var first *FetchRequest
		for _, lim := range []Limits{smallLimits, DefaultLimits()} {
			r, err := DecodeFetchRequest(b, lim)
			if err != nil {
				if !errors.Is(err, broadcast.ErrInvalid) {
					t.Fatalf("error does not wrap ErrInvalid: %v", err)
				}
				if first != nil {
					t.Fatalf("accepted under %+v but refused under %+v: %v", smallLimits, lim, err)
				}
				continue
			}
			if first != nil && *first != r {
				t.Fatalf("limits changed the request: %+v vs %+v", *first, r)
			}
			first = &r
			b2, err := EncodeFetchRequest(r)
			if err != nil {
				t.Fatalf("decoded %+v but cannot encode it: %v", r, err)
			}
			r2, err := DecodeFetchRequest(b2, lim)
			if err != nil || r2 != r {
				t.Fatalf("round trip of %+v gave (%+v, %v)", r, r2, err)
			}
			if b3, err := EncodeFetchRequest(r2); err != nil || !bytes.Equal(b2, b3) {
				t.Fatalf("encoding is not stable (err %v)", err)
			}
		}
	})
}

func FuzzDecodeFetchResponse(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		var first *broadcast.Fetched
		firstNotFound := false
		for _, lim := range []Limits{smallLimits, DefaultLimits()} {
			got, err := DecodeFetchResponse(b, lim)
			switch {
			case errors.Is(err, ErrNotFound):
				if got.Manifest != nil || got.Data != nil {
					t.Fatalf("ErrNotFound with an answer %+v", got)
				}
				if first != nil {
					t.Fatal("limits turned an answer into not found")
				}
				firstNotFound = true
				continue
			case err != nil:
				if !errors.Is(err, broadcast.ErrInvalid) {
					t.Fatalf("error does not wrap ErrInvalid: %v", err)
				}
				if got.Manifest != nil || got.Data != nil {
					t.Fatalf("answer %+v with an error", got)
				}
				if first != nil || firstNotFound {
					t.Fatalf("accepted under %+v but refused under %+v: %v", smallLimits, lim, err)
				}
				continue
			}
			if got.Manifest == nil && got.Data == nil {
				t.Fatal("empty answer without an error")
			}
			if firstNotFound || (first != nil && !sameFetched(*first, got)) {
				t.Fatalf("limits changed the answer: %+v vs %+v", first, got)
			}
			first = &got
			b2, err := encodeFetched(got)
			if err != nil {
				t.Fatalf("decoded %+v but cannot encode it: %v", got, err)
			}
			got2, err := DecodeFetchResponse(b2, lim)
			if err != nil || !sameFetched(got, got2) {
				t.Fatalf("round trip of %+v gave (%+v, %v)", got, got2, err)
			}
			if b3, err := encodeFetched(got2); err != nil || !bytes.Equal(b2, b3) {
				t.Fatalf("encoding is not stable (err %v)", err)
			}
		}
	})
}

// seedCorpus returns, per fuzz target, named seed inputs: valid messages of
// every shape and the malformed ones the table tests cover.
func seedCorpus(t testing.TB) map[string]map[string][]byte {
	enc := func(b []byte, err error) []byte {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	push := enc(EncodeSlotUpdate(broadcast.SlotUpdate{Commit: 42, Slot: 7, Kind: broadcast.KindPush,
		Artifact: broadcast.Artifact{ID: "blk-1", Attribute: []byte("h=1"), Payload: []byte("payload bytes"), LatencySensitive: true}}))
	one := broadcast.Describe(repeat('p', 40), broadcast.MinChunkSize)
	manifest := enc(EncodeFetchManifest(one, repeat('p', 40)))
	return map[string]map[string][]byte{
		"FuzzDecodeSlotUpdate": {
			"valid-advert": enc(EncodeSlotUpdate(broadcast.SlotUpdate{Commit: 3, Slot: 1, Kind: broadcast.KindAdvert,
				Artifact: broadcast.Artifact{ID: "ingress-9", Attribute: []byte{0, 1, 2}}, Digest: one.Digest()})),
			"valid-push":                   push,
			"valid-cleared":                enc(EncodeSlotUpdate(broadcast.SlotUpdate{Commit: 43, Slot: 7, Kind: broadcast.KindCleared})),
			"valid-sync":                   enc(EncodeSlotUpdate(broadcast.SlotUpdate{Commit: 44, Kind: broadcast.KindSync})),
			"valid-cleared-unknown-fields": varintField(field(varintField(nil, 1, 4), 5, varintField(nil, 7, 1)), 50, 9),
			"invalid-empty":                {},
			"invalid-no-state":             varintField(varintField(nil, 1, 5), 2, 6),
			"invalid-truncated":            push[:len(push)-4],
			"invalid-garbage":              {0xff, 0xff, 0xff, 0xff, 0x0f},
			"invalid-advert-empty-id":      field(nil, 3, field(nil, 2, []byte("attr"))),
			"invalid-advert-long-id": mustMarshal(t, &abcastpb.SlotUpdate{State: &abcastpb.SlotUpdate_Advert{
				Advert: &abcastpb.Advert{Id: repeat('i', 129)}}}),
			"invalid-sync-with-slot": mustMarshal(t, &abcastpb.SlotUpdate{CommitId: 1, Slot: 2,
				State: &abcastpb.SlotUpdate_Sync{Sync: &abcastpb.Sync{}}}),
		},
		"FuzzDecodeFetchRequest": {
			"valid-manifest":     enc(EncodeFetchRequest(FetchRequest{ID: "a", Digest: one.Digest(), Chunk: broadcast.ManifestPart})),
			"valid-no-digest":    enc(EncodeFetchRequest(FetchRequest{ID: "\x00\x80\xffid", Chunk: broadcast.ManifestPart})),
			"valid-chunk":        enc(EncodeFetchRequest(FetchRequest{ID: broadcast.ArtifactID(repeat('i', 8)), Digest: one.Digest(), Chunk: 0})),
			"valid-long":         enc(EncodeFetchRequest(FetchRequest{ID: broadcast.ArtifactID(repeat('i', 100)), Digest: one.Digest(), Chunk: 70})),
			"invalid-empty":      {},
			"invalid-empty-id":   field(nil, 1, nil),
			"invalid-long-id":    mustMarshal(t, &abcastpb.FetchRequest{Id: repeat('i', 129)}),
			"invalid-truncated":  field(nil, 1, []byte("abc"))[:3],
			"invalid-no-part":    mustMarshal(t, &abcastpb.FetchRequest{Id: []byte("a")}),
			"invalid-short-hash": mustMarshal(t, &abcastpb.FetchRequest{Id: []byte("a"), Digest: []byte{1}, Part: &abcastpb.FetchRequest_Chunk{}}),
		},
		"FuzzDecodeFetchResponse": {
			"valid-manifest":          manifest,
			"valid-manifest-alone":    enc(EncodeFetchManifest(broadcast.Describe(repeat('p', 3000), broadcast.MinChunkSize), nil)),
			"valid-chunk":             enc(EncodeFetchChunk(repeat('c', 40))),
			"valid-not-found":         enc(EncodeFetchNotFound()),
			"invalid-empty":           {},
			"invalid-not-found-false": varintField(nil, 2, 0),
			"invalid-retired-field":   field(nil, 1, field(nil, 3, []byte("payload"))),
			"invalid-truncated":       manifest[:len(manifest)/2],
			"invalid-huge-manifest": mustMarshal(t, &abcastpb.FetchResponse{Result: &abcastpb.FetchResponse_Manifest{
				Manifest: &abcastpb.Manifest{Size: 1 << 40, ChunkSize: 1024}}}),
		},
	}
}

// TestSeedCorpus checks that the committed seed files are the ones
// seedCorpus describes (or rewrites them with -update-corpus). Extra files,
// such as inputs a fuzzing run found and saved, are left alone.
func TestSeedCorpus(t *testing.T) {
	corpus := seedCorpus(t)
	targets := make([]string, 0, len(corpus))
	for name := range corpus {
		targets = append(targets, name)
	}
	sort.Strings(targets)
	for _, target := range targets {
		dir := filepath.Join("testdata", "fuzz", target)
		if *updateCorpus {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		for name, b := range corpus[target] {
			path := filepath.Join(dir, name)
			want := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
			if *updateCorpus {
				if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Errorf("seed missing (run with -update-corpus): %v", err)
				continue
			}
			if string(got) != want {
				t.Errorf("%s is out of date (run with -update-corpus)", path)
			}
		}
	}
}
