// Package membership answers "who is a node, and who may connect".
//
// # Identity
//
// A node is identified by an Ed25519 key pair. Its NodeID is the SHA-256 of
// the raw 32-byte public key; NodeID.String (64 lowercase hex digits) is the
// only accepted spelling and is used as the node's actor address. An
// Identity bundles the private key with a self-signed X.509 certificate that
// carries the public key to peers during TLS. The certificate has no
// authority of its own: peers pin the key.
//
// LoadOrCreateIdentity keeps the key in a PEM PKCS#8 file. A missing file is
// created with mode 0600. An existing file is refused (ErrBadKeyFile) if it
// is unreadable, not an Ed25519 PKCS#8 key, or, on Unix-like systems, if its
// permissions grant anything to group or others: a leaked key lets anyone
// impersonate the node, so we make the operator fix the mode instead of
// carrying on.
//
// # Snapshots and sources
//
// A Snapshot is one version of the registry: a map from NodeID to Member
// (public key and host:port UDP address). Snapshots are immutable once built
// and validated; Validate names the first bad entry. A snapshot does not have
// to contain the local node: being listed is the registry's business, and a
// node that finds itself missing simply has no peers that accept it. Acting
// on its own removal (closing connections, dropping state) is up to the
// caller.
//
// A Source hands out the current snapshot and a Watch channel of newer ones.
// Versions only move forward: StaticSource.Update refuses an invalid
// snapshot or a version that is not strictly greater, and keeps the last
// good one. Watchers are never a backlog: each channel buffers one snapshot
// and a newer one replaces an unread older one.
//
// # Who may connect
//
// ServerTLSConfig and ClientTLSConfig implement mutual TLS 1.3 with pinned
// keys. On every handshake (session resumption is disabled) the peer must
// present exactly one certificate with an Ed25519 key, its NodeID must be in
// the MemberSet returned by the members function at that moment, and it must
// not be the local node's own NodeID. A dialler additionally requires the
// NodeID to be exactly the one it meant to reach. Refusals wrap
// ErrBadCertificate, ErrNotMember or ErrWrongPeer (the latter two as a
// *PeerError carrying the peer's NodeID) on the side that refused; the other
// side sees a TLS alert.
//
// The configs only guard new handshakes. A member removed from the snapshot
// keeps any connection it already has until the transport closes it; the
// transport should Watch the source and do so (quicremote does, within one
// snapshot). PeerID recovers the authenticated NodeID from a finished
// handshake's ConnectionState.
//
// # Registries users run
//
// StaticSource is for tests and fixed deployments. FileSource (the embedded
// default) watches one versioned JSON registry file, applies joins, leaves,
// address changes and key rotations live, keeps as members the union of the
// versions from the oldest still in use to the newest (advance it with
// RegistryFile.AdvanceOldest), and on bad input keeps the last good snapshot
// and reports why (LastError). For subnets spanning machines, package
// membership/etcdreg keeps members under an etcd key prefix with the etcd
// revision as the version; it lives in its own package so that users of the
// file registry do not link etcd's client. The tool examples/abcastctl
// creates keys and subnet directories and edits registry files.
package membership
