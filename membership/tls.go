package membership

import (
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
)

// ServerTLSConfig returns the config for accepting connections. A client is
// admitted only if it presents exactly one certificate whose Ed25519 key
// hashes to a NodeID that members() contains at the moment of the handshake,
// and that is not self's own NodeID. alpn is copied into NextProtos.
//
// members is called on every handshake, so removing a node from the snapshot
// refuses its next handshake. It does not close connections that are already
// open; the transport must do that on a snapshot change.
func ServerTLSConfig(self *Identity, members func() MemberSet, alpn []string) *tls.Config {
	cfg := baseConfig(self, alpn)
	cfg.ClientAuth = tls.RequireAnyClientCert
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		return verifyPeer(self, cs.PeerCertificates, members, nil)
	}
	return cfg
}

// ClientTLSConfig returns the config for dialling want. The server is
// accepted only if its key hashes to want and want is a member according to
// members() at the moment of the handshake. The caller may set ServerName
// on the returned config; it plays no part in verification.
func ClientTLSConfig(self *Identity, members func() MemberSet, want NodeID, alpn []string) *tls.Config {
	cfg := baseConfig(self, alpn)
	// Chain verification against CAs is meaningless for self-signed certs;
	// VerifyConnection below pins the key instead.
	cfg.InsecureSkipVerify = true
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		return verifyPeer(self, cs.PeerCertificates, members, &want)
	}
	return cfg
}

func baseConfig(self *Identity, alpn []string) *tls.Config {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		MaxVersion: tls.VersionTLS13,
		NextProtos: slices.Clone(alpn),
		// A resumed session skips the certificate exchange; disabling tickets
		// makes every connection prove its key against the latest snapshot.
		// (VerifyConnection would also run on resumption, but there is no
		// need to keep session state around at all.)
		SessionTicketsDisabled: true,
	}
	if self != nil {
		cfg.Certificates = []tls.Certificate{self.Certificate}
	}
	return cfg
}

// verifyPeer is the single admission rule used by both directions. The
// membership check happens last, so that a wrong or malformed peer is
// reported as such even if it is also a non-member.
func verifyPeer(self *Identity, certs []*x509.Certificate, members func() MemberSet, want *NodeID) error {
	if self == nil {
		return errors.New("membership: TLS config built without an identity")
	}
	id, err := peerIDFromCerts(certs)
	if err != nil {
		return err
	}
	if id == self.ID {
		return &PeerError{Peer: id, Err: ErrWrongPeer}
	}
	if want != nil && id != *want {
		return &PeerError{Peer: id, Want: *want, Err: ErrWrongPeer}
	}
	var set MemberSet
	if members != nil {
		set = members()
	}
	if set == nil || !set.Contains(id) {
		return &PeerError{Peer: id, Err: ErrNotMember}
	}
	return nil
}

// peerIDFromCerts requires a single Ed25519 certificate; our nodes never
// send chains, so anything else is a foreign or hostile client. The TLS 1.3
// CertificateVerify message proves possession of this key, so the
// certificate's self-signature and validity dates are deliberately ignored.
func peerIDFromCerts(certs []*x509.Certificate) (NodeID, error) {
	if len(certs) != 1 {
		return NodeID{}, fmt.Errorf("%w: peer sent %d certificates, want exactly 1", ErrBadCertificate, len(certs))
	}
	if certs[0] == nil {
		return NodeID{}, fmt.Errorf("%w: nil certificate", ErrBadCertificate)
	}
	pub, ok := certs[0].PublicKey.(ed25519.PublicKey)
	if !ok || len(pub) != ed25519.PublicKeySize {
		return NodeID{}, fmt.Errorf("%w: certificate key is %T, want ed25519", ErrBadCertificate, certs[0].PublicKey)
	}
	return NodeIDFromPublicKey(pub), nil
}

// PeerID returns the NodeID the peer proved in a completed handshake made
// with ServerTLSConfig or ClientTLSConfig. It fails if the handshake has not
// completed or the peer sent no usable certificate.
func PeerID(cs tls.ConnectionState) (NodeID, error) {
	if !cs.HandshakeComplete {
		return NodeID{}, fmt.Errorf("%w: handshake not complete", ErrBadCertificate)
	}
	return peerIDFromCerts(cs.PeerCertificates)
}
