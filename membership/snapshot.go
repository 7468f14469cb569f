package membership

import (
	"crypto/ed25519"
	"fmt"
	"net"
	"slices"
	"strconv"
)

// Member is one registry entry: who a node is and where it listens.
type Member struct {
	ID        NodeID
	Addr      string // host:port of the node's UDP (QUIC) listener
	PublicKey ed25519.PublicKey
}

// Snapshot is one version of the registry's member list. A snapshot is
// immutable once built: share it freely, never modify its map or keys.
// The nil *Snapshot is an empty member set (Contains reports false).
type Snapshot struct {
	Version uint64
	Members map[NodeID]Member
}

// NewSnapshot builds and validates a snapshot. The public keys are copied, so
// later changes to the arguments do not leak into the snapshot. Errors wrap
// ErrInvalidSnapshot and name the offending argument by position and id.
func NewSnapshot(version uint64, members ...Member) (*Snapshot, error) {
	s := &Snapshot{Version: version, Members: make(map[NodeID]Member, len(members))}
	for i, m := range members {
		if err := validateMember(m); err != nil {
			return nil, fmt.Errorf("%w: member #%d (id %s, addr %q): %w", ErrInvalidSnapshot, i, m.ID.Short(), m.Addr, err)
		}
		if _, dup := s.Members[m.ID]; dup {
			return nil, fmt.Errorf("%w: member #%d (id %s, addr %q): duplicate id", ErrInvalidSnapshot, i, m.ID.Short(), m.Addr)
		}
		m.PublicKey = slices.Clone(m.PublicKey)
		s.Members[m.ID] = m
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return s, nil
}

// Validate checks every entry: the map key equals the entry's ID, the public
// key is a 32-byte Ed25519 key whose hash is the ID, the address is host:port
// with a non-empty host and a port in 1..65535, and no two members share an
// address (a copy-paste error that would make one of them unreachable).
// Entries are checked in NodeID order, so the error is deterministic; it wraps
// ErrInvalidSnapshot and names the entry. A snapshot need not contain any
// particular node, including the caller's own.
func (s *Snapshot) Validate() error {
	if s == nil {
		return fmt.Errorf("%w: nil snapshot", ErrInvalidSnapshot)
	}
	addrs := make(map[string]NodeID, len(s.Members))
	for _, key := range s.IDs() {
		m := s.Members[key]
		if m.ID != key {
			return fmt.Errorf("%w: member %s: entry's ID %s differs from its map key", ErrInvalidSnapshot, key.Short(), m.ID.Short())
		}
		if err := validateMember(m); err != nil {
			return fmt.Errorf("%w: member %s (addr %q): %w", ErrInvalidSnapshot, key.Short(), m.Addr, err)
		}
		if other, dup := addrs[m.Addr]; dup {
			return fmt.Errorf("%w: member %s: addr %q is also used by member %s", ErrInvalidSnapshot, key.Short(), m.Addr, other.Short())
		}
		addrs[m.Addr] = key
	}
	return nil
}

func validateMember(m Member) error {
	if len(m.PublicKey) != ed25519.PublicKeySize {
		return fmt.Errorf("public key has %d bytes, want %d", len(m.PublicKey), ed25519.PublicKeySize)
	}
	if got := NodeIDFromPublicKey(m.PublicKey); got != m.ID {
		return fmt.Errorf("public key hashes to %s, not to the member's id", got.Short())
	}
	return validateAddr(m.Addr)
}

func validateAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("addr is not host:port: %w", err)
	}
	if host == "" {
		return fmt.Errorf("addr %q has an empty host", addr)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return fmt.Errorf("addr %q: port must be a number in 1..65535", addr)
	}
	return nil
}

// Contains reports whether id is a member. It makes *Snapshot a MemberSet.
func (s *Snapshot) Contains(id NodeID) bool {
	if s == nil {
		return false
	}
	_, ok := s.Members[id]
	return ok
}

// Member returns the entry for id.
func (s *Snapshot) Member(id NodeID) (Member, bool) {
	if s == nil {
		return Member{}, false
	}
	m, ok := s.Members[id]
	return m, ok
}

// Len is the number of members.
func (s *Snapshot) Len() int {
	if s == nil {
		return 0
	}
	return len(s.Members)
}

// IDs returns the member ids in ascending (Less) order, in a fresh slice.
func (s *Snapshot) IDs() []NodeID {
	if s == nil {
		return nil
	}
	ids := make([]NodeID, 0, len(s.Members))
	for id := range s.Members {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, NodeID.Compare)
	return ids
}

// clone returns a deep copy, so a source can hold a snapshot its caller
// might still modify.
func (s *Snapshot) clone() *Snapshot {
	c := &Snapshot{Version: s.Version, Members: make(map[NodeID]Member, len(s.Members))}
	for k, m := range s.Members {
		m.PublicKey = slices.Clone(m.PublicKey)
		c.Members[k] = m
	}
	return c
}
