package membership

import (
	"bytes"
	"fmt"
	"testing"
)

// testIdentity returns a deterministic identity; different seeds give
// different nodes.
func testIdentity(t testing.TB, seed byte) *Identity {
	t.Helper()
	id, err := GenerateIdentity(bytes.NewReader(bytes.Repeat([]byte{seed}, 32)))
	if err != nil {
		t.Fatalf("GenerateIdentity(%d): %v", seed, err)
	}
	return id
}

// testMember describes identity seed at a distinct loopback port.
func testMember(t testing.TB, seed byte) Member {
	t.Helper()
	return testIdentity(t, seed).Member(fmt.Sprintf("127.0.0.1:%d", 9000+int(seed)))
}

func mustSnapshot(t testing.TB, version uint64, members ...Member) *Snapshot {
	t.Helper()
	s, err := NewSnapshot(version, members...)
	if err != nil {
		t.Fatalf("NewSnapshot: %v", err)
	}
	return s
}
