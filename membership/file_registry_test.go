package membership

import (
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func entryJSON(m Member) string {
	return `{"node_id":"` + m.ID.String() + `","addr":"` + m.Addr + `","public_key":"` + base64.StdEncoding.EncodeToString(m.PublicKey) + `"}`
}

// Bad input is refused with an error that names the entry and the reason.
func TestParseRegistryRefusesBadInput(t *testing.T) {
	a, b := testMember(t, 1), testMember(t, 2)
	wrongKey := EntryOf(a)
	wrongKey.PublicKey = EntryOf(b).PublicKey
	wk, _ := jsonEntry(wrongKey)
	cases := []struct {
		name, doc string
		want      []string
	}{
		{"malformed", `{"version": 1, "members": [`, []string{"malformed JSON"}},
		{"trailing", `{"version":1,"members":[` + entryJSON(a) + `]} {}`, []string{"trailing data"}},
		{"unknown field", `{"version":1,"memebrs":[]}`, []string{"malformed JSON", "memebrs"}},
		{"version zero", `{"version":0,"members":[` + entryJSON(a) + `]}`, []string{"version must be at least 1"}},
		{"empty", `{"version":3,"members":[]}`, []string{"version 3 lists no members", "allow_empty"}},
		{"duplicate id", `{"version":2,"members":[` + entryJSON(a) + `,` + strings.Replace(entryJSON(a), "9001", "9100", 1) + `]}`,
			[]string{"version 2, member #1", a.ID.String()[:16], "duplicate node_id (also member #0)"}},
		{"duplicate addr", `{"version":2,"members":[` + entryJSON(a) + `,` + strings.Replace(entryJSON(b), "9002", "9001", 1) + `]}`,
			[]string{"member #1", "duplicate addr"}},
		{"bad addr", `{"version":2,"members":[` + strings.Replace(entryJSON(a), "127.0.0.1:9001", "127.0.0.1", 1) + `]}`,
			[]string{"member #0", `addr "127.0.0.1"`, "not host:port"}},
		{"bad port", `{"version":2,"members":[` + strings.Replace(entryJSON(a), ":9001", ":70000", 1) + `]}`,
			[]string{"member #0", "port must be a number"}},
		{"key mismatch", `{"version":2,"members":[` + entryJSON(b) + `,` + wk + `]}`,
			[]string{"member #1", a.ID.String()[:16], "public_key does not match node_id"}},
		{"bad node id", `{"version":2,"members":[` + strings.Replace(entryJSON(a), a.ID.String(), "XYZ", 1) + `]}`,
			[]string{"member #0", "node_id", "invalid node id"}},
		{"bad base64", `{"version":2,"members":[` + strings.Replace(entryJSON(a), `"public_key":"`, `"public_key":"!!`, 1) + `]}`,
			[]string{"member #0", "base64"}},
		{"oldest ahead", `{"version":2,"oldest_version":3,"members":[` + entryJSON(a) + `]}`, []string{"oldest_version 3 is newer than version 2"}},
		{"history not older", `{"version":2,"members":[` + entryJSON(a) + `],"history":[{"version":2,"members":[]}]}`,
			[]string{"history entry #0", "not older"}},
		{"bad history entry", `{"version":3,"oldest_version":2,"members":[` + entryJSON(a) + `],"history":[{"version":2,"members":[` + wk + `]}]}`,
			[]string{"version 2, member #0", "does not match"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRegistry([]byte(tc.doc))
			if !errors.Is(err, ErrBadRegistry) {
				t.Fatalf("err = %v, want ErrBadRegistry", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func jsonEntry(e RegistryEntry) (string, error) {
	return `{"node_id":"` + e.NodeID + `","addr":"` + e.Addr + `","public_key":"` + e.PublicKey + `"}`, nil
}

func TestRegistryExplicitlyEmptyIsAccepted(t *testing.T) {
	r, err := ParseRegistry([]byte(`{"version":4,"allow_empty":true,"members":[]}`))
	if err != nil {
		t.Fatal(err)
	}
	s, err := r.Snapshot()
	if err != nil || s.Len() != 0 || s.Version != 4 {
		t.Fatalf("snapshot %+v, %v", s, err)
	}
}

// The member set in force is the union from the oldest version in use to
// the newest; advancing the oldest version drops members no longer listed.
func TestRegistryUnionFromOldestVersion(t *testing.T) {
	a, b, c := testMember(t, 1), testMember(t, 2), testMember(t, 3)
	r, err := NewRegistryFile(a, b, c)
	if err != nil {
		t.Fatal(err)
	}
	// Without an oldest version, a removal takes effect at once.
	if err := r.Remove(c.ID); err != nil {
		t.Fatal(err)
	}
	s, _ := r.Snapshot()
	if s.Version != 2 || s.Len() != 2 || s.Contains(c.ID) || len(r.History) != 0 {
		t.Fatalf("v%d members %d history %d", s.Version, s.Len(), len(r.History))
	}
	// Keep version 2 in use, then remove b: b stays in force.
	if err := r.AdvanceOldest(2); err != nil {
		t.Fatal(err)
	}
	if err := r.Remove(b.ID); err != nil {
		t.Fatal(err)
	}
	s, _ = r.Snapshot()
	if s.Version != 4 || !s.Contains(b.ID) || !s.Contains(a.ID) || s.Len() != 2 {
		t.Fatalf("v%d: want a and b in force, got %v", s.Version, s.IDs())
	}
	// Address change: the newer address wins in the union.
	moved := a
	moved.Addr = "127.0.0.1:9999"
	if err := r.Put(moved); err != nil {
		t.Fatal(err)
	}
	s, _ = r.Snapshot()
	if m, _ := s.Member(a.ID); m.Addr != moved.Addr {
		t.Fatalf("a at %s, want %s", m.Addr, moved.Addr)
	}
	// Advancing past the removal drops b; history older than oldest is pruned.
	if err := r.AdvanceOldest(5); err != nil {
		t.Fatal(err)
	}
	s, _ = r.Snapshot()
	if s.Contains(b.ID) || s.Len() != 1 || s.Version != 6 {
		t.Fatalf("v%d: want only a, got %v", s.Version, s.IDs())
	}
	for _, h := range r.History {
		if h.Version < 5 {
			t.Fatalf("history keeps version %d below oldest 5", h.Version)
		}
	}
	if err := r.AdvanceOldest(4); err == nil {
		t.Fatal("oldest version went back")
	}
	if err := r.AdvanceOldest(99); err == nil {
		t.Fatal("oldest version past the version")
	}
}

// A key rotation at the same address: the old NodeID leaves, the new one
// joins, even while the old version is still in use (they cannot share the
// address).
func TestRegistryKeyRotation(t *testing.T) {
	a, b := testMember(t, 1), testMember(t, 2)
	r, _ := NewRegistryFile(a, b)
	r.OldestVersion = 1
	rotated := testIdentity(t, 7).Member(b.Addr)
	if err := r.Replace(b.ID, rotated); err != nil {
		t.Fatal(err)
	}
	s, err := r.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if s.Contains(b.ID) || !s.Contains(rotated.ID) || s.Len() != 2 {
		t.Fatalf("after rotation: %v", s.IDs())
	}
	if err := r.Replace(b.ID, rotated); err == nil {
		t.Fatal("replacing a non-member succeeded")
	}
}

func TestRegistryEditsRefuseWithoutChangingTheDocument(t *testing.T) {
	a, b := testMember(t, 1), testMember(t, 2)
	r, _ := NewRegistryFile(a)
	clash := b
	clash.Addr = a.Addr
	for name, err := range map[string]error{
		"put same":      r.Put(a),
		"put clash":     r.Put(clash),
		"remove absent": r.Remove(b.ID),
		"remove last":   r.Remove(a.ID), // would leave an empty subnet
	} {
		if !errors.Is(err, ErrBadRegistry) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
	if r.Version != 1 || len(r.Members) != 1 {
		t.Fatalf("document changed: %+v", r)
	}
}

func TestWriteAndReadRegistryFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "registry.json")
	r, _ := NewRegistryFile(testMember(t, 1), testMember(t, 2))
	if err := WriteRegistryFile(path, r); err != nil {
		t.Fatal(err)
	}
	got, err := ReadRegistryFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s1, _ := r.Snapshot()
	s2, _ := got.Snapshot()
	if s1.Version != s2.Version || len(s1.Members) != len(s2.Members) {
		t.Fatalf("round trip: %+v vs %+v", s1, s2)
	}
	if err := os.WriteFile(path, []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadRegistryFile(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("error %v does not name the file", err)
	}
	if err := WriteRegistryFile(path, &RegistryFile{Version: 1}); !errors.Is(err, ErrBadRegistry) {
		t.Fatalf("wrote an invalid registry: %v", err)
	}
}

func TestDiffSnapshots(t *testing.T) {
	a, b, c := testMember(t, 1), testMember(t, 2), testMember(t, 3)
	moved := b
	moved.Addr = "127.0.0.1:1"
	d := DiffSnapshots(mustSnapshot(t, 1, a, b), mustSnapshot(t, 2, moved, c))
	if len(d.Joined) != 1 || d.Joined[0] != c.ID || len(d.Left) != 1 || d.Left[0] != a.ID || len(d.Moved) != 1 || d.Moved[0] != b.ID {
		t.Fatalf("%+v", d)
	}
}
