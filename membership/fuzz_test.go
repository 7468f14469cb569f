package membership

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"net"
	"testing"
)

// Property: ParseNodeID never panics, errors wrap ErrInvalidNodeID, and
// whatever it accepts is already canonical (String gives the input back).
func FuzzParseNodeID(f *testing.F) {
	f.Add("")
	f.Add(NodeID{}.String())
	f.Add(testIdentity(f, 1).ID.String())
	f.Add("ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseNodeID(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidNodeID) {
				t.Fatalf("error %v does not wrap ErrInvalidNodeID", err)
			}
			return
		}
		if id.String() != s {
			t.Fatalf("accepted %q but String() = %q", s, id.String())
		}
	})
}

// Property: snapshot construction never panics on arbitrary ids, keys and
// addresses; whatever it accepts satisfies every documented rule.
func FuzzNewSnapshot(f *testing.F) {
	good := testMember(f, 1)
	f.Add(good.ID[:], []byte(good.PublicKey), good.Addr, byte(2), "127.0.0.1:9002", false)
	f.Add(good.ID[:], []byte(good.PublicKey), "[::1]:0", byte(1), "127.0.0.1:9001", true)
	f.Add([]byte{1, 2}, []byte{3}, ":", byte(0), "", false)
	f.Fuzz(func(t *testing.T, id, pub []byte, addr string, seed byte, addr2 string, sameKey bool) {
		var m1 Member
		copy(m1.ID[:], id)
		m1.PublicKey = ed25519.PublicKey(pub)
		m1.Addr = addr
		m2 := testIdentity(t, seed).Member(addr2)
		if sameKey {
			m2.PublicKey = m1.PublicKey
		}
		s, err := NewSnapshot(1, m1, m2)
		if err != nil {
			if !errors.Is(err, ErrInvalidSnapshot) {
				t.Fatalf("error %v does not wrap ErrInvalidSnapshot", err)
			}
			return
		}
		if err := s.Validate(); err != nil {
			t.Fatalf("accepted snapshot fails Validate: %v", err)
		}
		if s.Len() != 2 {
			t.Fatalf("accepted %d members, want 2", s.Len())
		}
		addrs := map[string]bool{}
		for _, id := range s.IDs() {
			m, _ := s.Member(id)
			if m.ID != id || NodeIDFromPublicKey(m.PublicKey) != id || len(m.PublicKey) != ed25519.PublicKeySize {
				t.Fatalf("accepted member %s with a key that does not match", id.Short())
			}
			if _, _, err := net.SplitHostPort(m.Addr); err != nil || addrs[m.Addr] {
				t.Fatalf("accepted bad or duplicate addr %q", m.Addr)
			}
			addrs[m.Addr] = true
		}
	})
}

// Property: key-file parsing never panics, and what it accepts re-encodes to
// a key that parses back identically.
func FuzzParsePrivateKeyPEM(f *testing.F) {
	data, _ := MarshalPrivateKeyPEM(testIdentity(f, 1).PrivateKey)
	f.Add(data)
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		key, err := ParsePrivateKeyPEM(data)
		if err != nil {
			return
		}
		id, err := NewIdentity(key)
		if err != nil {
			return // a well-formed container around an inconsistent key
		}
		again, err := MarshalPrivateKeyPEM(id.PrivateKey)
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParsePrivateKeyPEM(again)
		if err != nil || !bytes.Equal(back, id.PrivateKey) {
			t.Fatalf("re-encoded key does not round-trip: %v", err)
		}
	})
}
