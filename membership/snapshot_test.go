package membership

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestNewSnapshotAcceptsValidMembers(t *testing.T) {
	a, b, c := testMember(t, 1), testMember(t, 2), testMember(t, 3)
	s := mustSnapshot(t, 7, c, a, b)
	if s.Version != 7 || s.Len() != 3 {
		t.Fatalf("version %d len %d", s.Version, s.Len())
	}
	for _, m := range []Member{a, b, c} {
		if !s.Contains(m.ID) {
			t.Fatalf("missing %s", m.ID.Short())
		}
		got, ok := s.Member(m.ID)
		if !ok || got.Addr != m.Addr || !got.PublicKey.Equal(m.PublicKey) {
			t.Fatalf("Member(%s) = %+v, %v", m.ID.Short(), got, ok)
		}
	}
	if s.Contains(testMember(t, 4).ID) {
		t.Fatal("Contains reports a non-member")
	}
	ids := s.IDs()
	if len(ids) != 3 || !slices.IsSortedFunc(ids, NodeID.Compare) {
		t.Fatalf("IDs() not sorted: %v", ids)
	}
	if _, err := NewSnapshot(1); err != nil {
		t.Fatalf("an empty snapshot is valid: %v", err)
	}
	for _, addr := range []string{"[::1]:4433", "node-1.example.org:1", "10.0.0.1:65535"} {
		m := testMember(t, 5)
		m.Addr = addr
		if _, err := NewSnapshot(1, m); err != nil {
			t.Fatalf("addr %q: %v", addr, err)
		}
	}
}

func TestNewSnapshotCopiesKeys(t *testing.T) {
	m := testMember(t, 1)
	s := mustSnapshot(t, 1, m)
	m.PublicKey[0] ^= 0xff
	if err := s.Validate(); err != nil {
		t.Fatalf("caller's key change leaked into snapshot: %v", err)
	}
}

// wantEntryError checks that err is ErrInvalidSnapshot and names the entry.
func wantEntryError(t *testing.T, err error, id NodeID, mention string) {
	t.Helper()
	if !errors.Is(err, ErrInvalidSnapshot) {
		t.Fatalf("error = %v, want ErrInvalidSnapshot", err)
	}
	if !strings.Contains(err.Error(), id.Short()) || !strings.Contains(err.Error(), mention) {
		t.Fatalf("error %q should name member %s and mention %q", err, id.Short(), mention)
	}
}

func TestNewSnapshotRejectsDuplicateID(t *testing.T) {
	a := testMember(t, 1)
	b := a
	b.Addr = "127.0.0.1:1"
	_, err := NewSnapshot(1, testMember(t, 2), a, b)
	wantEntryError(t, err, a.ID, "duplicate id")
	if !strings.Contains(err.Error(), "#2") {
		t.Fatalf("error %q should give the argument position #2", err)
	}
}

func TestNewSnapshotRejectsKeyNotMatchingID(t *testing.T) {
	a, b := testMember(t, 1), testMember(t, 2)
	a.PublicKey = b.PublicKey
	_, err := NewSnapshot(1, a)
	wantEntryError(t, err, a.ID, "public key hashes to")

	a = testMember(t, 1)
	a.PublicKey = a.PublicKey[:31]
	_, err = NewSnapshot(1, a)
	wantEntryError(t, err, a.ID, "31 bytes")
}

func TestNewSnapshotRejectsBadAddr(t *testing.T) {
	for _, addr := range []string{"", "127.0.0.1", "127.0.0.1:", ":9000", "host:port", "host:0", "host:65536", "host:-1", "a:b:c"} {
		m := testMember(t, 1)
		m.Addr = addr
		_, err := NewSnapshot(1, m)
		wantEntryError(t, err, m.ID, "addr")
	}
}

func TestValidateRejectsDuplicateAddr(t *testing.T) {
	a, b := testMember(t, 1), testMember(t, 2)
	b.Addr = a.Addr
	_, err := NewSnapshot(1, a, b)
	if !errors.Is(err, ErrInvalidSnapshot) || !strings.Contains(err.Error(), "also used by") {
		t.Fatalf("error = %v, want duplicate address", err)
	}
}

func TestValidateRejectsMapKeyMismatch(t *testing.T) {
	a, b := testMember(t, 1), testMember(t, 2)
	s := &Snapshot{Version: 1, Members: map[NodeID]Member{b.ID: a}}
	wantEntryError(t, s.Validate(), b.ID, "differs from its map key")
}

func TestNilSnapshotIsEmptyAndInvalid(t *testing.T) {
	var s *Snapshot
	if s.Contains(testMember(t, 1).ID) || s.Len() != 0 || s.IDs() != nil {
		t.Fatal("nil snapshot must behave as empty")
	}
	if _, ok := s.Member(NodeID{}); ok {
		t.Fatal("nil snapshot has a member")
	}
	if err := s.Validate(); !errors.Is(err, ErrInvalidSnapshot) {
		t.Fatalf("nil Validate = %v", err)
	}
}
