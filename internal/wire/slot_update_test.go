package wire

import (
	"bytes"
	"math"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/proto/abcastpb"
)

func TestSlotUpdateRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		u    broadcast.SlotUpdate
	}{
		{"advert", broadcast.SlotUpdate{Commit: 7, Slot: 3, Kind: broadcast.KindAdvert,
			Artifact: broadcast.Artifact{ID: "id-1", Attribute: []byte("height=10")}, Digest: testDigest}},
		{"advert without attribute", broadcast.SlotUpdate{Commit: 1, Slot: 0, Kind: broadcast.KindAdvert,
			Artifact: broadcast.Artifact{ID: "a"}}},
		{"push", broadcast.SlotUpdate{Commit: 9, Slot: 49999, Kind: broadcast.KindPush,
			Artifact: broadcast.Artifact{ID: "id-2", Attribute: []byte{1}, Payload: []byte("hello"), LatencySensitive: true}}},
		{"push with empty payload", broadcast.SlotUpdate{Commit: 2, Slot: 1, Kind: broadcast.KindPush,
			Artifact: broadcast.Artifact{ID: "\x00\xffbin"}}},
		{"cleared", broadcast.SlotUpdate{Commit: 10, Slot: 3, Kind: broadcast.KindCleared}},
		{"cleared slot zero commit zero", broadcast.SlotUpdate{Kind: broadcast.KindCleared}},
		{"sync", broadcast.SlotUpdate{Commit: 11, Kind: broadcast.KindSync}},
		{"extreme numbers", broadcast.SlotUpdate{Commit: math.MaxUint64, Slot: math.MaxUint64, Kind: broadcast.KindCleared}},
		{"id and attribute at the limit", broadcast.SlotUpdate{Commit: 1, Slot: 1, Kind: broadcast.KindPush,
			Artifact: broadcast.Artifact{
				ID:        broadcast.ArtifactID(repeat('i', smallLimits.MaxIDLen)),
				Attribute: repeat('a', smallLimits.MaxAttributeLen),
				Payload:   repeat('p', smallLimits.MaxPayloadLen),
			}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := EncodeSlotUpdate(tc.u)
			if err != nil {
				t.Fatalf("encode: %v", err)
			}
			got, err := DecodeSlotUpdate(b, smallLimits)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !sameUpdate(got, tc.u) {
				t.Fatalf("round trip changed the update:\n got %+v\nwant %+v", got, tc.u)
			}
			again, err := EncodeSlotUpdate(got)
			if err != nil || !bytes.Equal(again, b) {
				t.Fatalf("re-encoding differs (err %v):\n% x\n% x", err, again, b)
			}
		})
	}
}

