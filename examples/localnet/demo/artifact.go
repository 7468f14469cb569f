package demo

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"math/rand/v2"
	"time"

	"github.com/abcast/abcast/broadcast"
)

// headerLen is the digest that starts every payload: SHA-256 over the id
// and the rest of the payload, so a receiver can tell that what it got is
// what the publisher made under that id (G2).
const headerLen = sha256.Size

// attrLen is the attribute: height and publish time, read by the
// receivers to measure delivery latency (all nodes share one clock).
const attrLen = 16

func makeArtifact(id string, height uint64, size int, rng *rand.Rand, now time.Time) broadcast.Artifact {
	payload := make([]byte, size)
	body := payload[headerLen:]
	for i := 0; i < len(body); i += 8 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], rng.Uint64())
		copy(body[i:], w[:])
	}
	sum := digest(id, body)
	copy(payload, sum[:])
	attr := make([]byte, attrLen)
	binary.BigEndian.PutUint64(attr, height)
	binary.BigEndian.PutUint64(attr[8:], uint64(now.UnixNano()))
	return broadcast.Artifact{ID: broadcast.ArtifactID(id), Attribute: attr, Payload: payload}
}

func digest(id string, body []byte) [sha256.Size]byte {
	h := sha256.New()
	h.Write([]byte(id))
	h.Write(body)
	var out [sha256.Size]byte
	h.Sum(out[:0])
	return out
}

// checkArtifact reports whether a's payload is the one published under its
// id, and when it was published.
func checkArtifact(a broadcast.Artifact) (published time.Time, ok bool) {
	if len(a.Attribute) != attrLen || len(a.Payload) < headerLen {
		return time.Time{}, false
	}
	sum := digest(string(a.ID), a.Payload[headerLen:])
	if !bytes.Equal(sum[:], a.Payload[:headerLen]) {
		return time.Time{}, false
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(a.Attribute[8:]))), true
}
