package membership

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestGenerateIdentityIsDeterministicForAReader(t *testing.T) {
	a, b := testIdentity(t, 9), testIdentity(t, 9)
	if a.ID != b.ID {
		t.Fatal("same seed gave different NodeIDs")
	}
	if a.ID == testIdentity(t, 10).ID {
		t.Fatal("different seeds gave the same NodeID")
	}
	if _, err := GenerateIdentity(bytes.NewReader(make([]byte, 5))); err == nil {
		t.Fatal("short random reader: want error")
	}
	if _, err := GenerateIdentity(nil); err != nil {
		t.Fatalf("GenerateIdentity(nil): %v", err)
	}
}

func TestIdentityCertificateCarriesTheKey(t *testing.T) {
	id := testIdentity(t, 11)
	leaf := id.Certificate.Leaf
	if leaf == nil || len(id.Certificate.Certificate) != 1 {
		t.Fatal("certificate must be a single parsed leaf")
	}
	pub, ok := leaf.PublicKey.(ed25519.PublicKey)
	if !ok || NodeIDFromPublicKey(pub) != id.ID {
		t.Fatalf("certificate key %T does not hash to the identity's NodeID", leaf.PublicKey)
	}
	if leaf.Subject.CommonName != id.ID.String() {
		t.Fatalf("CommonName = %q, want the NodeID", leaf.Subject.CommonName)
	}
	if err := leaf.CheckSignature(leaf.SignatureAlgorithm, leaf.RawTBSCertificate, leaf.Signature); err != nil {
		t.Fatalf("certificate is not validly self-signed: %v", err)
	}
}

func TestNewIdentityRejectsMalformedKeys(t *testing.T) {
	if _, err := NewIdentity(nil); err == nil {
		t.Fatal("nil key: want error")
	}
	if _, err := NewIdentity(make([]byte, 10)); err == nil {
		t.Fatal("short key: want error")
	}
	key := slices32(testIdentity(t, 12).PrivateKey)
	key[40] ^= 1 // corrupt the public half
	if _, err := NewIdentity(key); err == nil {
		t.Fatal("key with mismatched public half: want error")
	}
}

func slices32(k ed25519.PrivateKey) ed25519.PrivateKey { return append(ed25519.PrivateKey(nil), k...) }

func TestLoadOrCreateIdentityCreatesPrivateFileAndReloadsSameID(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "node.key")
	first, err := LoadOrCreateIdentity(path)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS != "windows" && st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode = %04o, want 0600", st.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := pem.Decode(data); b == nil || b.Type != "PRIVATE KEY" {
		t.Fatalf("key file is not a PEM PRIVATE KEY block:\n%s", data)
	}
	second, err := LoadOrCreateIdentity(path)
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	if first.ID != second.ID {
		t.Fatalf("reload gave NodeID %s, want %s", second.ID.Short(), first.ID.Short())
	}
}

func writeKeyFile(t *testing.T, data []byte, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "node.key")
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // WriteFile is subject to umask
		t.Fatal(err)
	}
	return path
}

func wantBadKeyFile(t *testing.T, path string, mention string) {
	t.Helper()
	_, err := LoadOrCreateIdentity(path)
	if !errors.Is(err, ErrBadKeyFile) {
		t.Fatalf("error = %v, want ErrBadKeyFile", err)
	}
	if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), mention) {
		t.Fatalf("error %q should name the path and mention %q", err, mention)
	}
}

func TestLoadOrCreateIdentityRejectsGarbage(t *testing.T) {
	path := writeKeyFile(t, []byte("this is not a key\n"), 0o600)
	wantBadKeyFile(t, path, "no PEM block")
	if data, _ := os.ReadFile(path); string(data) != "this is not a key\n" {
		t.Fatal("a bad key file must never be overwritten")
	}
}

func TestLoadOrCreateIdentityRejectsEmptyFile(t *testing.T) {
	wantBadKeyFile(t, writeKeyFile(t, nil, 0o600), "no PEM block")
}

func TestLoadOrCreateIdentityRejectsWrongPEMType(t *testing.T) {
	data := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2, 3}})
	wantBadKeyFile(t, writeKeyFile(t, data, 0o600), "CERTIFICATE")
}

func TestLoadOrCreateIdentityRejectsNonEd25519Key(t *testing.T) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	data := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	wantBadKeyFile(t, writeKeyFile(t, data, 0o600), "want ed25519")
}

func TestLoadOrCreateIdentityRejectsCorruptPKCS8(t *testing.T) {
	data := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("garbage")})
	wantBadKeyFile(t, writeKeyFile(t, data, 0o600), "PKCS#8")
}

func TestLoadOrCreateIdentityRefusesGroupOrWorldReadableKey(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no Unix permission bits")
	}
	data, err := MarshalPrivateKeyPEM(testIdentity(t, 13).PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o644, 0o660} {
		wantBadKeyFile(t, writeKeyFile(t, data, mode), "permissions")
	}
	// Read-only for the owner is fine.
	id, err := LoadOrCreateIdentity(writeKeyFile(t, data, 0o400))
	if err != nil || id.ID != testIdentity(t, 13).ID {
		t.Fatalf("0400 key file: id %v, err %v", id, err)
	}
}

func TestLoadOrCreateIdentityRejectsDirectory(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadOrCreateIdentity(dir); !errors.Is(err, ErrBadKeyFile) {
		t.Fatalf("directory as key path: error = %v, want ErrBadKeyFile", err)
	}
}

func TestPrivateKeyPEMRoundTrip(t *testing.T) {
	key := testIdentity(t, 14).PrivateKey
	data, err := MarshalPrivateKeyPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParsePrivateKeyPEM(data)
	if err != nil || !got.Equal(key) {
		t.Fatalf("round trip: equal=%v err=%v", got.Equal(key), err)
	}
	if _, err := MarshalPrivateKeyPEM(nil); err == nil {
		t.Fatal("marshal nil key: want error")
	}
}
