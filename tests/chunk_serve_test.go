package tests

import (
	"bytes"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/actors/abcasttest"
	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/quicremote/transport"
)

// Chunks of a multi-chunk artifact are served as their bare bytes on the
// channel's chunk protocol (no encoding pass over the payload per
// request), only for the digest the publisher advertised; anything else is
// refused. Receivers assemble verified chunks as before (G1, G2).
func TestFetchChunkServedBare(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := actors.DefaultConfig()
		cfg.Sender.ChunkSize = broadcast.MinChunkSize
		s := abcasttest.NewSubnet(t, 3, abcasttest.Options{Latency: 5 * time.Millisecond, Config: cfg})
		s.Start(0)
		s.Start(1)
		ch := s.OpenChannel("ch", abcasttest.ChannelOptions{})
		raw := s.Raw(2, transport.DefaultConfig())
		waitRawUp(t, raw, s.ID(0))
		payload := make([]byte, 3*broadcast.MinChunkSize+100)
		for i := range payload {
			payload[i] = byte(i * 7)
		}
		must(t, ch.Publish(0, broadcast.Artifact{ID: "multi", Payload: payload}))
		ch.AssertDelivered(t, time.Minute)
		man := broadcast.Describe(payload, broadcast.MinChunkSize)
		ask := func(digest broadcast.Digest, chunk int) ([]byte, error) {
			req, err := abcasttest.EncodeFetchRequest(abcasttest.FetchRequest{ID: "multi", Digest: digest, Chunk: chunk})
			must(t, err)
			return raw.Call(t.Context(), s.ID(0), abcasttest.ChunkProtocol("ch"), req)
		}
		for i := range man.Chunks() {
			got, err := ask(man.Digest(), i)
			if err != nil || !bytes.Equal(got, man.Chunk(payload, i)) {
				t.Fatalf("chunk %d: %d bytes, %v; want the payload's bytes", i, len(got), err)
			}
		}
		for name, c := range map[string]struct {
			digest broadcast.Digest
			chunk  int
		}{"other digest": {broadcast.Digest{1}, 0}, "beyond the last": {man.Digest(), man.Chunks()}, "manifest": {man.Digest(), broadcast.ManifestPart}} {
			if _, err := ask(c.digest, c.chunk); !errors.Is(err, transport.ErrRemote) {
				t.Errorf("%s: %v, want a refusal", name, err)
			}
		}
	})
}
