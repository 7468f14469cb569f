package tests

import (
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/abcast/abcast/actors/abcasttest"
	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/quicremote/transport"
)

// A member speaking the update stream (the long-lived stream that carries
// a peer's small slot updates) gets each update judged on its own: a
// batch with an undecodable update in the middle has that one refused in
// the acknowledgement and counted against the member, and the others
// applied and delivered. A batch that breaks the stream's numbering resets
// the stream and is counted too; the node keeps serving honest peers.
func TestSecurityUpdateStreamRefusesPerUpdate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := abcasttest.NewSubnet(t, 3, abcasttest.Options{Latency: 5 * time.Millisecond})
		s.Start(0)
		s.Start(1)
		ch := s.OpenChannel("ch", abcasttest.ChannelOptions{})
		raw := s.Raw(2, transport.DefaultConfig())
		waitRawUp(t, raw, s.ID(0))
		must(t, abcasttest.Announce(t.Context(), raw, s.ID(0), "ch"))
		push := func(commit, slot uint64, id string) []byte {
			b, err := abcasttest.EncodeSlotUpdate(broadcast.SlotUpdate{Commit: broadcast.CommitID(commit), Slot: broadcast.Slot(slot), Kind: broadcast.KindPush,
				Artifact: broadcast.Artifact{ID: broadcast.ArtifactID(id), Payload: []byte("payload of " + id)}})
			must(t, err)
			return b
		}
		frame := abcasttest.EncodeUpdateBatch(1, push(1, 0, "good-1"), []byte{0xff, 0xff, 0xff}, push(2, 1, "good-2"))
		str, err := raw.OpenStream(t.Context(), s.ID(0), abcasttest.UpdatesProtocol("ch"))
		must(t, err)
		must(t, str.Send(t.Context(), frame))
		ack, err := str.Recv()
		must(t, err)
		through, refused, err := abcasttest.DecodeUpdateAck(ack)
		must(t, err)
		if _, two := refused[2]; through != 3 || len(refused) != 1 || !two {
			t.Fatalf("acknowledgement through %d refusing %v, want through 3 refusing 2", through, refused)
		}
		must(t, abcasttest.Eventually(time.Minute, func() error {
			for _, id := range []broadcast.ArtifactID{"good-1", "good-2"} {
				if _, ok := ch.Recorder(0).Holds(id); !ok {
					return fmt.Errorf("%s not delivered", id)
				}
			}
			return nil
		}))
		if st := ch.On(0).Stats().PeerStats[s.ID(2).String()]; st.Invalid != 1 {
			t.Fatalf("invalid updates counted against the member: %d, want 1", st.Invalid)
		}
		// Numbering that skips: the stream is reset and it counts.
		bad := abcasttest.EncodeUpdateBatch(7, push(3, 2, "never"))
		must(t, str.Send(t.Context(), bad))
		if _, err := str.Recv(); err == nil {
			t.Fatal("stream survived a batch that broke its numbering")
		}
		if st := ch.On(0).Stats().PeerStats[s.ID(2).String()]; st.Invalid != 2 {
			t.Fatalf("invalid updates counted: %d, want 2", st.Invalid)
		}
		if _, ok := ch.Recorder(0).Holds("never"); ok {
			t.Fatal("update of a broken batch applied")
		}
		// Honest traffic goes on.
		must(t, ch.Publish(1, broadcast.Artifact{ID: "honest", Payload: []byte("x")}))
		must(t, abcasttest.Eventually(time.Minute, func() error {
			if _, ok := ch.Recorder(0).Holds("honest"); !ok {
				return fmt.Errorf("honest artifact not delivered after the hostile stream")
			}
			return nil
		}))
	})
}