// The encoder sends only what the kind carries; anything else the caller
// left in the update stays behind.
func TestEncodeSlotUpdateSendsOnlyWhatTheKindCarries(t *testing.T) {
	full := broadcast.Artifact{ID: "id", Attribute: []byte("attr"), Payload: []byte("payload"), LatencySensitive: true}
	for _, tc := range []struct {
		name string
		in   broadcast.SlotUpdate
		want broadcast.SlotUpdate
	}{
		{"advert drops payload and latency flag",
			broadcast.SlotUpdate{Commit: 1, Slot: 2, Kind: broadcast.KindAdvert, Artifact: full, Digest: testDigest},
			broadcast.SlotUpdate{Commit: 1, Slot: 2, Kind: broadcast.KindAdvert, Artifact: broadcast.Artifact{ID: "id", Attribute: []byte("attr")}, Digest: testDigest}},
		{"push drops the digest",
			broadcast.SlotUpdate{Commit: 1, Slot: 2, Kind: broadcast.KindPush, Artifact: full, Digest: testDigest},
			broadcast.SlotUpdate{Commit: 1, Slot: 2, Kind: broadcast.KindPush, Artifact: full}},
		{"cleared drops the artifact",
			broadcast.SlotUpdate{Commit: 1, Slot: 2, Kind: broadcast.KindCleared, Artifact: full},
			broadcast.SlotUpdate{Commit: 1, Slot: 2, Kind: broadcast.KindCleared}},
		{"sync drops slot and artifact",
			broadcast.SlotUpdate{Commit: 1, Slot: 2, Kind: broadcast.KindSync, Artifact: full},
			broadcast.SlotUpdate{Commit: 1, Kind: broadcast.KindSync}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := EncodeSlotUpdate(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			got, err := DecodeSlotUpdate(b, DefaultLimits())
			if err != nil {
				t.Fatal(err)
			}
			if !sameUpdate(got, tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestEncodeSlotUpdateRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		u    broadcast.SlotUpdate
		want string
	}{
		{"zero kind", broadcast.SlotUpdate{Artifact: broadcast.Artifact{ID: "x"}}, "unknown kind kind(0)"},
		{"unknown kind", broadcast.SlotUpdate{Kind: 99}, "unknown kind kind(99)"},
		{"advert without id", broadcast.SlotUpdate{Kind: broadcast.KindAdvert, Artifact: broadcast.Artifact{Attribute: []byte("a")}}, "advert: empty id"},
		{"push without id", broadcast.SlotUpdate{Kind: broadcast.KindPush, Artifact: broadcast.Artifact{Payload: []byte("p")}}, "push: empty id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := EncodeSlotUpdate(tc.u)
			checkInvalid(t, err, tc.want)
			if b != nil {
				t.Fatalf("got bytes with an error: % x", b)
			}
		})
	}
}

func TestDecodeSlotUpdateRejects(t *testing.T) {
	advert := func(id, attr []byte) []byte {
		return mustMarshal(t, &abcastpb.SlotUpdate{CommitId: 1, Slot: 1,
			State: &abcastpb.SlotUpdate_Advert{Advert: &abcastpb.Advert{Id: id, Attribute: attr, Digest: testDigest[:]}}})
	}
	push := func(a *abcastpb.Artifact) []byte {
		return mustMarshal(t, &abcastpb.SlotUpdate{CommitId: 1, Slot: 1,
			State: &abcastpb.SlotUpdate_Artifact{Artifact: a}})
	}
	valid := push(&abcastpb.Artifact{Id: []byte("id"), Payload: []byte("payload")})

	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"nil input", nil, "no state"},
		{"empty input", []byte{}, "no state"},
		{"numbers but no state", varintField(varintField(nil, 1, 5), 2, 6), "no state"},
		{"only unknown fields", varintField(nil, 99, 1), "no state"},
		{"garbage", []byte{0xff, 0xff, 0xff, 0xff}, "undecodable"},
		{"field number zero", []byte{0x00, 0x01}, "undecodable"},
		{"truncated", valid[:len(valid)-3], "undecodable"},
		{"length beyond end", field(nil, 4, []byte("x"))[:2], "undecodable"},
		// A known field number with the wrong wire type counts as an
		// unknown field and is skipped, as protobuf prescribes.
		{"advert with wrong wire type", varintField(nil, 3, 1), "no state"},
		{"commit with wrong wire type", field(nil, 1, []byte("x")), "no state"},
		{"artifact body garbage", field(nil, 4, []byte{0xff}), "undecodable"},
		{"advert without id", advert(nil, []byte("attr")), "advert: empty id"},
		{"advert with empty id field", field(nil, 3, field(nil, 1, nil)), "advert: empty id"},
		{"advert id over limit", advert(repeat('i', 9), nil), "advert: id is 9 bytes, limit 8"},
		{"advert attribute over limit", advert([]byte("id"), repeat('a', 17)), "advert: attribute is 17 bytes, limit 16"},
		{"advert without digest", field(nil, 3, field(nil, 1, []byte("id"))), "advert: digest of 0 bytes, want 32"},
		{"advert with a short digest", field(nil, 3, field(field(nil, 1, []byte("id")), 3, []byte("abc"))), "advert: digest of 3 bytes, want 32"},
		{"push without id", push(&abcastpb.Artifact{Payload: []byte("p")}), "push: empty id"},
		{"push with empty artifact", field(nil, 4, nil), "push: empty id"},
		{"push id over limit", push(&abcastpb.Artifact{Id: repeat('i', 9)}), "push: id is 9 bytes, limit 8"},
		{"push attribute over limit", push(&abcastpb.Artifact{Id: []byte("i"), Attribute: repeat('a', 17)}), "push: attribute is 17 bytes, limit 16"},
		{"push payload over limit", push(&abcastpb.Artifact{Id: []byte("i"), Payload: repeat('p', 65)}), "push: payload is 65 bytes, limit 64"},
		{"sync naming a slot", mustMarshal(t, &abcastpb.SlotUpdate{CommitId: 3, Slot: 4,
			State: &abcastpb.SlotUpdate_Sync{Sync: &abcastpb.Sync{}}}), "sync names slot 4"},
		{"frame longer than any valid update", repeat(0, smallLimits.MaxMessageLen()+1), "longer than any valid one"},
		// A valid advert padded with an unknown field until it is longer
		// than the largest push: refused unparsed.
		{"padded with unknown fields", field(advert([]byte("id"), nil), 100, repeat('u', smallLimits.MaxMessageLen())), "longer than any valid one"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, err := DecodeSlotUpdate(tc.b, smallLimits)
			checkInvalid(t, err, tc.want)
			if !sameUpdate(u, broadcast.SlotUpdate{}) {
				t.Fatalf("got a value with an error: %+v", u)
			}
		})
	}
}

