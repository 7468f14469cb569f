package tests

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
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
		var written atomic.Int64 // body bytes the victim's QUIC stack took
		var refusedEarly atomic.Int64
		var serving sync.WaitGroup
		serving.Go(func() {
			for {
				str, err := conn.AcceptStream(context.Background())
				if err != nil {
					return
				}
				serving.Go(func() {
					if _, err := io.ReadAll(str); err != nil {
						return
					}
					if _, err := str.Write(rawResponseHeader(statusOK, body)); err != nil {
						return
					}
					chunk := make([]byte, 256<<10)
					_ = str.SetWriteDeadline(time.Now().Add(20 * time.Second))
					for sent := 0; sent < body; sent += len(chunk) {
						n, err := str.Write(chunk)
						written.Add(int64(n))
						if err != nil {
							var se *quic.StreamError
							if errors.As(err, &se) {
								refusedEarly.Add(1)
							}
							return
						}
					}
					str.Close()
				})
			}
		})

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
		serving.Wait()
		st := victim.Stats(an.ids[0].ID)
		t.Logf("push errors ErrProtocol %d, call errors ErrTooLarge %d; attacker wrote %.1f MiB of %d × 32 MiB, %d writes stopped by the victim; victim's counters %+v",
			protoErrs, tooLarge, mib(uint64(written.Load())), pushes+calls, refusedEarly.Load(), st)
		if protoErrs != pushes || tooLarge != calls {
			t.Errorf("got %d ErrProtocol and %d ErrTooLarge, want %d and %d", protoErrs, tooLarge, pushes, calls)
		}
		if st.GarbageFrames != pushes || st.OversizedFrames != calls {
			t.Errorf("counted %d garbage and %d oversized answers, want %d and %d", st.GarbageFrames, st.OversizedFrames, pushes, calls)
		}
		// The victim stops reading at the header: what the attacker got
		// onto the wire is bounded by the receive windows, not 16 × 32 MiB.
		if w := written.Load(); w > int64(cfg.MaxConnectionWindow) {
			t.Errorf("the victim took %.1f MiB of oversized bodies, more than its connection window", mib(uint64(w)))
		}
	})
}
