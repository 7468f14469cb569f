package wire

import (
	"errors"
	"math"
	"testing"

	"github.com/abcast/abcast/broadcast"
)

func TestDefaultLimitsValid(t *testing.T) {
	lim := DefaultLimits()
	if err := lim.Validate(); err != nil {
		t.Fatalf("DefaultLimits().Validate() = %v", err)
	}
	if lim.MaxIDLen != 128 || lim.MaxAttributeLen != 1024 || lim.MaxPayloadLen != 128<<20 {
		t.Fatalf("DefaultLimits() = %+v", lim)
	}
}

func TestLimitsValidateRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		lim  Limits
	}{
		{"zero value", Limits{}},
		{"zero id", Limits{MaxIDLen: 0, MaxAttributeLen: 1, MaxPayloadLen: 1}},
		{"negative attribute", Limits{MaxIDLen: 1, MaxAttributeLen: -1, MaxPayloadLen: 1}},
		{"zero payload", Limits{MaxIDLen: 1, MaxAttributeLen: 1, MaxPayloadLen: 0}},
		{"id beyond protobuf", Limits{MaxIDLen: math.MaxInt, MaxAttributeLen: 1, MaxPayloadLen: 1}},
		{"payload beyond protobuf", Limits{MaxIDLen: 1, MaxAttributeLen: 1, MaxPayloadLen: math.MaxInt32}},
		{"sum beyond protobuf", Limits{MaxIDLen: 1 << 30, MaxAttributeLen: 1 << 30, MaxPayloadLen: 1 << 30}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.lim.Validate()
			if !errors.Is(err, ErrLimits) {
				t.Fatalf("Validate() = %v, want ErrLimits", err)
			}
		})
	}
}

// Bad limits are the caller's fault: decoders must say so without blaming
// the peer.
func TestDecodersRefuseBadLimits(t *testing.T) {
	valid, err := EncodeFetchRequest(FetchRequest{ID: "x", Chunk: broadcast.ManifestPart})
	if err != nil {
		t.Fatal(err)
	}
	bad := Limits{MaxIDLen: 1}
	_, err1 := DecodeSlotUpdate(valid, bad)
	_, err2 := DecodeFetchRequest(valid, bad)
	_, err3 := DecodeFetchResponse(valid, bad)
	for i, err := range []error{err1, err2, err3} {
		if !errors.Is(err, ErrLimits) || errors.Is(err, broadcast.ErrInvalid) {
			t.Errorf("decoder %d: error %v, want ErrLimits and not ErrInvalid", i, err)
		}
	}
}

// MaxMessageLen is exactly the length of the largest valid message, so a
// transport that uses it as its frame limit refuses nothing valid.
func TestMaxMessageLenIsTight(t *testing.T) {
	for _, lim := range []Limits{smallLimits, {MaxIDLen: 200, MaxAttributeLen: 300, MaxPayloadLen: 70000}} {
		biggest := broadcast.SlotUpdate{
			Commit: math.MaxUint64,
			Slot:   math.MaxUint64,
			Kind:   broadcast.KindPush,
			Artifact: broadcast.Artifact{
				ID:               broadcast.ArtifactID(repeat('i', lim.MaxIDLen)),
				Attribute:        repeat('a', lim.MaxAttributeLen),
				Payload:          repeat('p', lim.MaxPayloadLen),
				LatencySensitive: true,
			},
		}
		b, err := EncodeSlotUpdate(biggest)
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(b)) != lim.slotUpdateLen() || lim.MaxMessageLen() != int(max(lim.slotUpdateLen(), lim.fetchResponseLen())) {
			t.Fatalf("limits %+v: largest slot update is %d bytes, bound %d, MaxMessageLen() = %d", lim, len(b), lim.slotUpdateLen(), lim.MaxMessageLen())
		}
		if _, err := DecodeSlotUpdate(b, lim); err != nil {
			t.Fatalf("largest valid update refused: %v", err)
		}
		// One byte of padding (an unknown varint field would need two, so
		// a truncated tag will do: the length check comes first).
		_, err = DecodeSlotUpdate(append(b, 0x38), lim)
		checkInvalid(t, err, "longer than any valid one")

		// The decoder checks sizes, not consistency: its largest message
		// has every field of a manifest at its limit.
		m := broadcast.Manifest{Size: lim.MaxPayloadLen, ChunkSize: broadcast.MaxChunkSize, Hashes: repeat('h', int(lim.maxHashesLen()))}
		resp, err := EncodeFetchManifest(m, repeat('p', int(lim.maxChunkLen())))
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(resp)) != lim.fetchResponseLen() {
			t.Fatalf("largest fetch response is %d bytes, bound %d", len(resp), lim.fetchResponseLen())
		}
		if _, err := DecodeFetchResponse(resp, lim); err != nil {
			t.Fatalf("largest valid fetch response refused: %v", err)
		}
		req, err := EncodeFetchRequest(FetchRequest{ID: biggest.Artifact.ID, Digest: testDigest, Chunk: max(int(lim.maxChunks())-1, 1)})
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(req)) != lim.fetchRequestLen() {
			t.Fatalf("largest fetch request is %d bytes, bound %d", len(req), lim.fetchRequestLen())
		}
	}
}