func TestDecodeSlotUpdateAccepts(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    []byte
		want broadcast.SlotUpdate
	}{
		{"unknown fields are skipped",
			varintField(field(varintField(nil, 1, 4), 5, varintField(nil, 7, 1)), 50, 9),
			broadcast.SlotUpdate{Commit: 4, Kind: broadcast.KindCleared}},
		{"last oneof choice wins",
			field(field(varintField(nil, 2, 8), 3, field(nil, 1, []byte("gone"))), 5, nil),
			broadcast.SlotUpdate{Slot: 8, Kind: broadcast.KindCleared}},
		{"repeated id field keeps the last",
			field(nil, 4, field(field(nil, 1, []byte("first")), 1, []byte("last"))),
			broadcast.SlotUpdate{Kind: broadcast.KindPush, Artifact: broadcast.Artifact{ID: "last"}}},
		{"empty attribute field decodes to nil",
			field(nil, 3, field(field(field(nil, 1, []byte("id")), 2, nil), 3, testDigest[:])),
			broadcast.SlotUpdate{Kind: broadcast.KindAdvert, Artifact: broadcast.Artifact{ID: "id"}, Digest: testDigest}},
		{"sync with slot zero written out",
			field(varintField(nil, 2, 0), 6, nil),
			broadcast.SlotUpdate{Kind: broadcast.KindSync}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeSlotUpdate(tc.b, smallLimits)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !sameUpdate(got, tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
			if got.Artifact.Attribute != nil && len(got.Artifact.Attribute) == 0 {
				t.Fatal("empty attribute is not nil")
			}
		})
	}
}

// The core decides push-or-advert from broadcast.EncodedSize without the
// protobuf runtime; it must agree with the real encoding.
func TestEncodedSizeMatchesProtobuf(t *testing.T) {
	for _, a := range []broadcast.Artifact{
		{ID: "x"},
		{ID: "x", LatencySensitive: true},
		{ID: broadcast.ArtifactID(repeat('i', 128)), Attribute: repeat('a', 1024)},
		{ID: "id", Payload: repeat('p', 127)},
		{ID: "id", Payload: repeat('p', 128)},
		{ID: "id", Attribute: []byte{1}, Payload: repeat('p', 1000), LatencySensitive: true},
		{ID: "id", Payload: repeat('p', 1<<20)},
	} {
		m, err := artifactToPB("test", &a)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := broadcast.EncodedSize(a), proto.Size(m); got != want {
			t.Errorf("EncodedSize(id %d, attr %d, payload %d, ls %v) = %d, protobuf says %d",
				len(a.ID), len(a.Attribute), len(a.Payload), a.LatencySensitive, got, want)
		}
	}
}
