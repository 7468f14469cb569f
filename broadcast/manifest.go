package broadcast

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
)

// Advertised artifacts are fetched in chunks that are checked before they
// are kept. The sender cuts the payload into chunks of ChunkSize bytes (the
// last one shorter), hashes each with SHA-256 and advertises the Digest of
// the resulting Manifest. A receiver first fetches the manifest from an
// advertiser and keeps it only if it hashes to the advertised digest; then
// every chunk, from whichever advertisers of that digest, is kept only if
// it hashes to its entry in the manifest. The whole artifact is still
// checked (id and Verify) once assembled.
//
// What a lie costs, and who is blamed: a manifest or chunk that does not
// match is the fault of the peer that served it (counted as Mismatch, and
// the peer is avoided); a manifest that matches the digest but describes
// something impossible, or chunks that all match but assemble into an
// artifact the verifier refuses, prove the digest itself false, and that is
// the fault of every peer that advertised it. Such a digest is not fetched
// again for the id, and those peers' other digests for it are not tried:
// each lying advertiser can waste at most one transfer per id.

// Digest names a manifest: SHA-256 of its size, chunk size and chunk hashes.
type Digest [sha256.Size]byte

func (d Digest) String() string { return fmt.Sprintf("%x", d[:6]) }

// Chunk sizes a manifest may use. Small chunks make many requests; large
// ones make a timed-out request throw away more, and a peer must move one
// chunk within FetchTimeoutMax for a fetch from it to progress.
const (
	MinChunkSize = 1 << 10
	MaxChunkSize = 1 << 20
)

// Manifest describes how an advertised artifact's payload is cut into
// chunks.
type Manifest struct {
	Size      int
	ChunkSize int
	// Hashes holds the SHA-256 of every chunk, in order, concatenated.
	Hashes []byte
}

// Describe cuts payload into chunks of chunkSize bytes and returns their
// manifest.
func Describe(payload []byte, chunkSize int) Manifest {
	m := Manifest{Size: len(payload), ChunkSize: chunkSize}
	n := m.Chunks()
	m.Hashes = make([]byte, 0, n*sha256.Size)
	for i := range n {
		h := sha256.Sum256(m.Chunk(payload, i))
		m.Hashes = append(m.Hashes, h[:]...)
	}
	return m
}

// Chunks returns how many chunks the payload has.
func (m Manifest) Chunks() int {
	if m.ChunkSize <= 0 {
		return 0
	}
	return (m.Size + m.ChunkSize - 1) / m.ChunkSize
}

// ChunkLen returns the length of chunk i.
func (m Manifest) ChunkLen(i int) int {
	return min(m.ChunkSize, m.Size-i*m.ChunkSize)
}

// Chunk returns chunk i of payload (sharing its memory).
func (m Manifest) Chunk(payload []byte, i int) []byte {
	start := i * m.ChunkSize
	return payload[start : start+m.ChunkLen(i)]
}

// Digest returns the manifest's name, which adverts carry.
func (m Manifest) Digest() Digest {
	h := sha256.New()
	var buf [2*binary.MaxVarintLen64 + 16]byte
	b := append(buf[:0], "abcast/manifest1"...)
	b = binary.AppendUvarint(b, uint64(m.Size))
	b = binary.AppendUvarint(b, uint64(m.ChunkSize))
	h.Write(b)
	h.Write(m.Hashes)
	var d Digest
	h.Sum(d[:0])
	return d
}

// check reports whether the manifest is well formed and within maxSize.
func (m Manifest) check(maxSize int) error {
	switch {
	case m.ChunkSize < MinChunkSize || m.ChunkSize > MaxChunkSize:
		return fmt.Errorf("chunk size %d outside %d..%d", m.ChunkSize, MinChunkSize, MaxChunkSize)
	case m.Size < 0 || m.Size > maxSize:
		return fmt.Errorf("size %d outside 0..%d", m.Size, maxSize)
	case len(m.Hashes) != m.Chunks()*sha256.Size:
		return fmt.Errorf("%d bytes of hashes for %d chunks", len(m.Hashes), m.Chunks())
	}
	return nil
}

// chunkOK reports whether data is chunk i of the manifest.
func (m Manifest) chunkOK(i int, data []byte) bool {
	if len(data) != m.ChunkLen(i) {
		return false
	}
	h := sha256.Sum256(data)
	return bytes.Equal(h[:], m.Hashes[i*sha256.Size:(i+1)*sha256.Size])
}
