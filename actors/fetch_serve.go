package actors

import (
	"context"
	"errors"
	"fmt"

	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/internal/wire"
	"github.com/abcast/abcast/membership"
)

// servedManifest is a live artifact's manifest with its digest, as the
// sender core advertised them (same chunk size).
type servedManifest struct {
	broadcast.Manifest
	digest broadcast.Digest
	// resp, when set, is the encoded answer to a manifest request, kept
	// for a one-chunk artifact whose payload lives inside it
	// (encodeServed): every peer is served these bytes as they are.
	resp []byte
}

// encodeServed prepares a one-chunk artifact that will be advertised for
// serving: its manifest, and the encoded answer to a manifest request with
// the payload inside, whose copy of the payload the returned artifact uses
// from then on. Publishing pays one copy so that serving it to every peer
// pays none. Other artifacts are returned as they are, their manifests made
// on first use.
func (c *Channel) encodeServed(a broadcast.Artifact) (broadcast.Artifact, *servedManifest) {
	if c.scfg.Pushes(a) || len(a.Payload) == 0 || len(a.Payload) > c.scfg.ChunkSize {
		return a, nil
	}
	man := broadcast.Describe(a.Payload, c.scfg.ChunkSize)
	resp, payload, err := wire.EncodeFetchManifestWith(man, a.Payload)
	if err != nil {
		return a, nil // served as before, encoded per request
	}
	a.Payload = payload
	return a, &servedManifest{Manifest: man, digest: man.Digest(), resp: resp}
}

// handleFetch serves part of an artifact from the publisher's pool, which
// is the truth about what is live: the manifest (with the payload when it
// is one chunk) or one chunk, for the digest the requester names (any, for
// a pushed artifact, which advertised none). A response is one chunk at
// most, so what a peer's requests make us hold is bounded by the handler
// limit times the chunk size, however large the artifact.
func (c *Channel) handleFetch(ctx context.Context, peer membership.NodeID, req []byte) ([]byte, error) {
	r, err := wire.DecodeFetchRequest(req, c.limit)
	if err != nil {
		return nil, fmt.Errorf("fetch from %s: %w", peer.Short(), err)
	}
	a, m := c.served(r.ID)
	if m == nil || (r.Digest != (broadcast.Digest{}) && r.Digest != m.digest) || r.Chunk >= m.Chunks() {
		return wire.EncodeFetchNotFound()
	}
	var resp []byte
	switch {
	case r.Chunk == broadcast.ManifestPart && m.resp != nil:
		resp = m.resp
	case r.Chunk == broadcast.ManifestPart:
		var payload []byte
		if m.Chunks() == 1 {
			payload = a.Payload
		}
		resp, err = wire.EncodeFetchManifest(m.Manifest, payload)
	default:
		resp, err = wire.EncodeFetchChunk(m.Chunk(a.Payload, r.Chunk))
	}
	if err != nil {
		return nil, err
	}
	c.countServed(peer, len(resp))
	return resp, nil
}

func (c *Channel) countServed(peer membership.NodeID, n int) {
	c.updateStats(func(s *ChannelStats) {
		s.FetchBytesServed += uint64(n)
		if s.BytesServedTo == nil {
			s.BytesServedTo = make(map[string]uint64)
		}
		s.BytesServedTo[peer.String()] += uint64(n)
	})
}

// errNoSuchChunk answers a chunk request for an artifact, digest or chunk
// we do not hold; the requester asks another advertiser.
var errNoSuchChunk = errors.New("no such chunk")

// handleChunk serves one chunk of a multi-chunk artifact as its bare
// bytes, a slice of the published payload: the requester checks it against
// the manifest's hash, so no framing is needed, and serving it copies
// nothing. The answer for something we do not hold is an error (the
// requester treats it as it treats "not found").
func (c *Channel) handleChunk(ctx context.Context, peer membership.NodeID, req []byte) ([]byte, error) {
	r, err := wire.DecodeFetchRequest(req, c.limit)
	if err != nil {
		return nil, fmt.Errorf("chunk fetch from %s: %w", peer.Short(), err)
	}
	if r.Chunk == broadcast.ManifestPart {
		return nil, fmt.Errorf("chunk fetch from %s: asks for a manifest: %w", peer.Short(), broadcast.ErrInvalid)
	}
	a, m := c.served(r.ID)
	if m == nil || r.Digest != m.digest || r.Chunk >= m.Chunks() {
		return nil, errNoSuchChunk
	}
	chunk := m.Chunk(a.Payload, r.Chunk)
	c.countServed(peer, len(chunk))
	return chunk, nil
}

// served returns the live artifact id and its manifest, made on first use
// and kept with the pool entry; nil if id is not live.
func (c *Channel) served(id broadcast.ArtifactID) (broadcast.Artifact, *servedManifest) {
	c.mu.Lock()
	e := c.pool[id]
	if e == nil {
		c.mu.Unlock()
		return broadcast.Artifact{}, nil
	}
	a, m := e.a, e.man
	c.mu.Unlock()
	if m != nil {
		return a, m
	}
	// Hashing a large payload outside the lock; two first requests racing
	// may both hash, and the first to store wins.
	man := broadcast.Describe(a.Payload, c.scfg.ChunkSize)
	m = &servedManifest{Manifest: man, digest: man.Digest()}
	if man.Chunks() > 1 {
		// The manifest alone is the answer to every peer's manifest
		// request: encode it once.
		m.resp, _ = wire.EncodeFetchManifest(man, nil)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.pool[id]; e != nil {
		if e.man == nil {
			e.man = m
		}
		return e.a, e.man
	}
	return broadcast.Artifact{}, nil
}
