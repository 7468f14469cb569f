package membership

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"runtime"
	"time"
)

// Identity is this node's long-term key, its NodeID and the self-signed
// certificate it presents in every TLS handshake.
type Identity struct {
	ID          NodeID
	PrivateKey  ed25519.PrivateKey
	Certificate tls.Certificate
}

// PublicKey returns the node's Ed25519 public key.
func (i *Identity) PublicKey() ed25519.PublicKey {
	return i.PrivateKey.Public().(ed25519.PublicKey)
}

// Member returns the registry entry that describes this identity at addr.
func (i *Identity) Member(addr string) Member {
	return Member{ID: i.ID, Addr: addr, PublicKey: i.PublicKey()}
}

// The certificate carries no trust of its own (peers pin the key, not the
// certificate), so its validity window is fixed and very wide: a node whose
// clock is wrong must still be able to talk, and NewIdentity stays
// deterministic for a given key.
var (
	certNotBefore = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	certNotAfter  = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)
)

// NewIdentity wraps an Ed25519 private key and builds a self-signed X.509
// certificate for it. The key is copied. An inconsistent key (wrong length, or
// a public half that does not match the seed) is rejected.
func NewIdentity(key ed25519.PrivateKey) (*Identity, error) {
	if len(key) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("membership: ed25519 private key has %d bytes, want %d", len(key), ed25519.PrivateKeySize)
	}
	priv := ed25519.NewKeyFromSeed(key.Seed())
	if !bytes.Equal(priv, key) {
		return nil, errors.New("membership: ed25519 private key is corrupt: public half does not match the seed")
	}
	pub := priv.Public().(ed25519.PublicKey)
	id := NodeIDFromPublicKey(pub)

	// A serial number derived from the NodeID: positive, non-zero, and stable.
	serial := new(big.Int).SetBytes(id[:16])
	serial.SetBit(serial, 127, 0)
	serial.SetBit(serial, 0, 1)

	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: id.String()},
		NotBefore:             certNotBefore,
		NotAfter:              certNotAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		return nil, fmt.Errorf("membership: creating self-signed certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("membership: parsing own certificate: %w", err)
	}
	return &Identity{
		ID:         id,
		PrivateKey: priv,
		Certificate: tls.Certificate{
			Certificate: [][]byte{der},
			PrivateKey:  priv,
			Leaf:        leaf,
		},
	}, nil
}

// GenerateIdentity creates a fresh identity from 32 bytes of seed read from
// random (crypto/rand if nil). A deterministic reader gives a deterministic
// identity, which simulations use.
func GenerateIdentity(random io.Reader) (*Identity, error) {
	if random == nil {
		random = rand.Reader
	}
	seed := make([]byte, ed25519.SeedSize)
	if _, err := io.ReadFull(random, seed); err != nil {
		return nil, fmt.Errorf("membership: reading key seed: %w", err)
	}
	return NewIdentity(ed25519.NewKeyFromSeed(seed))
}

// maxKeyFileSize bounds how much of a key file is read; a PEM PKCS#8 Ed25519
// key is about 120 bytes.
const maxKeyFileSize = 64 << 10

const pemTypePrivateKey = "PRIVATE KEY"

// LoadOrCreateIdentity reads the node's key from path, or, if no file exists
// there, generates a key and writes it (PEM, PKCS#8, mode 0600; missing
// parent directories are created with mode 0700).
//
// The key file is the node's identity, so on Unix-like systems a file that
// grants any permission to group or others is refused (like ssh does for
// private keys) rather than silently used: fix it with chmod 600. Errors for
// an existing but unusable file wrap ErrBadKeyFile and name the path.
func LoadOrCreateIdentity(path string) (*Identity, error) {
	id, err := loadIdentity(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return id, err
	}
	id, err = createIdentity(path)
	if errors.Is(err, fs.ErrExist) {
		// Another process created the file between our two attempts.
		return loadIdentity(path)
	}
	return id, err
}

func loadIdentity(path string) (*Identity, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("%w %s: %w", ErrBadKeyFile, path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%w %s: %w", ErrBadKeyFile, path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w %s: not a regular file", ErrBadKeyFile, path)
	}
	if runtime.GOOS != "windows" && st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%w %s: permissions %04o allow access by group or others; want 0600",
			ErrBadKeyFile, path, st.Mode().Perm())
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("%w %s: %w", ErrBadKeyFile, path, err)
	}
	if len(data) > maxKeyFileSize {
		return nil, fmt.Errorf("%w %s: larger than %d bytes", ErrBadKeyFile, path, maxKeyFileSize)
	}
	key, err := ParsePrivateKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("%w %s: %w", ErrBadKeyFile, path, err)
	}
	id, err := NewIdentity(key)
	if err != nil {
		return nil, fmt.Errorf("%w %s: %w", ErrBadKeyFile, path, err)
	}
	return id, nil
}

func createIdentity(path string) (*Identity, error) {
	id, err := GenerateIdentity(nil)
	if err != nil {
		return nil, err
	}
	data, err := MarshalPrivateKeyPEM(id.PrivateKey)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("membership: creating key directory: %w", err)
	}
	// O_EXCL: never overwrite a key that appeared concurrently.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("membership: creating key file: %w", err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		// Do not leave a truncated key behind: it would fail every later start.
		_ = os.Remove(path)
		return nil, fmt.Errorf("membership: writing key file %s: %w", path, err)
	}
	return id, nil
}

// MarshalPrivateKeyPEM encodes an Ed25519 key as a PEM "PRIVATE KEY" block
// (PKCS#8), the format LoadOrCreateIdentity reads.
func MarshalPrivateKeyPEM(key ed25519.PrivateKey) ([]byte, error) {
	if len(key) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("membership: ed25519 private key has %d bytes, want %d", len(key), ed25519.PrivateKeySize)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("membership: encoding private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemTypePrivateKey, Bytes: der}), nil
}

// ParsePrivateKeyPEM decodes the first PEM block of data, which must be a
// PKCS#8 "PRIVATE KEY" holding an Ed25519 key.
func ParsePrivateKeyPEM(data []byte) (ed25519.PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block found")
	}
	if block.Type != pemTypePrivateKey {
		return nil, fmt.Errorf("PEM block type %q, want %q (PKCS#8)", block.Type, pemTypePrivateKey)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing PKCS#8 key: %w", err)
	}
	key, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("key is %T, want ed25519", k)
	}
	return key, nil
}
