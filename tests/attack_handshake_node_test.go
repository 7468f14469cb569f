package tests

import (
	"net"
	"runtime"
	"testing"
	"testing/synctest"
	"time"
)

// Issue 16, finding 6, against a whole node: a flood of first handshake
// packets (each from a new dial) at the victim while it and the honest node
// publish to each other. The victim keeps at most MaxPendingHandshakes
// handshakes (RetryHandshakesAbove of them from addresses that did not
// prove themselves), so its goroutines and heap stay within the handshake
// term of the memory bound; honest delivery goes on.
func TestAttackHandshakeFloodOnNode(t *testing.T) {
	rate, dur := 2000, 4*time.Second
	if raceBuild {
		rate = 800
	}
	realStart := time.Now()
	synctest.Test(t, func(t *testing.T) {
		cfg, tcfg := attackConfig()
		a := newNodeAttack(t, cfg, tcfg, nil, nil)
		initials := captureInitials(t, rate*int(dur/time.Second))
		from, err := net.ResolveUDPAddr("udp", a.s.Addr(a.hostile))
		must(t, err)
		to, err := net.ResolveUDPAddr("udp", a.s.Addr(a.victim))
		must(t, err)
		baseG := runtime.NumGoroutine()
		var peakG, peakPending peakTracker
		a.startSampling(100 * time.Millisecond)
		hl := a.startHonest(100*time.Millisecond, 500, 20_000)
		start := time.Now()
		for i, p := range initials {
			if due := start.Add(time.Duration(i) * time.Second / time.Duration(rate)); time.Until(due) > 0 {
				time.Sleep(time.Until(due))
				peakG.see(uint64(runtime.NumGoroutine()))
				peakPending.see(uint64(a.victimTransport().Handshakes().InProgress))
			}
			a.s.Network().Inject(from, to, p)
		}
		hr := hl.finish(30 * time.Second)
		hs := a.victimTransport().Handshakes()
		maxG := uint64(baseG) + 4*uint64(tcfg.MaxPendingHandshakes) + 50
		t.Logf("flood of %d Initials at %d/s: goroutines base %d, peak %d (bound %d); handshakes in progress peak %d (cap %d); %+v; %s",
			len(initials), rate, baseG, peakG.get(), maxG, peakPending.get(), tcfg.MaxPendingHandshakes, hs, hr)
		if peakG.get() > maxG {
			t.Errorf("goroutines peaked at %d, bound %d", peakG.get(), maxG)
		}
		if peakPending.get() > uint64(tcfg.MaxPendingHandshakes) {
			t.Errorf("%d handshakes in progress, cap %d", peakPending.get(), tcfg.MaxPendingHandshakes)
		}
		if hs.Retries == 0 {
			t.Error("the flood never met address validation")
		}
		a.checkHeap("handshake flood", uint64(a.bound.Term("incoming handshakes"))+attackSlack)
	})
	t.Logf("real time %.1f s", time.Since(realStart).Seconds())
}
