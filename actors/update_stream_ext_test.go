package actors_test

import (
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/actors/abcasttest"
	"github.com/abcast/abcast/broadcast"
)

// Small artifacts pushed faster than the consumer confirms them: the
// update stream pauses at the push that finds every delivery credit held,
// and goes on as the consumer returns credits, so every push is delivered
// from its push. Before the update stream (a stream per update, each
// applied on arrival), the pushes beyond the credits were dropped and
// fetched again later. G1 and the slow-consumer bound both hold. (A
// consumer stalled for longer than the pause gets the rest as before:
// entries kept, pushes fetched once it takes them.)
func TestPushesBeyondCreditsWaitInsteadOfBeingFetched(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := actors.DefaultConfig()
		cfg.Receiver.DeliveryCredits = 4
		s := abcasttest.NewSubnet(t, 2, abcasttest.Options{Latency: 5 * time.Millisecond, Config: cfg})
		s.StartAll()
		gate := make(chan struct{})
		ch := s.OpenChannel("small", abcasttest.ChannelOptions{Consume: func(node int) func(actors.Event) {
			return func(actors.Event) {
				if node == 1 {
					<-gate
				}
			}
		}})
		const n = 40
		for i := range n {
			if err := ch.Publish(0, broadcast.Artifact{ID: broadcast.ArtifactID(fmt.Sprint("a", i)), Payload: []byte("small payload")}); err != nil {
				t.Fatal(err)
			}
		}
		// The consumer holds its credits: nothing beyond them is handed
		// over, and nothing is fetched, while it catches up within the
		// pause a batch may wait for a credit (1 s).
		time.Sleep(500 * time.Millisecond)
		synctest.Wait()
		if st := ch.On(1).Stats(); st.CreditsOut > cfg.Receiver.DeliveryCredits {
			t.Fatalf("consumer holds %d deliveries, credits %d", st.CreditsOut, cfg.Receiver.DeliveryCredits)
		}
		close(gate)
		ch.AssertDelivered(t, time.Minute)
		if st := ch.On(1).Stats(); st.FetchAttempts != 0 || st.Receiver.DeliveredFromPush != n {
			t.Fatalf("%d fetch attempts, %d of %d delivered from their push", st.FetchAttempts, st.Receiver.DeliveredFromPush, n)
		}
	})
}
