package tests

import (
	"context"
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/abcast/abcast/actors/abcasttest"
	"github.com/abcast/abcast/broadcast"
)

// Issue 16, findings 1 and 4, against whole nodes: the compromised member
// dials the victim by hand (quic-go, its real key), so it can leave the
// answers it asks for unread, and answer what the victim asks it with
// bodies far beyond what the request can return.

// Finding 1: the member asks for chunks of a large artifact the victim
// publishes, on as many streams as it may open, and never reads the
// answers. Each answer is one chunk (never the whole artifact, as before:
// 32 copies of a 64 MiB artifact took the heap to 2.25 GB), charged to the
// member's budget while written; a stream whose reader made no progress
// for ProgressTimeout is reset and counted; honest traffic goes on.
func TestAttackUnreadFetchAnswers(t *testing.T) {
	realStart := time.Now()
	synctest.Test(t, func(t *testing.T) {
		cfg, tcfg := attackConfig()
		a := newNodeAttack(t, cfg, tcfg, nil, nil)
		size := cfg.Wire.MaxPayloadLen
		if attackFull() {
			size = 64 << 20
		}
		big := broadcast.Artifact{ID: "big", Payload: payloadFor("big", size)}
		must(t, a.ch.Publish(a.victim, big))
		chunks := (size + cfg.Sender.ChunkSize - 1) / cfg.Sender.ChunkSize
		conn := a.dialRaw()

		a.startSampling(250 * time.Millisecond)
		hl := a.startHonest(100*time.Millisecond, 500, 20_000)
		const streams = 64
		open := func(i int) *quic.Stream {
			req, err := abcasttest.EncodeFetchRequest(abcasttest.FetchRequest{ID: big.ID, Chunk: i % chunks})
			must(t, err)
			str, err := conn.OpenStreamSync(context.Background())
			must(t, err)
			_, err = str.Write(rawRequestFrame(kindCall, abcasttest.FetchProtocol(hostileChannel), req))
			must(t, err)
			must(t, str.Close())
			return str
		}
		strs := make([]*quic.Stream, streams)
		for i := range strs {
			strs[i] = open(i)
		}
		// For 30 s the member keeps 64 such streams open: a stream the
		// victim reset is replaced at once.
		replaced := 0
		// Long enough for unread writes to meet the progress timeout.
		attack := max(attackFor(30*time.Second), 3*tcfg.ProgressTimeout+5*time.Second) // a stopped reader goes within three periods
		for start := time.Now(); time.Since(start) < attack; time.Sleep(500 * time.Millisecond) {
			for i, str := range strs {
				reset, err := streamResetBy(str)
				if err != nil {
					t.Fatal(err)
				}
				if reset {
					strs[i] = open(i)
					replaced++
				}
			}
		}
		hr := hl.finish(30 * time.Second)
		ts := a.victimTransport().Stats(a.hostileID())
		st := a.ch.On(a.victim).Stats()
		t.Logf("64 unread streams for %v on a %.0f MiB artifact (%d chunks): %d reset and replaced; victim served the member %.1f MiB; transport counters %+v; %s",
			attack, mib(uint64(size)), chunks, replaced, mib(st.BytesServedTo[a.hostileID().String()]), ts, hr)
		if ts.StalledWrites == 0 {
			t.Error("no write to the member that stopped reading was given up")
		}
		a.checkHeap("unread fetch answers", uint64(a.bound.Term("transport budget")+a.bound.Term("fetch answers being encoded"))+attackSlack)
	})
	t.Logf("real time %.1f s", time.Since(realStart).Seconds())
}

// Finding 4: the member answers every request the victim makes of it (its
// slot updates, its fetches of what the member advertises) with OK and a
// body of 32 MiB (at reduced sizes the largest frame the victim takes).
// The victim refuses each answer from its header (an update
// is acknowledged without a body; a fetch answer is at most a manifest or
// a chunk), reads none of it, counts it against the member, and its
// honest traffic goes on.
func TestAttackOversizedAnswers(t *testing.T) {
	realStart := time.Now()
	synctest.Test(t, func(t *testing.T) {
		cfg, tcfg := attackConfig()
		a := newNodeAttack(t, cfg, tcfg, nil, nil)
		conn := a.dialRaw()
		// 32 MiB, or the largest frame the victim takes: a larger one is
		// refused as too large whatever the request was.
		body := min(32<<20, tcfg.MaxFrameSize)
		h := answerHuge(conn, body)
		// Announce the channel and advertise ids, by hand, so that the
		// victim sends updates to the member and fetches from it.
		push := func(protocol string, payload []byte) error {
			str, err := conn.OpenStreamSync(context.Background())
			if err != nil {
				return err
			}
			if _, err := str.Write(rawRequestFrame(kindPush, protocol, payload)); err != nil {
				return err
			}
			str.Close()
			got := readAllWithin(t, str, 10*time.Second)
			if len(got) < 5 || got[0] != statusOK {
				return fmt.Errorf("%s answered %q", protocol, got)
			}
			return nil
		}
		must(t, push(abcasttest.HelloProtocol, abcasttest.EncodeHello(1, hostileChannel)))
		for i := range 8 {
			must(t, push(abcasttest.UpdateProtocol(hostileChannel), advert(uint64(i)+1, uint64(i), fmt.Sprintf("liar-%d", i), nil)))
		}

		a.startSampling(250 * time.Millisecond)
		hl := a.startHonest(100*time.Millisecond, 500, 20_000)
		time.Sleep(attackFor(20 * time.Second)) // the attack's length, in virtual time
		hr := hl.finish(30 * time.Second)
		ts := a.victimTransport().Stats(a.hostileID())
		st := a.ch.On(a.victim).Stats()
		ps := st.PeerStats[a.hostileID().String()]
		t.Logf("the member answered %d of the victim's requests with %.0f MiB each and got %.1f MiB onto the wire; victim's transport counters %+v; channel: bad fetch answers %d, peer %+v; %s",
			h.answered.Load(), mib(uint64(body)), mib(uint64(h.written.Load())), ts, st.BadFetchResponses, ps, hr)
		if ts.GarbageFrames == 0 || ts.OversizedFrames == 0 {
			t.Errorf("oversized answers to pushes (%d garbage) and fetches (%d oversized) not counted", ts.GarbageFrames, ts.OversizedFrames)
		}
		if ps.BadResponses == 0 {
			t.Error("oversized fetch answers not counted against the member as bad responses")
		}
		if w := h.written.Load(); w > int64(h.answered.Load())*int64(tcfg.MaxStreamWindow)+int64(tcfg.MaxConnectionWindow) {
			t.Errorf("the victim took %.1f MiB of oversized bodies", mib(uint64(w)))
		}
		conn.CloseWithError(0, "")
		h.Wait()
		a.checkHeap("oversized answers", attackSlack)
	})
	t.Logf("real time %.1f s", time.Since(realStart).Seconds())
}
