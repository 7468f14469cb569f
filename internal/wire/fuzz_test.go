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
		var first *broadcast.ArtifactID
		for _, lim := range []Limits{smallLimits, DefaultLimits()} {
			id, err := DecodeFetchRequest(b, lim)
			if err != nil {
				if !errors.Is(err, broadcast.ErrInvalid) {
					t.Fatalf("error does not wrap ErrInvalid: %v", err)
				}
				if first != nil {
					t.Fatalf("accepted under %+v but refused under %+v: %v", smallLimits, lim, err)
				}
				continue
			}
			if first != nil && *first != id {
				t.Fatalf("limits changed the id: %q vs %q", *first, id)
			}
			first = &id
			b2, err := EncodeFetchRequest(id)
			if err != nil {
				t.Fatalf("decoded %q but cannot encode it: %v", id, err)
			}
			id2, err := DecodeFetchRequest(b2, lim)
			if err != nil || id2 != id {
				t.Fatalf("round trip of %q gave (%q, %v)", id, id2, err)
			}
			if b3, err := EncodeFetchRequest(id2); err != nil || !bytes.Equal(b2, b3) {
				t.Fatalf("encoding is not stable (err %v)", err)
			}
		}
	})
}

func FuzzDecodeFetchResponse(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		var first *broadcast.Artifact
		firstNotFound := false
		for _, lim := range []Limits{smallLimits, DefaultLimits()} {
			a, err := DecodeFetchResponse(b, lim)
			switch {
			case errors.Is(err, ErrNotFound):
				if a != nil {
					t.Fatalf("ErrNotFound with an artifact %+v", a)
				}
				if first != nil {
					t.Fatal("limits turned an artifact into not found")
				}
				firstNotFound = true
				b2, err := EncodeFetchResponse(nil)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := DecodeFetchResponse(b2, lim); !errors.Is(err, ErrNotFound) {
					t.Fatalf("re-encoded not found decodes to %v", err)
				}
				continue
			case err != nil:
				if !errors.Is(err, broadcast.ErrInvalid) {
					t.Fatalf("error does not wrap ErrInvalid: %v", err)
				}
				if a != nil {
					t.Fatalf("artifact %+v with an error", a)
				}
				if first != nil || firstNotFound {
					t.Fatalf("accepted under %+v but refused under %+v: %v", smallLimits, lim, err)
				}
				continue
			}
			if a == nil {
				t.Fatal("nil artifact without an error")
			}
			if firstNotFound || (first != nil && !sameArtifact(*first, *a)) {
				t.Fatalf("limits changed the answer: %+v vs %+v", first, a)
			}
			first = a
			b2, err := EncodeFetchResponse(a)
			if err != nil {
				t.Fatalf("decoded %+v but cannot encode it: %v", a, err)
			}
			a2, err := DecodeFetchResponse(b2, lim)
			if err != nil || !sameArtifact(*a, *a2) {
				t.Fatalf("round trip of %+v gave (%+v, %v)", a, a2, err)
			}
			if b3, err := EncodeFetchResponse(a2); err != nil || !bytes.Equal(b2, b3) {
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
	artifact := enc(EncodeFetchResponse(&broadcast.Artifact{ID: "blk-1", Attribute: []byte("h=1"), Payload: repeat('p', 40)}))
	return map[string]map[string][]byte{
		"FuzzDecodeSlotUpdate": {
			"valid-advert": enc(EncodeSlotUpdate(broadcast.SlotUpdate{Commit: 3, Slot: 1, Kind: broadcast.KindAdvert,
				Artifact: broadcast.Artifact{ID: "ingress-9", Attribute: []byte{0, 1, 2}}})),
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
			"valid-short":        enc(EncodeFetchRequest("a")),
			"valid-binary":       enc(EncodeFetchRequest("\x00\x80\xffid")),
			"valid-at-small-max": enc(EncodeFetchRequest(broadcast.ArtifactID(repeat('i', 8)))),
			"valid-long":         enc(EncodeFetchRequest(broadcast.ArtifactID(repeat('i', 100)))),
			"invalid-empty":      {},
			"invalid-empty-id":   field(nil, 1, nil),
			"invalid-long-id":    mustMarshal(t, &abcastpb.FetchRequest{Id: repeat('i', 129)}),
			"invalid-truncated":  field(nil, 1, []byte("abc"))[:3],
		},
		"FuzzDecodeFetchResponse": {
			"valid-artifact":          artifact,
			"valid-not-found":         enc(EncodeFetchResponse(nil)),
			"valid-latency-sensitive": enc(EncodeFetchResponse(&broadcast.Artifact{ID: "x", LatencySensitive: true})),
			"invalid-empty":           {},
			"invalid-not-found-false": varintField(nil, 2, 0),
			"invalid-artifact-no-id":  field(nil, 1, field(nil, 3, []byte("payload"))),
			"invalid-truncated":       artifact[:len(artifact)/2],
			"invalid-long-attribute": mustMarshal(t, &abcastpb.FetchResponse{Result: &abcastpb.FetchResponse_Artifact{
				Artifact: &abcastpb.Artifact{Id: []byte("x"), Attribute: repeat('a', 1025)}}}),
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
