package wire

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/abcast/abcast/broadcast"
)

// smallLimits keeps the oversized cases small enough to spell out in tables.
var smallLimits = Limits{MaxIDLen: 8, MaxAttributeLen: 16, MaxPayloadLen: 64}

func sameArtifact(a, b broadcast.Artifact) bool {
	return a.ID == b.ID &&
		bytes.Equal(a.Attribute, b.Attribute) &&
		bytes.Equal(a.Payload, b.Payload) &&
		a.LatencySensitive == b.LatencySensitive
}

func sameUpdate(a, b broadcast.SlotUpdate) bool {
	return a.Commit == b.Commit && a.Slot == b.Slot && a.Kind == b.Kind && sameArtifact(a.Artifact, b.Artifact) && a.Digest == b.Digest
}

// mustMarshal encodes a hand-built protobuf message, the way a peer that does
// not use this package might.
func mustMarshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatalf("marshal %T: %v", m, err)
	}
	return b
}

// field appends a length-delimited field to b, for malformed messages that
// the generated types cannot express.
func field(b []byte, num protowire.Number, v []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

func varintField(b []byte, num protowire.Number, v uint64) []byte {
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

// checkInvalid asserts that err reports malformed input mentioning want.
func checkInvalid(t *testing.T, err error, want string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want one mentioning %q", want)
	}
	if !errors.Is(err, broadcast.ErrInvalid) {
		t.Fatalf("error %q does not wrap broadcast.ErrInvalid", err)
	}
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not mention %q", err, want)
	}
}

func repeat(c byte, n int) []byte { return bytes.Repeat([]byte{c}, n) }
