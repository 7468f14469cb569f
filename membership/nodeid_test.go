package membership

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestNodeIDStringIsCanonicalHexAndRoundTrips(t *testing.T) {
	id := testIdentity(t, 1).ID
	s := id.String()
	if len(s) != 64 || s != strings.ToLower(s) {
		t.Fatalf("String() = %q, want 64 lowercase hex digits", s)
	}
	got, err := ParseNodeID(s)
	if err != nil {
		t.Fatalf("ParseNodeID(%q): %v", s, err)
	}
	if got != id {
		t.Fatalf("round trip: got %v, want %v", got, id)
	}
	if short := id.Short(); len(short) != 10 || !strings.HasPrefix(s, short) {
		t.Fatalf("Short() = %q, want the first 10 digits of %q", short, s)
	}
}

func TestParseNodeIDRejectsNonCanonicalForms(t *testing.T) {
	good := testIdentity(t, 2).ID.String()
	for name, in := range map[string]string{
		"empty":      "",
		"too short":  good[:63],
		"too long":   good + "0",
		"upper case": strings.ToUpper(good),
		"non-hex":    "g" + good[1:],
		"0x prefix":  "0x" + good[2:],
		"space":      " " + good[1:],
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseNodeID(in); !errors.Is(err, ErrInvalidNodeID) {
				t.Fatalf("ParseNodeID(%q) error = %v, want ErrInvalidNodeID", in, err)
			}
		})
	}
}

func TestNodeIDLessIsByteWise(t *testing.T) {
	var a, b NodeID
	a[0], b[0] = 1, 2
	b[31] = 0 // the first differing byte decides
	a[31] = 0xff
	if !a.Less(b) || b.Less(a) || a.Less(a) {
		t.Fatalf("Less is not a byte-wise strict order")
	}
	if a.Compare(b) != -1 || b.Compare(a) != 1 || a.Compare(a) != 0 {
		t.Fatalf("Compare disagrees with Less")
	}
}

func TestNodeIDJSONRoundTrip(t *testing.T) {
	in := map[NodeID]int{testIdentity(t, 3).ID: 1, testIdentity(t, 4).ID: 2}
	data, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out map[NodeID]int
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatal(err)
	}
	if len(out) != 2 || out[testIdentity(t, 3).ID] != 1 || out[testIdentity(t, 4).ID] != 2 {
		t.Fatalf("round trip: got %v", out)
	}
	var id NodeID
	if err := json.Unmarshal([]byte(`"nope"`), &id); !errors.Is(err, ErrInvalidNodeID) {
		t.Fatalf("bad JSON id error = %v, want ErrInvalidNodeID", err)
	}
}

func TestNodeIDFromPublicKeyMatchesIdentity(t *testing.T) {
	a := testIdentity(t, 5)
	if NodeIDFromPublicKey(a.PublicKey()) != a.ID {
		t.Fatal("identity ID is not the hash of its public key")
	}
	ids := []NodeID{testIdentity(t, 6).ID, testIdentity(t, 7).ID, a.ID}
	slices.SortFunc(ids, NodeID.Compare)
	if !ids[0].Less(ids[1]) || !ids[1].Less(ids[2]) {
		t.Fatal("distinct keys gave equal or unordered ids")
	}
}
