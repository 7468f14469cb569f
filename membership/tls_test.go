package membership

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"testing"
	"time"
)

var testALPN = []string{"abcast/1"}

type handshakeResult struct {
	serverErr, clientErr     error
	serverState, clientState tls.ConnectionState
}

// handshake runs a real TLS handshake over an in-memory pipe. Success means
// both sides finished and one application byte crossed from server to client
// (in TLS 1.3 the client finishes before the server has checked its
// certificate, so only that byte proves the server accepted it).
func handshake(t *testing.T, server, client *tls.Config) handshakeResult {
	t.Helper()
	sc, cc := net.Pipe()
	srv, cli := tls.Server(sc, server), tls.Client(cc, client)
	var r handshakeResult
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer sc.Close()
		r.serverErr = srv.Handshake()
		if r.serverErr == nil {
			_, r.serverErr = srv.Write([]byte{42})
		}
		r.serverState = srv.ConnectionState()
	}()
	r.clientErr = cli.Handshake()
	if r.clientErr == nil {
		var b [1]byte
		_, r.clientErr = io.ReadFull(cli, b[:])
	}
	r.clientState = cli.ConnectionState()
	cc.Close()
	<-done
	return r
}

func members(s *Snapshot) func() MemberSet { return func() MemberSet { return s } }

func wantPeerError(t *testing.T, err, sentinel error, peer NodeID) {
	t.Helper()
	if !errors.Is(err, sentinel) {
		t.Fatalf("error = %v, want %v", err, sentinel)
	}
	var pe *PeerError
	if !errors.As(err, &pe) || pe.Peer != peer {
		t.Fatalf("error %v should be a *PeerError for peer %s", err, peer.Short())
	}
}

func TestTLSMemberToMemberSucceedsAndPeerIDIsVerified(t *testing.T) {
	a, b := testIdentity(t, 1), testIdentity(t, 2)
	snap := mustSnapshot(t, 1, a.Member("127.0.0.1:1"), b.Member("127.0.0.1:2"))
	r := handshake(t,
		ServerTLSConfig(b, members(snap), testALPN),
		ClientTLSConfig(a, members(snap), b.ID, testALPN))
	if r.serverErr != nil || r.clientErr != nil {
		t.Fatalf("server err %v, client err %v", r.serverErr, r.clientErr)
	}
	if got, err := PeerID(r.serverState); err != nil || got != a.ID {
		t.Fatalf("server PeerID = %s, %v; want %s", got.Short(), err, a.ID.Short())
	}
	if got, err := PeerID(r.clientState); err != nil || got != b.ID {
		t.Fatalf("client PeerID = %s, %v; want %s", got.Short(), err, b.ID.Short())
	}
	if r.clientState.Version != tls.VersionTLS13 || r.clientState.NegotiatedProtocol != testALPN[0] {
		t.Fatalf("version %x, ALPN %q", r.clientState.Version, r.clientState.NegotiatedProtocol)
	}
	if r.clientState.DidResume || r.serverState.DidResume {
		t.Fatal("session resumption must be off")
	}
}

func TestTLSServerRefusesNonMemberClient(t *testing.T) {
	a, b, outsider := testIdentity(t, 1), testIdentity(t, 2), testIdentity(t, 3)
	serverView := mustSnapshot(t, 1, a.Member("127.0.0.1:1"), b.Member("127.0.0.1:2"))
	// The outsider believes it is a member; the server's snapshot decides.
	outsiderView := mustSnapshot(t, 1, b.Member("127.0.0.1:2"), outsider.Member("127.0.0.1:3"))
	r := handshake(t,
		ServerTLSConfig(b, members(serverView), testALPN),
		ClientTLSConfig(outsider, members(outsiderView), b.ID, testALPN))
	wantPeerError(t, r.serverErr, ErrNotMember, outsider.ID)
	if r.clientErr == nil {
		t.Fatal("client was not told it was refused")
	}
}

func TestTLSClientRefusesNonMemberServer(t *testing.T) {
	a, b, outsider := testIdentity(t, 1), testIdentity(t, 2), testIdentity(t, 3)
	clientView := mustSnapshot(t, 1, a.Member("127.0.0.1:1"), b.Member("127.0.0.1:2"))
	outsiderView := mustSnapshot(t, 1, a.Member("127.0.0.1:1"), outsider.Member("127.0.0.1:3"))
	r := handshake(t,
		ServerTLSConfig(outsider, members(outsiderView), testALPN),
		ClientTLSConfig(a, members(clientView), outsider.ID, testALPN))
	wantPeerError(t, r.clientErr, ErrNotMember, outsider.ID)
	if r.serverErr == nil {
		t.Fatal("server was not told it was refused")
	}
}

func TestTLSClientRefusesMemberAnsweringAsAnotherNode(t *testing.T) {
	a, b, c := testIdentity(t, 1), testIdentity(t, 2), testIdentity(t, 3)
	snap := mustSnapshot(t, 1, a.Member("127.0.0.1:1"), b.Member("127.0.0.1:2"), c.Member("127.0.0.1:3"))
	// a dials c's address, but b (a valid member) answers.
	r := handshake(t,
		ServerTLSConfig(b, members(snap), testALPN),
		ClientTLSConfig(a, members(snap), c.ID, testALPN))
	wantPeerError(t, r.clientErr, ErrWrongPeer, b.ID)
	var pe *PeerError
	if !errors.As(r.clientErr, &pe) || pe.Want != c.ID {
		t.Fatalf("PeerError.Want = %s, want %s", pe.Want.Short(), c.ID.Short())
	}
	if r.serverErr == nil {
		t.Fatal("server was not told the client gave up")
	}
}

