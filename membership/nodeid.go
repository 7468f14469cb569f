package membership

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
)

// NodeID names a node: the SHA-256 digest of its raw 32-byte Ed25519 public
// key. Because it is derived from the key, a peer that completes a TLS
// handshake with that key has proved it owns the NodeID.
type NodeID [32]byte

// NodeIDFromPublicKey derives the NodeID of an Ed25519 public key. It hashes
// whatever bytes it is given; callers that need to know the key is well
// formed check its length (Snapshot.Validate does).
func NodeIDFromPublicKey(pub ed25519.PublicKey) NodeID {
	return NodeID(sha256.Sum256(pub))
}

// String is the canonical form: 64 lowercase hex digits. ParseNodeID accepts
// exactly this form, so the string is safe to use as an actor address.
func (id NodeID) String() string { return hex.EncodeToString(id[:]) }

// Short is the first 10 hex digits, enough to tell nodes apart in logs.
func (id NodeID) Short() string { return hex.EncodeToString(id[:5]) }

// Less orders NodeIDs byte-wise. Between two members, the lower one dials.
func (id NodeID) Less(o NodeID) bool { return bytes.Compare(id[:], o[:]) < 0 }

// Compare returns -1, 0 or +1 like bytes.Compare; handy for slices.SortFunc.
func (id NodeID) Compare(o NodeID) int { return bytes.Compare(id[:], o[:]) }

// IsZero reports whether id is the all-zero value (no node has it in practice).
func (id NodeID) IsZero() bool { return id == NodeID{} }

// ParseNodeID parses the canonical String form. Upper-case digits, prefixes
// and surrounding space are rejected so that each node has exactly one
// spelling, which keeps actor addresses unambiguous.
func ParseNodeID(s string) (NodeID, error) {
	var id NodeID
	if len(s) != 2*len(id) {
		return NodeID{}, fmt.Errorf("%w: want %d hex digits, got %d characters", ErrInvalidNodeID, 2*len(id), len(s))
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return NodeID{}, fmt.Errorf("%w: character %d (%q) is not a lowercase hex digit", ErrInvalidNodeID, i, c)
		}
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return NodeID{}, fmt.Errorf("%w: %w", ErrInvalidNodeID, err)
	}
	return id, nil
}

// MarshalText implements encoding.TextMarshaler (canonical hex), so NodeIDs
// work as JSON strings and map keys.
func (id NodeID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler via ParseNodeID.
func (id *NodeID) UnmarshalText(b []byte) error {
	v, err := ParseNodeID(string(b))
	if err != nil {
		return err
	}
	*id = v
	return nil
}
