package tests

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/abcast/abcast/quicremote/transport"
)

// Issue 16, finding 4: a member answers our requests with bodies far larger
// than the request can legitimately return: 32 MiB for an update whose ack
// is empty, and for a call whose caller expects at most 1 KiB. The victim
// must refuse each answer from its header, without reading the body (so
// the attacker's writes stall or fail and the victim's memory never holds
// them), count it against the attacker, and report the failure to its
// caller: ErrProtocol for a Push, ErrTooLarge for a Call.
func TestAttackTransportOversizedResponses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		an := newAttackNet(t, 3) // 0 attacker (dials), 1 victim, 2 honest
		cfg := transport.DefaultConfig()
		victim := an.start(1, cfg)
		honest := an.start(2, cfg)
		waitUp(t, honest, an.ids[1].ID)
		hc := startHonestCalls(t, honest, victim, an.ids[1].ID, true)
		conn := an.rawMember(0, 1, &quic.Config{MaxIdleTimeout: cfg.IdleTimeout, KeepAlivePeriod: cfg.KeepAlive})
		waitUp(t, victim, an.ids[0].ID)

		// The attacker answers every request with statusOK and 32 MiB.
		const body = 32 << 20
		h := answerHuge(conn, body)

		const pushes, calls = 8, 8
		var wg sync.WaitGroup
		errs := make(chan error, pushes+calls)
		for range pushes {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				errs <- victim.Push(ctx, an.ids[0].ID, "update", []byte("slot update"))
			})
		}
		for range calls {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				_, err := victim.Call(ctx, an.ids[0].ID, "fetch", []byte("id"), transport.MaxResponse(1<<10))
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		var protoErrs, tooLarge int
		for err := range errs {
			switch {
			case errors.Is(err, transport.ErrProtocol):
				protoErrs++
			case errors.Is(err, transport.ErrTooLarge):
				tooLarge++
			default:
				t.Errorf("answer with an oversized body: %v, want ErrProtocol (push) or ErrTooLarge (call)", err)
			}
		}
		t.Log(hc.finish(t))
		conn.CloseWithError(0, "")
		h.Wait()
		st := victim.Stats(an.ids[0].ID)
		t.Logf("push errors ErrProtocol %d, call errors ErrTooLarge %d; attacker wrote %.1f MiB of %d × 32 MiB, %d writes stopped by the victim; victim's counters %+v",
			protoErrs, tooLarge, mib(uint64(h.written.Load())), pushes+calls, h.stopped.Load(), st)
		if protoErrs != pushes || tooLarge != calls {
			t.Errorf("got %d ErrProtocol and %d ErrTooLarge, want %d and %d", protoErrs, tooLarge, pushes, calls)
		}
		if st.GarbageFrames != pushes || st.OversizedFrames != calls {
			t.Errorf("counted %d garbage and %d oversized answers, want %d and %d", st.GarbageFrames, st.OversizedFrames, pushes, calls)
		}
		// The victim stops reading at the header: what the attacker got
		// onto the wire is bounded by the receive windows, not 16 × 32 MiB.
		if w := h.written.Load(); w > int64(cfg.MaxConnectionWindow) {
			t.Errorf("the victim took %.1f MiB of oversized bodies, more than its connection window", mib(uint64(w)))
		}
	})
}