func TestTLSRemovedMemberRefusedOnNextHandshake(t *testing.T) {
	a, b, c := testIdentity(t, 1), testIdentity(t, 2), testIdentity(t, 3)
	src, err := NewStaticSource(mustSnapshot(t, 1, a.Member("127.0.0.1:1"), b.Member("127.0.0.1:2"), c.Member("127.0.0.1:3")))
	if err != nil {
		t.Fatal(err)
	}
	server := ServerTLSConfig(b, LatestMembers(src), testALPN)
	client := ClientTLSConfig(a, LatestMembers(src), b.ID, testALPN)
	if r := handshake(t, server, client); r.serverErr != nil || r.clientErr != nil {
		t.Fatalf("before removal: server %v, client %v", r.serverErr, r.clientErr)
	}
	// a is removed; the same config objects must now refuse it.
	if err := src.Update(mustSnapshot(t, 2, b.Member("127.0.0.1:2"), c.Member("127.0.0.1:3"))); err != nil {
		t.Fatal(err)
	}
	wantPeerError(t, handshake(t, server, client).serverErr, ErrNotMember, a.ID)

	// And in the dialling direction: b dials the removed a.
	r := handshake(t,
		ServerTLSConfig(a, members(mustSnapshot(t, 1, a.Member("127.0.0.1:1"), b.Member("127.0.0.1:2"))), testALPN),
		ClientTLSConfig(b, LatestMembers(src), a.ID, testALPN))
	wantPeerError(t, r.clientErr, ErrNotMember, a.ID)
}

func TestTLSRefusesPeerPresentingOurOwnIdentity(t *testing.T) {
	a := testIdentity(t, 1)
	snap := mustSnapshot(t, 1, a.Member("127.0.0.1:1"))
	r := handshake(t,
		ServerTLSConfig(a, members(snap), testALPN),
		ClientTLSConfig(a, members(snap), a.ID, testALPN))
	wantPeerError(t, r.clientErr, ErrWrongPeer, a.ID)
}

func TestTLSRefusesWhenMembersUnknown(t *testing.T) {
	a, b := testIdentity(t, 1), testIdentity(t, 2)
	snap := mustSnapshot(t, 1, a.Member("127.0.0.1:1"), b.Member("127.0.0.1:2"))
	for name, m := range map[string]func() MemberSet{
		"nil func":       nil,
		"nil interface":  func() MemberSet { return nil },
		"nil *Snapshot":  members(nil),
		"empty snapshot": members(mustSnapshot(t, 1)),
	} {
		t.Run(name, func(t *testing.T) {
			r := handshake(t, ServerTLSConfig(b, m, testALPN), ClientTLSConfig(a, members(snap), b.ID, testALPN))
			wantPeerError(t, r.serverErr, ErrNotMember, a.ID)
		})
	}
}

// A client with a non-Ed25519 certificate is refused as malformed before any
// membership question is asked.
func TestTLSServerRefusesNonEd25519Certificate(t *testing.T) {
	b := testIdentity(t, 2)
	snap := mustSnapshot(t, 1, b.Member("127.0.0.1:2"))
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: b.ID.String()},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	client := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true,
		NextProtos:         testALPN,
		Certificates:       []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
	}
	r := handshake(t, ServerTLSConfig(b, members(snap), testALPN), client)
	if !errors.Is(r.serverErr, ErrBadCertificate) {
		t.Fatalf("server error = %v, want ErrBadCertificate", r.serverErr)
	}
}

func TestTLSServerRequiresClientCertificate(t *testing.T) {
	b := testIdentity(t, 2)
	snap := mustSnapshot(t, 1, b.Member("127.0.0.1:2"))
	client := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, NextProtos: testALPN}
	if r := handshake(t, ServerTLSConfig(b, members(snap), testALPN), client); r.serverErr == nil {
		t.Fatal("client without a certificate was accepted")
	}
}

func TestTLSRefusesOlderTLSVersions(t *testing.T) {
	a, b := testIdentity(t, 1), testIdentity(t, 2)
	snap := mustSnapshot(t, 1, a.Member("127.0.0.1:1"), b.Member("127.0.0.1:2"))
	client := ClientTLSConfig(a, members(snap), b.ID, testALPN)
	client.MinVersion, client.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	if r := handshake(t, ServerTLSConfig(b, members(snap), testALPN), client); r.serverErr == nil {
		t.Fatal("TLS 1.2 client was accepted")
	}
}

func TestTLSConfigsDoNotAliasALPN(t *testing.T) {
	a := testIdentity(t, 1)
	alpn := []string{"x"}
	cfg := ServerTLSConfig(a, nil, alpn)
	alpn[0] = "y"
	if cfg.NextProtos[0] != "x" {
		t.Fatal("config shares the caller's ALPN slice")
	}
}

func TestPeerIDRejectsIncompleteOrCertlessState(t *testing.T) {
	if _, err := PeerID(tls.ConnectionState{}); !errors.Is(err, ErrBadCertificate) {
		t.Fatalf("empty state: %v", err)
	}
	if _, err := PeerID(tls.ConnectionState{HandshakeComplete: true}); !errors.Is(err, ErrBadCertificate) {
		t.Fatalf("no certificates: %v", err)
	}
	leaf := testIdentity(t, 1).Certificate.Leaf
	cs := tls.ConnectionState{HandshakeComplete: true, PeerCertificates: []*x509.Certificate{leaf, leaf}}
	if _, err := PeerID(cs); !errors.Is(err, ErrBadCertificate) {
		t.Fatalf("two certificates: %v", err)
	}
}
