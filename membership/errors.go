package membership

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error this package returns for one of these
// conditions wraps the matching sentinel, so callers test with errors.Is.
var (
	// ErrNotMember: the peer's key does not belong to any member of the
	// latest snapshot.
	ErrNotMember = errors.New("membership: peer is not a member")
	// ErrWrongPeer: the peer is authentic but is not the node we meant to
	// reach (a dial to one NodeID answered by another, or a peer presenting
	// our own identity).
	ErrWrongPeer = errors.New("membership: peer is not the expected node")
	// ErrBadCertificate: the peer's certificate chain is missing, malformed
	// or does not carry an Ed25519 key.
	ErrBadCertificate = errors.New("membership: bad peer certificate")
	// ErrInvalidSnapshot: a snapshot failed validation or would move the
	// version backwards.
	ErrInvalidSnapshot = errors.New("membership: invalid snapshot")
	// ErrInvalidNodeID: a string is not the canonical form of a NodeID.
	ErrInvalidNodeID = errors.New("membership: invalid node id")
	// ErrBadKeyFile: a key file exists but cannot be used (unreadable,
	// not PEM, not PKCS#8, not Ed25519, or readable by group/others).
	ErrBadKeyFile = errors.New("membership: unusable key file")
)

// PeerError reports a refused peer during a TLS handshake. It wraps one of
// ErrNotMember or ErrWrongPeer, and carries the NodeID the peer proved it
// holds so that the transport can log or count it.
type PeerError struct {
	Peer NodeID // the NodeID derived from the peer's certificate key
	Want NodeID // for ErrWrongPeer on dial: the NodeID we dialled; zero otherwise
	Err  error  // ErrNotMember or ErrWrongPeer
}

func (e *PeerError) Error() string {
	if e.Want != (NodeID{}) {
		return fmt.Sprintf("%v: got %s, want %s", e.Err, e.Peer.Short(), e.Want.Short())
	}
	return fmt.Sprintf("%v: %s", e.Err, e.Peer.Short())
}

func (e *PeerError) Unwrap() error { return e.Err }
