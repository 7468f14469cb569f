package tests

import (
	"context"
	"fmt"
	"io"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/abcast/abcast/actors/abcasttest"
	"github.com/abcast/abcast/membership"
	"github.com/abcast/abcast/quicremote/transport"
)

// Issue 16, finding 1: a member asks for large responses on many streams
// and never reads them. Each handler builds its own copy of the response
// (the worst case for the transport: the layer above may share one copy,
// but the transport cannot rely on it). The victim must keep what it holds
// for that peer within the peer's memory budget (responses beyond it are
// refused), reset the streams whose reader made no progress within
// ProgressTimeout, and keep serving an honest peer meanwhile.
func TestAttackTransportUnreadResponses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		an := newAttackNet(t, 3) // 0 attacker (dials), 1 honest, 2 victim
		const respSize = 4 << 20
		cfg := transport.DefaultConfig()
		cfg.MaxFrameSize = respSize
		cfg.MaxBytesPerPeer = 4 * respSize
		cfg.DefaultProtocolLimit = 32
		victim := an.start(2, cfg)
		honest := an.start(1, cfg)
		var served atomic.Int64
		must(t, victim.Handle("fetch", func(context.Context, membership.NodeID, []byte) ([]byte, error) {
			served.Add(1)
			resp := make([]byte, respSize)
			resp[0], resp[respSize-1] = 1, 1
			return resp, nil
		}, 0))
		waitUp(t, honest, an.ids[2].ID)
		hc := startHonestCalls(t, honest, victim, an.ids[2].ID, true)

		// The attacker keeps quic-go's default receive windows: whatever the
		// victim manages to send sits in them unread.
		conn := an.rawMember(0, 2, &quic.Config{MaxIdleTimeout: cfg.IdleTimeout, KeepAlivePeriod: cfg.KeepAlive})
		waitUp(t, victim, an.ids[0].ID)
		base := retainedHeap()

		const streams = 64
		strs := make([]*quic.Stream, 0, streams)
		for range streams {
			str, err := conn.OpenStreamSync(t.Context())
			must(t, err)
			_, err = str.Write(rawRequestFrame(kindCall, "fetch", nil))
			must(t, err)
			must(t, str.Close())
			strs = append(strs, str)
		}
		limit := int64(cfg.DefaultProtocolLimit)
		must(t, abcasttest.Eventually(time.Minute, func() error {
			if n := served.Load(); n < limit {
				return fmt.Errorf("%d of %d handlers run", n, limit)
			}
			return nil
		}))

		// While the attacker sits on its streams, what the victim retains
		// for it is bounded by its budget; the honest peer is served.
		var peak peakTracker
		for range 5 {
			time.Sleep(200 * time.Millisecond)
			peak.see(retainedHeap())
		}
		t.Logf("retained before the honest fetch: %.1f MiB", mib(peak.get()))
		resp, err := callWithin(honest, 30*time.Second, an.ids[2].ID, "fetch", nil)
		if err != nil || len(resp) != respSize {
			t.Fatalf("honest fetch during the attack: %d bytes, %v", len(resp), err)
		}
		peak.see(retainedHeap())
		// Bound: the peer's budget (responses being written and requests),
		// plus one response for the honest fetch and 8 MiB for the QUIC
		// stacks' windows and buffers: the honest node and the attacker
		// live in this process too.
		bound := uint64(cfg.MaxBytesPerPeer) + respSize + 8<<20
		growth := int64(peak.get()) - int64(base)
		t.Logf("retained heap: base %.1f MiB, peak %.1f MiB, growth %.1f MiB, bound %.1f MiB; handlers run %d",
			mib(base), mib(peak.get()), float64(growth)/(1<<20), mib(bound), served.Load())
		if growth > int64(bound) {
			t.Errorf("victim retains %.1f MiB for a peer that never reads, bound %.1f MiB", float64(growth)/(1<<20), mib(bound))
		}

		// The progress rule (a floor of bytes per ProgressTimeout) cuts off
		// every stream the victim was writing to. A stream's period in
		// which the attacker's windows filled still moved bytes, and a
		// reset stream gives its share of the connection's window to the
		// others, so the last goes within a few periods, not one; the
		// victim then no longer holds the responses. (Checked once: the
		// check reads a byte of each stream, which is progress.)
		time.Sleep(3*cfg.ProgressTimeout + 2*time.Second)
		reset := 0
		for _, str := range strs {
			ok, err := streamResetBy(str)
			if err != nil {
				t.Fatal(err)
			}
			if ok {
				reset++
			}
		}
		if reset != streams {
			t.Errorf("%d of %d unread streams reset after three progress timeouts", reset, streams)
		}
		st := victim.Stats(an.ids[0].ID)
		t.Logf("victim's counters for the attacker: %+v", st)
		if st.StalledWrites == 0 || st.StalledWrites > uint64(cfg.MaxBytesPerPeer/respSize) {
			t.Errorf("stalled writes counted %d, want 1..%d (those the budget admitted)", st.StalledWrites, cfg.MaxBytesPerPeer/respSize)
		}
		if after := retainedHeap(); int64(after)-int64(base) > 8<<20 {
			t.Errorf("after the resets the victim still retains %.1f MiB more than before", mib(after-base))
		}

		// The budget came back: the attacker, reading this time, is served.
		str, err := conn.OpenStreamSync(t.Context())
		must(t, err)
		_, err = str.Write(rawRequestFrame(kindCall, "fetch", nil))
		must(t, err)
		must(t, str.Close())
		got := readAllWithin(t, str, 30*time.Second)
		if len(got) != 5+respSize || got[0] != statusOK {
			t.Fatalf("fetch by a reading peer after the resets: %d bytes, status %d", len(got), got[0])
		}
		t.Log(hc.finish(t))
	})
}

// readAllWithin reads str to its end, failing after d of virtual time.
func readAllWithin(t *testing.T, str *quic.Stream, d time.Duration) []byte {
	t.Helper()
	_ = str.SetReadDeadline(time.Now().Add(d))
	var out []byte
	buf := make([]byte, 64<<10)
	for {
		n, err := str.Read(buf)
		out = append(out, buf[:n]...)
		if err != nil {
			if err == io.EOF {
				return out
			}
			t.Fatalf("read after %d bytes: %v", len(out), err)
		}
	}
}
