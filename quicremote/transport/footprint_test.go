package transport

import (
	"bytes"
	"runtime"
	"testing"
	"testing/synctest"
	"time"
)

// An idle connection costs the transport one goroutine of its own on each
// side (the one accepting the peer's streams), besides quic-go's: the
// transport's fixed goroutines do the rest, heartbeats included. With 50
// peers a node has 50 connections, so a per-connection goroutine is a
// per-peer cost. (With a heartbeat goroutine per connection this counted
// 2 per connection and failed.)
func TestIdleConnectionCostsOneTransportGoroutine(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 5
		c := newSimnetCluster(t, DefaultConfig(), n)
		defer c.close()
		all := make([]int, n)
		for i := range all {
			all[i] = i
			c.start(i)
		}
		c.waitMesh(all...)
		time.Sleep(3 * DefaultConfig().KeepAlive) // handshakes done, heartbeats sent
		got := transportGoroutines()
		const fixed = 4 // watchLoop, acceptLoop, countGarbageDatagrams, heartbeats
		if want := n*fixed + n*(n-1); got != want {
			t.Fatalf("%d transport goroutines for %d transports with %d connections each, want %d (%d each and one per connection end)",
				got, n, n-1, want, fixed)
		}
	})
}

// transportGoroutines counts the goroutines running a method of
// *Transport (its own loops, not quic-go's or the test's).
func transportGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		k := runtime.Stack(buf, true)
		if k < len(buf) {
			buf = buf[:k]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if bytes.Contains(g, []byte("quicremote/transport.(*Transport).")) && !bytes.Contains(g, []byte("testing.tRunner")) {
			count++
		}
	}
	return count
}
