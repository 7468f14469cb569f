package transport

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/abcast/abcast/internal/poll"
	"github.com/abcast/abcast/membership"
)

// The stream conformance suite: the long-lived stream API (HandleStream,
// OpenStream, Stream) checked against the contract in api.go, on the
// in-memory transport and on real QUIC over simnet, inside synctest like
// TestConformance. Every wait is bounded in virtual time so that a broken
// implementation fails instead of spinning on keep-alive timers.

var streamConformanceCases = []conformanceCase{
	{"OrderedEchoBothWays", 2, nil, testStreamEcho},
	{"Refusals", 2, nil, testStreamRefusals},
	{"LimitIsPerPeer", 3, nil, testStreamLimitPerPeer},
	{"Pushback", 2, nil, testStreamPushback},
	{"FrameSize", 2, func(c *Config) { c.MaxFrameSize = 1 << 10 }, testStreamFrameSize},
	{"HandlerError", 2, nil, testStreamHandlerError},
	{"OpenerCloseEndsHandler", 2, nil, testStreamOpenerClose},
	{"LinkDown", 3, nil, testStreamLinkDown},
	{"TransportClose", 2, nil, testStreamTransportClose},
	{"PeerBudget", 3, func(c *Config) { c.MaxFrameSize = 64 << 10; c.MaxBytesPerPeer = 128 << 10 }, testStreamPeerBudget},
	// Beyond the brief's list, from the same doc comments:
	{"OpenCtxOnlyBoundsOpening", 2, nil, testStreamOpenCtx},
	{"OpenWaitsForCredit", 2, func(c *Config) { c.MaxIncomingStreams = 4; c.DefaultProtocolLimit = 4 }, testStreamOpenWaitsForCredit},
	{"HandlerReturnsNil", 2, nil, testStreamHandlerReturnsNil},
	{"HandlerHalfCloseKeepsCtx", 2, nil, testStreamHandlerHalfClose},
	{"RecvLimit", 2, nil, testStreamRecvLimit},
}

// testStreamRecvLimit: each end bounds what its Recv accepts. The handler
// takes frames of up to 16 bytes and the opener answers of up to 4: a
// frame at the limit passes, one byte more resets the stream (ErrTooLarge
// at the receiver, counted against the sender as an oversized frame).
func testStreamRecvLimit(t *testing.T, c *cluster) {
	idx := startAll(c)
	type report struct {
		frame []byte
		err   error
	}
	reports := make(chan report, 4)
	mustHandleStream(t, c.nodes[0].rpc, "small", func(ctx context.Context, _ membership.NodeID, s Stream) error {
		s.SetRecvLimit(16)
		for {
			f, err := s.Recv()
			reports <- report{f, err}
			if err != nil {
				return nil
			}
			if err := s.Send(ctx, []byte("ack")); err != nil {
				return err
			}
		}
	}, 0)
	c.waitMesh(idx...)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	// Handler side: 16 bytes pass, 17 do not.
	s := mustOpen(t, c, 1, 0, "small")
	s.SetRecvLimit(4)
	if err := s.Send(ctx, make([]byte, 16)); err != nil {
		t.Fatal(err)
	}
	if r := within(t, reports, time.Minute, "the 16-byte frame"); r.err != nil || len(r.frame) != 16 {
		t.Fatalf("frame at the handler's limit: %d bytes, %v", len(r.frame), r.err)
	}
	if got, err := recvWithin(t, s, time.Minute, "the ack"); err != nil || string(got) != "ack" {
		t.Fatalf("ack within the opener's limit: %q %v", got, err)
	}
	if err := s.Send(ctx, make([]byte, 17)); err != nil {
		t.Fatal(err)
	}
	wantKind(t, "handler's Recv of a frame above its limit", within(t, reports, time.Minute, "the 17-byte frame").err, ErrTooLarge)
	_, err := recvWithin(t, s, time.Minute, "the reset")
	wantKind(t, "opener after the handler refused its frame", err, ErrTooLarge)
	s.Close()
	poll.Until(t, time.Minute, "the oversized frame counted", func() bool {
		return statsOf(c.nodes[0].rpc, c.nodes[1].id.ID).OversizedFrames == 1
	})

	// Opener side: an answer of 5 bytes exceeds its limit of 4.
	mustHandleStream(t, c.nodes[0].rpc, "chatty", func(ctx context.Context, _ membership.NodeID, s Stream) error {
		if _, err := s.Recv(); err != nil {
			return err
		}
		return s.Send(ctx, []byte("12345"))
	}, 0)
	s = mustOpen(t, c, 1, 0, "chatty")
	defer s.Close()
	s.SetRecvLimit(4)
	if err := s.Send(ctx, []byte("go")); err != nil {
		t.Fatal(err)
	}
	_, err = recvWithin(t, s, time.Minute, "the oversized answer")
	wantKind(t, "opener's Recv of a frame above its limit", err, ErrTooLarge)
	if got := statsOf(c.nodes[1].rpc, c.nodes[0].id.ID).OversizedFrames; got != 1 {
		t.Fatalf("opener counted %d oversized frames, want 1", got)
	}
}

func TestStreamConformance(t *testing.T) { runConformance(t, streamConformanceCases) }

// ---- helpers ----

func mustHandleStream(t *testing.T, r RPC, protocol string, h StreamHandler, limit int) {
	t.Helper()
	if err := r.HandleStream(protocol, h, limit); err != nil {
		t.Fatal(err)
	}
}

func mustOpen(t *testing.T, c *cluster, from, to int, protocol string) Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	s, err := c.nodes[from].rpc.OpenStream(ctx, c.nodes[to].id.ID, protocol)
	if err != nil {
		t.Fatalf("OpenStream %d->%d %q: %v", from, to, protocol, err)
	}
	return s
}

// within receives from ch, failing the test after d of virtual time.
func within[T any](t *testing.T, ch <-chan T, d time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(d):
		t.Fatalf("timed out after %v waiting for %s", d, what)
	}
	panic("unreachable")
}

// ctxGrace is how long a test handler waits for its ctx to end once its
// Recv failed; tests wait longer than this for the handler's report.
const ctxGrace = 10 * time.Second

// ctxEnds reports whether ctx ends within d (virtual time).
func ctxEnds(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return true
	case <-time.After(d):
		return false
	}
}

// wantKind checks that err is an *Error matching kind.
func wantKind(t *testing.T, what string, err, kind error) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Fatalf("%s: got %v, want %v", what, err, kind)
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("%s: %T is not *Error: %v", what, err, err)
	}
}

// wantBroken checks that err reports a broken stream: not nil, not io.EOF,
// an *Error.
func wantBroken(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil || err == io.EOF {
		t.Fatalf("%s: got %v, want an error other than io.EOF", what, err)
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("%s: %T is not *Error: %v", what, err, err)
	}
}

// recvWithin runs s.Recv, failing the test if it does not return within d.
func recvWithin(t *testing.T, s Stream, d time.Duration, what string) ([]byte, error) {
	t.Helper()
	type res struct {
		b   []byte
		err error
	}
	ch := make(chan res, 1)
	go func() {
		b, err := s.Recv()
		ch <- res{b, err}
	}()
	r := within(t, ch, d, what)
	return r.b, r.err
}

// roundTrip sends frame on s and expects it echoed back.
func roundTrip(t *testing.T, s Stream, frame string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := s.Send(ctx, []byte(frame)); err != nil {
		t.Fatalf("Send %q: %v", frame, err)
	}
	got, err := recvWithin(t, s, time.Minute, "echo of "+frame)
	if err != nil || string(got) != frame {
		t.Fatalf("echo of %q: %q %v", frame, got, err)
	}
}

// echoStream is a stream handler that returns every frame until io.EOF.
func echoStream(ctx context.Context, _ membership.NodeID, s Stream) error {
	for {
		f, err := s.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := s.Send(ctx, f); err != nil {
			return err
		}
	}
}

// handlerReport is what a test handler tells the test goroutine.
type handlerReport struct {
	from     membership.NodeID
	tag      int
	n        int
	err      error
	ctxEnded bool
	problem  string
}

// ---- 1. ordered echo ----

const echoFrames = 1000

// echoFrameSize spreads sizes over 0..64 KiB, with both ends included.
func echoFrameSize(rng *rand.Rand, i int) int {
	switch i {
	case 0:
		return 0
	case 1:
		return 64 << 10
	}
	if rng.IntN(8) == 0 {
		return rng.IntN(64<<10 + 1)
	}
	return rng.IntN(4 << 10)
}

// fillFrame writes frame i's content into buf[:n]: its index up front (when
// it fits) and a pattern that depends on both i and the offset.
func fillFrame(buf []byte, i, n int) []byte {
	b := buf[:n]
	for j := range b {
		b[j] = byte(i*131 + j*7 + j>>8)
	}
	if n >= 4 {
		binary.BigEndian.PutUint32(b, uint32(i))
	}
	return b
}

// echoOver opens a stream from node `from` to node `to`'s "echo" handler,
// sends echoFrames frames (reusing one buffer, as Send allows) while
// reading the echoes on another goroutine, half-closes, and expects io.EOF
// after the last echo.
func echoOver(ctx context.Context, c *cluster, from, to int) error {
	r := c.nodes[from].rpc
	peer := c.nodes[to].id.ID
	s, err := r.OpenStream(ctx, peer, "echo")
	if err != nil {
		return fmt.Errorf("open %d->%d: %w", from, to, err)
	}
	defer s.Close()
	if want, up := r.ConnID(peer); !up || s.ConnID() != want {
		return fmt.Errorf("%d->%d: opener's stream ConnID %d, rpc.ConnID %d (up %v)", from, to, s.ConnID(), want, up)
	}
	sizes := make([]int, echoFrames)
	rng := rand.New(rand.NewPCG(uint64(from), uint64(to)))
	for i := range sizes {
		sizes[i] = echoFrameSize(rng, i)
	}
	sendErr := make(chan error, 1)
	go func() {
		buf := make([]byte, 64<<10)
		for i, n := range sizes {
			if err := s.Send(ctx, fillFrame(buf, i, n)); err != nil {
				sendErr <- fmt.Errorf("Send frame %d: %w", i, err)
				return
			}
			// Overwrite the buffer at once: Send must not keep it.
			for j := range buf[:n] {
				buf[j] = 0xEE
			}
		}
		sendErr <- s.CloseSend()
	}()
	want := make([]byte, 64<<10)
	for i, n := range sizes {
		got, err := s.Recv()
		if err != nil {
			return fmt.Errorf("%d->%d: Recv echo %d of %d: %w", from, to, i, len(sizes), err)
		}
		if exp := fillFrame(want, i, n); !bytes.Equal(got, exp) {
			idx := -1
			if len(got) >= 4 {
				idx = int(binary.BigEndian.Uint32(got))
			}
			return fmt.Errorf("%d->%d: echo %d: got %d bytes (index %d), want %d bytes", from, to, i, len(got), idx, n)
		}
	}
	if got, err := s.Recv(); err != io.EOF {
		return fmt.Errorf("%d->%d: after the last echo Recv returned %d bytes, %v; want io.EOF", from, to, len(got), err)
	}
	if err := <-sendErr; err != nil {
		return fmt.Errorf("%d->%d: %w", from, to, err)
	}
	return nil
}

// testStreamEcho: each node opens a stream to the other's echo handler
// (both at once, so on QUIC both the dialler and the acceptor open
// streams); 1,000 frames of 0..64 KiB come back in order and intact;
// CloseSend gives the handler io.EOF, its nil return gives the opener
// io.EOF; both ends agree with ConnID.
func testStreamEcho(t *testing.T, c *cluster) {
	idx := startAll(c)
	handled := make(chan handlerReport, 4)
	for i, n := range c.nodes {
		self := i
		mustHandleStream(t, n.rpc, "echo", func(ctx context.Context, from membership.NodeID, s Stream) error {
			rep := handlerReport{from: from}
			if want, up := c.nodes[self].rpc.ConnID(from); !up || s.ConnID() != want {
				rep.problem = fmt.Sprintf("handler's stream ConnID %d, rpc.ConnID %d (up %v)", s.ConnID(), want, up)
			} else if id, ok := ConnIDFromContext(ctx); !ok || id != s.ConnID() {
				rep.problem = fmt.Sprintf("handler ctx carries conn id %d,%v; stream says %d", id, ok, s.ConnID())
			}
			for {
				f, err := s.Recv()
				if err == io.EOF {
					handled <- rep
					return nil
				}
				if err != nil {
					rep.err = fmt.Errorf("handler Recv after %d frames: %w", rep.n, err)
					handled <- rep
					return err
				}
				rep.n++
				if err := s.Send(ctx, f); err != nil {
					rep.err = fmt.Errorf("handler Send: %w", err)
					handled <- rep
					return err
				}
			}
		}, 0)
	}
	c.waitMesh(idx...)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	errc := make(chan error, 2)
	for _, d := range [][2]int{{1, 0}, {0, 1}} {
		go func() { errc <- echoOver(ctx, c, d[0], d[1]) }()
	}
	for range 2 {
		if err := within(t, errc, 10*time.Minute, "the echo exchanges"); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		rep := within(t, handled, time.Minute, "the echo handlers to end")
		if rep.err != nil || rep.problem != "" {
			t.Fatalf("handler for %s: %v %s", rep.from.Short(), rep.err, rep.problem)
		}
		if rep.n != echoFrames {
			t.Fatalf("handler for %s echoed %d frames, want %d", rep.from.Short(), rep.n, echoFrames)
		}
	}
}

// ---- 2. refusals ----

func testStreamRefusals(t *testing.T, c *cluster) {
	idx := startAll(c)
	b := c.nodes[0].rpc
	a := c.nodes[1].rpc
	bID := c.nodes[0].id.ID
	mustHandle(t, b, "req", echo, 0)
	mustHandleStream(t, b, "str", echoStream, 0)
	// One name space for both kinds, each name registered once.
	mustHandle(t, b, "dup", echo, 0)
	if err := b.HandleStream("dup", echoStream, 0); err == nil {
		t.Fatal("HandleStream accepted a name already registered with Handle")
	}
	if err := b.Handle("str", echo, 0); err == nil {
		t.Fatal("Handle accepted a name already registered with HandleStream")
	}
	if err := b.HandleStream("str", echoStream, 0); err == nil {
		t.Fatal("HandleStream accepted a duplicate")
	}
	c.waitMesh(idx...)
	ctx := t.Context()

	s, err := a.OpenStream(ctx, bID, "none")
	wantKind(t, "OpenStream with no handler", err, ErrRefused)
	if s != nil {
		t.Fatal("refused OpenStream returned a stream")
	}
	_, err = a.OpenStream(ctx, bID, "req")
	wantKind(t, "OpenStream on a request protocol", err, ErrRefused)
	_, err = a.Call(ctx, bID, "str", []byte("x"))
	wantKind(t, "Call on a stream protocol", err, ErrRefused)
	err = a.Push(ctx, bID, "str", []byte("x"))
	wantKind(t, "Push on a stream protocol", err, ErrRefused)
	if got := statsOf(b, c.nodes[1].id.ID).RefusedStreams; got != 4 {
		t.Fatalf("refused streams counted %d, want 4", got)
	}

	// Package-wide error kinds apply to OpenStream as to Call.
	_, err = a.OpenStream(ctx, newIdentities(t, 1)[0].ID, "str")
	wantKind(t, "OpenStream to a non-member", err, ErrUnknownPeer)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = a.OpenStream(cctx, bID, "str")
	wantKind(t, "OpenStream with an ended ctx", err, ErrCancelled)

	// The connection and both kinds of protocol still work.
	st := mustOpen(t, c, 1, 0, "str")
	roundTrip(t, st, "after refusals")
	st.Close()
	if resp, err := a.Call(ctx, bID, "req", []byte("ok")); err != nil || string(resp) != "ok" {
		t.Fatalf("Call after refusals: %q %v", resp, err)
	}
	if resp, err := a.Call(ctx, bID, "dup", []byte("ok")); err != nil || string(resp) != "ok" {
		t.Fatalf("Call on the request protocol whose stream registration failed: %q %v", resp, err)
	}
}

// ---- 3. per-peer limit ----

func testStreamLimitPerPeer(t *testing.T, c *cluster) {
	idx := startAll(c)
	started := make(chan membership.NodeID, 16)
	returned := make(chan membership.NodeID, 16)
	mustHandleStream(t, c.nodes[0].rpc, "lim", func(ctx context.Context, from membership.NodeID, s Stream) error {
		started <- from
		<-ctx.Done()
		returned <- from
		return nil
	}, 2)
	c.waitMesh(idx...)
	n0, n1, n2 := c.nodes[0].id.ID, c.nodes[1].id.ID, c.nodes[2].id.ID
	s1 := mustOpen(t, c, 1, 0, "lim")
	s2 := mustOpen(t, c, 1, 0, "lim")
	defer s2.Close()
	for range 2 {
		if from := within(t, started, time.Minute, "node 1's handlers to start"); from != n1 {
			t.Fatalf("handler started for %s, want node 1", from.Short())
		}
	}
	_, err := c.nodes[1].rpc.OpenStream(t.Context(), n0, "lim")
	wantKind(t, "third stream from node 1 at limit 2", err, ErrRefused)

	// The limit is per peer: node 2 gets its own two.
	for range 2 {
		s := mustOpen(t, c, 2, 0, "lim")
		defer s.Close()
		if from := within(t, started, time.Minute, "node 2's handler to start"); from != n2 {
			t.Fatalf("handler started for %s, want node 2", from.Short())
		}
	}

	// Closing one of node 1's streams ends its handler and frees the slot.
	s1.Close()
	if from := within(t, returned, time.Minute, "the abandoned stream's handler to return"); from != n1 {
		t.Fatalf("handler returned for %s, want node 1", from.Short())
	}
	synctest.Wait() // the slot is released once the handler's goroutine is done
	s3 := mustOpen(t, c, 1, 0, "lim")
	defer s3.Close()
	if from := within(t, started, time.Minute, "the replacement stream's handler"); from != n1 {
		t.Fatalf("handler started for %s, want node 1", from.Short())
	}
	_, err = c.nodes[1].rpc.OpenStream(t.Context(), n0, "lim")
	wantKind(t, "node 1 back at its limit", err, ErrRefused)
}

// ---- 4. pushback ----

func testStreamPushback(t *testing.T, c *cluster) {
	idx := startAll(c)
	ended := make(chan error, 2)
	mustHandleStream(t, c.nodes[0].rpc, "sink", func(ctx context.Context, _ membership.NodeID, s Stream) error {
		<-ctx.Done() // never reads
		ended <- ctx.Err()
		return nil
	}, 0)
	c.waitMesh(idx...)
	s := mustOpen(t, c, 1, 0, "sink")
	defer s.Close()
	const timeout = 2 * time.Second
	frame := make([]byte, 64<<10)
	sent := 0
	var err error
	for sent < 64<<20 {
		ctx, cancel := context.WithTimeout(t.Context(), timeout)
		start := time.Now()
		err = s.Send(ctx, frame)
		elapsed := time.Since(start)
		cancel()
		if err != nil {
			wantKind(t, fmt.Sprintf("Send after %d bytes to a reader that never reads", sent), err, ErrCancelled)
			if elapsed < timeout {
				t.Fatalf("Send failed after %v, before its %v deadline: %v", elapsed, timeout, err)
			}
			break
		}
		sent += len(frame)
	}
	if err == nil {
		t.Fatalf("sent %d bytes to a handler that never reads without being pushed back", sent)
	}
	t.Logf("pushed back after %d KiB", sent>>10)

	// The stream was reset: a further Send fails without waiting for its
	// own deadline, and the handler's ctx ends.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	start := time.Now()
	err = s.Send(ctx, []byte("more"))
	elapsed := time.Since(start)
	cancel()
	if err == nil {
		t.Fatal("Send on a stream reset by a cancelled Send succeeded")
	}
	if elapsed >= 10*time.Second {
		t.Fatalf("Send on a reset stream blocked until its deadline: %v", err)
	}
	if err := within(t, ended, time.Minute, "the handler's ctx to end"); err == nil {
		t.Fatal("handler ctx done without an error")
	}

	// A ctx cancelled without a deadline ends a pushed-back Send the same
	// way. Ten seconds of virtual time show the sender stuck in Send first.
	s2 := mustOpen(t, c, 1, 0, "sink")
	defer s2.Close()
	cctx, ccancel := context.WithCancel(t.Context())
	defer ccancel()
	var sent2 atomic.Int64
	sendDone := make(chan error, 1)
	go func() {
		for sent2.Load() < 64<<20 {
			if err := s2.Send(cctx, frame); err != nil {
				sendDone <- err
				return
			}
			sent2.Add(int64(len(frame)))
		}
		sendDone <- nil
	}()
	<-time.After(10 * time.Second)
	stuck := sent2.Load()
	select {
	case err := <-sendDone:
		t.Fatalf("second stream: sender stopped by itself after %d bytes: %v", sent2.Load(), err)
	default:
	}
	ccancel()
	wantKind(t, "second stream: Send cancelled while pushed back", within(t, sendDone, time.Minute, "the cancelled Send"), ErrCancelled)
	if got := sent2.Load(); got != stuck {
		t.Fatalf("second stream: %d bytes sent while stuck, %d in the end", stuck, got)
	}
	if err := within(t, ended, time.Minute, "the second handler's ctx to end"); err == nil {
		t.Fatal("second handler ctx done without an error")
	}
}

// ---- 5. frame size ----

func testStreamFrameSize(t *testing.T, c *cluster) {
	idx := startAll(c)
	handlerSend := make(chan error, 1)
	mustHandleStream(t, c.nodes[0].rpc, "echo", func(ctx context.Context, _ membership.NodeID, s Stream) error {
		first := true
		for {
			f, err := s.Recv()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			if first {
				first = false
				handlerSend <- s.Send(ctx, make([]byte, 1<<10+1))
			}
			if err := s.Send(ctx, f); err != nil {
				return err
			}
		}
	}, 0)
	c.waitMesh(idx...)
	s := mustOpen(t, c, 1, 0, "echo")
	defer s.Close()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	wantKind(t, "Send of MaxFrameSize+1", s.Send(ctx, make([]byte, 1<<10+1)), ErrTooLarge)

	// Still usable, in both directions, for frames up to the limit.
	full := fillFrame(make([]byte, 1<<10), 7, 1<<10)
	if err := s.Send(ctx, full); err != nil {
		t.Fatalf("Send of exactly MaxFrameSize after a refused frame: %v", err)
	}
	wantKind(t, "handler's Send of MaxFrameSize+1", within(t, handlerSend, time.Minute, "the handler's oversized Send"), ErrTooLarge)
	got, err := recvWithin(t, s, time.Minute, "the echo of the full-size frame")
	if err != nil || !bytes.Equal(got, full) {
		t.Fatalf("echo of the full-size frame: %d bytes, %v", len(got), err)
	}
	roundTrip(t, s, "small")
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := recvWithin(t, s, time.Minute, "io.EOF"); err != io.EOF {
		t.Fatalf("after CloseSend: %v, want io.EOF", err)
	}
}

// ---- 6. handler error ----

func testStreamHandlerError(t *testing.T, c *cluster) {
	idx := startAll(c)
	got := make(chan string, 2)
	mustHandleStream(t, c.nodes[0].rpc, "fail", func(ctx context.Context, _ membership.NodeID, s Stream) error {
		f, err := s.Recv()
		if err != nil {
			got <- "recv error: " + err.Error()
			return nil
		}
		got <- string(f)
		return errors.New("nope")
	}, 0)
	mustHandleStream(t, c.nodes[0].rpc, "panic", func(ctx context.Context, _ membership.NodeID, s Stream) error {
		f, _ := s.Recv()
		got <- string(f)
		panic("stream handler bug")
	}, 0)
	c.waitMesh(idx...)

	for _, proto := range []string{"fail", "panic"} {
		s := mustOpen(t, c, 1, 0, proto)
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		if err := s.Send(ctx, []byte("one")); err != nil {
			t.Fatalf("%s: first Send: %v", proto, err)
		}
		if f := within(t, got, time.Minute, proto+": the handler's frame"); f != "one" {
			t.Fatalf("%s: handler got %q", proto, f)
		}
		_, err := recvWithin(t, s, time.Minute, proto+": the opener's Recv")
		wantKind(t, proto+": opener's Recv after the handler failed", err, ErrRemote)
		// Send fails too, once the reset reached us; its first failure
		// says why (ErrRemote, per StreamHandler's contract).
		var sendErr error
		poll.Until(t, time.Minute, proto+": Send to fail", func() bool {
			sctx, scancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer scancel()
			sendErr = s.Send(sctx, []byte("more"))
			return sendErr != nil
		})
		wantKind(t, proto+": opener's Send after the handler failed", sendErr, ErrRemote)
		cancel()
		s.Close()
	}
}

// ---- 7. opener Close ----

func testStreamOpenerClose(t *testing.T, c *cluster) {
	idx := startAll(c)
	entered := make(chan struct{}, 1)
	report := make(chan handlerReport, 1)
	mustHandleStream(t, c.nodes[0].rpc, "wait", func(ctx context.Context, from membership.NodeID, s Stream) error {
		entered <- struct{}{}
		_, err := s.Recv()
		report <- handlerReport{from: from, err: err, ctxEnded: ctxEnds(ctx, ctxGrace)}
		return nil
	}, 0)
	c.waitMesh(idx...)
	s := mustOpen(t, c, 1, 0, "wait")
	within(t, entered, time.Minute, "the handler to start")
	openerRecv := make(chan error, 1)
	go func() {
		_, err := s.Recv()
		openerRecv <- err
	}()
	synctest.Wait() // both Recvs are blocked
	s.Close()
	s.Close() // idempotent

	wantBroken(t, "opener's own Recv after Close", within(t, openerRecv, time.Minute, "Close to unblock the opener's Recv"))
	rep := within(t, report, time.Minute, "the handler's Recv to fail")
	wantBroken(t, "handler's Recv after the opener's Close", rep.err)
	if !rep.ctxEnded {
		t.Fatal("handler ctx did not end after the opener's Close")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := s.Send(ctx, []byte("x")); err == nil {
		t.Fatal("Send after Close succeeded")
	}
}

// ---- 8. link down ----

func testStreamLinkDown(t *testing.T, c *cluster) {
	idx := startAll(c)
	report := make(chan handlerReport, 4)
	mustHandleStream(t, c.nodes[0].rpc, "echo", func(ctx context.Context, from membership.NodeID, s Stream) error {
		for {
			f, err := s.Recv()
			if err == nil {
				err = s.Send(ctx, f)
			}
			if err != nil {
				report <- handlerReport{from: from, err: err, ctxEnded: ctxEnds(ctx, ctxGrace)}
				return nil
			}
		}
	}, 0)
	c.waitMesh(idx...)
	n0, n1 := c.nodes[0].id.ID, c.nodes[1].id.ID
	s1 := mustOpen(t, c, 1, 0, "echo")
	defer s1.Close()
	s2 := mustOpen(t, c, 2, 0, "echo")
	defer s2.Close()
	roundTrip(t, s1, "before 1")
	roundTrip(t, s2, "before 2")
	old1 := s1.ConnID()
	old0, _ := c.nodes[0].rpc.ConnID(n1)

	recv1 := make(chan error, 1)
	go func() {
		_, err := s1.Recv()
		recv1 <- err
	}()
	c.partition(0, 1)
	c.nodes[1].events.waitDown(t, n0, c.linkTimeout)
	c.nodes[0].events.waitDown(t, n1, c.linkTimeout)
	wantKind(t, "opener's Recv when the link went down", within(t, recv1, c.linkTimeout, "the opener's Recv to fail"), ErrNotConnected)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	err := s1.Send(ctx, []byte("into the void"))
	cancel()
	wantKind(t, "opener's Send after the link went down", err, ErrNotConnected)
	rep := within(t, report, c.linkTimeout+time.Minute, "the handler's Recv to fail")
	if rep.from != n1 {
		t.Fatalf("handler of %s failed, want node 1's", rep.from.Short())
	}
	wantBroken(t, "handler's Recv when the link went down", rep.err)
	if !rep.ctxEnded {
		t.Fatal("handler ctx did not end when the link went down")
	}
	// The stream on the uncut link 2-0 is unaffected.
	roundTrip(t, s2, "still here")

	c.heal(0, 1)
	c.nodes[1].events.waitUp(t, n0, old1, 2*time.Minute)
	c.nodes[0].events.waitUp(t, n1, old0, 2*time.Minute)
	s3 := mustOpen(t, c, 1, 0, "echo")
	defer s3.Close()
	if s3.ConnID() <= old1 {
		t.Fatalf("stream after heal rides conn %d, not newer than %d", s3.ConnID(), old1)
	}
	if id, up := c.nodes[1].rpc.ConnID(n0); !up || id != s3.ConnID() {
		t.Fatalf("stream after heal rides conn %d, rpc.ConnID says %d (up %v)", s3.ConnID(), id, up)
	}
	roundTrip(t, s3, "after heal")
}

// ---- 9. transport Close ----

func testStreamTransportClose(t *testing.T, c *cluster) {
	idx := startAll(c)
	entered := make(chan struct{}, 1)
	report := make(chan handlerReport, 1)
	returned := make(chan struct{})
	mustHandleStream(t, c.nodes[0].rpc, "wait", func(ctx context.Context, from membership.NodeID, s Stream) error {
		defer close(returned)
		entered <- struct{}{}
		_, err := s.Recv()
		report <- handlerReport{from: from, err: err, ctxEnded: ctxEnds(ctx, ctxGrace)}
		return nil
	}, 0)
	c.waitMesh(idx...)
	s := mustOpen(t, c, 1, 0, "wait")
	defer s.Close()
	within(t, entered, time.Minute, "the handler to start")
	openerRecv := make(chan error, 1)
	go func() {
		_, err := s.Recv()
		openerRecv <- err
	}()
	synctest.Wait() // the handler is blocked in Recv

	if err := c.nodes[0].rpc.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-returned:
	default:
		t.Fatal("Close returned while the stream handler was still running")
	}
	rep := <-report
	wantBroken(t, "handler's Recv when its transport closed", rep.err)
	if !rep.ctxEnded {
		t.Fatal("handler ctx did not end when its transport closed")
	}
	err := within(t, openerRecv, c.linkTimeout, "the opener's Recv to fail")
	wantBroken(t, "opener's Recv when the peer's transport closed", err)
	t.Logf("opener's Recv: %v", err)
	_, err = c.nodes[0].rpc.OpenStream(t.Context(), c.nodes[1].id.ID, "wait")
	wantKind(t, "OpenStream on a closed transport", err, ErrClosed)
}

// ---- 10. peer budget ----

// testStreamPeerBudget: frames returned by Recv count against the sending
// peer's MaxBytesPerPeer (128 KiB here) until the next Recv. Node 1
// has three streams whose handlers each read one 64 KiB frame and hold it:
// exactly two succeed, the third Recv fails with ErrRefused and resets that
// stream. Node 2's budget is separate. Once the holders return, node 1 is
// served again.
func testStreamPeerBudget(t *testing.T, c *cluster) {
	idx := startAll(c)
	release := make(chan struct{})
	report := make(chan handlerReport, 8)
	mustHandleStream(t, c.nodes[0].rpc, "hold", func(ctx context.Context, from membership.NodeID, s Stream) error {
		f, err := s.Recv()
		rep := handlerReport{from: from, err: err, n: len(f), tag: -1}
		if err == nil && len(f) > 0 {
			rep.tag = int(f[0])
		}
		report <- rep
		if err != nil {
			return nil
		}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	}, 0)
	mustHandleStream(t, c.nodes[0].rpc, "seq", func(ctx context.Context, from membership.NodeID, s Stream) error {
		rep := handlerReport{from: from}
		for {
			f, err := s.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				rep.err = fmt.Errorf("Recv of frame %d: %w", rep.n, err)
				break
			}
			if len(f) != 64<<10 || int(f[0]) != 20+rep.n {
				rep.err = fmt.Errorf("frame %d: %d bytes tag %d", rep.n, len(f), f[0])
				break
			}
			rep.n++
		}
		report <- rep
		return nil
	}, 0)
	c.waitMesh(idx...)
	n1, n2 := c.nodes[1].id.ID, c.nodes[2].id.ID
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	send := func(s Stream, tag int) {
		t.Helper()
		f := make([]byte, 64<<10)
		f[0] = byte(tag)
		if err := s.Send(ctx, f); err != nil {
			t.Fatalf("Send of stream %d's frame: %v", tag, err)
		}
	}
	var streams []Stream
	for i := range 3 {
		s := mustOpen(t, c, 1, 0, "hold")
		defer s.Close()
		streams = append(streams, s)
		send(s, i)
	}
	held := map[int]bool{}
	refused := 0
	for range 3 {
		rep := within(t, report, time.Minute, "node 1's handlers to Recv")
		if rep.from != n1 {
			t.Fatalf("report from %s, want node 1", rep.from.Short())
		}
		switch {
		case rep.err == nil && rep.n == 64<<10:
			held[rep.tag] = true
		case rep.err != nil:
			wantKind(t, "Recv beyond node 1's budget", rep.err, ErrRefused)
			refused++
		default:
			t.Fatalf("handler got %d bytes", rep.n)
		}
	}
	if len(held) != 2 || refused != 1 {
		t.Fatalf("%d frames held, %d refused; want 2 and 1", len(held), refused)
	}
	// Node 2 is not charged for node 1's frames.
	s2 := mustOpen(t, c, 2, 0, "hold")
	defer s2.Close()
	send(s2, 9)
	if rep := within(t, report, time.Minute, "node 2's handler"); rep.from != n2 || rep.err != nil || rep.n != 64<<10 {
		t.Fatalf("node 2's 64 KiB frame: from %s, %d bytes, %v", rep.from.Short(), rep.n, rep.err)
	}
	// The refused stream was reset: its opener sees an error, not io.EOF.
	for i, s := range streams {
		if held[i] {
			continue
		}
		_, err := recvWithin(t, s, time.Minute, "the refused stream's opener Recv")
		wantBroken(t, "opener of the stream refused for budget", err)
		t.Logf("opener of the refused stream: %v", err)
	}

	close(release)
	for i, s := range streams {
		if !held[i] {
			continue
		}
		if _, err := recvWithin(t, s, time.Minute, "the holder to return"); err != io.EOF {
			t.Fatalf("stream %d after its handler returned nil: %v, want io.EOF", i, err)
		}
	}
	// Budget handed back: node 1 is served again.
	s := mustOpen(t, c, 1, 0, "hold")
	defer s.Close()
	send(s, 5)
	if rep := within(t, report, time.Minute, "node 1's handler after release"); rep.err != nil || rep.n != 64<<10 || rep.tag != 5 {
		t.Fatalf("node 1 after the holders returned: %d bytes tag %d, %v", rep.n, rep.tag, rep.err)
	}

	// A frame counts only until the next Recv: one reader can take any
	// number of 64 KiB frames in a row while a second stream holds one
	// (64 + 64 KiB fits the 128 KiB budget, a third frame held would not).
	seq := mustOpen(t, c, 1, 0, "seq")
	defer seq.Close()
	for i := range 5 {
		send(seq, 20+i)
	}
	if err := seq.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if rep := within(t, report, time.Minute, "the sequential reader"); rep.err != nil || rep.n != 5 {
		t.Fatalf("one stream reading five 64 KiB frames in a row: %d read, %v", rep.n, rep.err)
	}
}

// ---- extra: OpenStream's ctx ----

// OpenStream's ctx only bounds the opening: once it returned, ending that
// ctx leaves the stream and the handler's ctx alone.
func testStreamOpenCtx(t *testing.T, c *cluster) {
	idx := startAll(c)
	mustHandleStream(t, c.nodes[0].rpc, "echo", echoStream, 0)
	c.waitMesh(idx...)
	cctx, cancel := context.WithCancel(t.Context())
	s1, err := c.nodes[1].rpc.OpenStream(cctx, c.nodes[0].id.ID, "echo")
	if err != nil {
		t.Fatal(err)
	}
	defer s1.Close()
	dctx, dcancel := context.WithTimeout(t.Context(), time.Second)
	defer dcancel()
	s2, err := c.nodes[1].rpc.OpenStream(dctx, c.nodes[0].id.ID, "echo")
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	cancel()
	<-dctx.Done()
	synctest.Wait()
	roundTrip(t, s1, "cancelled opening ctx")
	roundTrip(t, s2, "expired opening ctx")
}

// ---- extra: credit wait ----

// With every stream credit of the connection held by running stream
// handlers, OpenStream waits for one and fails with ErrCancelled when its
// ctx ends; once a stream ends, opening works again.
func testStreamOpenWaitsForCredit(t *testing.T, c *cluster) {
	idx := startAll(c)
	started := make(chan struct{}, 8)
	returned := make(chan struct{}, 8)
	mustHandleStream(t, c.nodes[1].rpc, "hold", func(ctx context.Context, _ membership.NodeID, s Stream) error {
		started <- struct{}{}
		<-ctx.Done()
		returned <- struct{}{}
		return nil
	}, 4)
	mustHandleStream(t, c.nodes[1].rpc, "echo", echoStream, 4)
	c.waitMesh(idx...)
	var held []Stream
	for range 4 {
		s := mustOpen(t, c, 0, 1, "hold")
		defer s.Close()
		held = append(held, s)
		within(t, started, time.Minute, "a holding handler")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	start := time.Now()
	_, err := c.nodes[0].rpc.OpenStream(ctx, c.nodes[1].id.ID, "echo")
	wantKind(t, "OpenStream with no credit left", err, ErrCancelled)
	if d := time.Since(start); d < 2*time.Second {
		t.Fatalf("OpenStream failed after %v, before its deadline: %v", d, err)
	}
	held[0].Close()
	within(t, returned, time.Minute, "the abandoned stream's handler")
	s := mustOpen(t, c, 0, 1, "echo")
	defer s.Close()
	roundTrip(t, s, "credit back")
}

// ---- extra: handler returns nil at once ----

// A handler that returns nil closes its side cleanly (the opener's Recv
// sees io.EOF) and anything the opener still sends is refused (Send fails).
func testStreamHandlerReturnsNil(t *testing.T, c *cluster) {
	idx := startAll(c)
	mustHandleStream(t, c.nodes[0].rpc, "bye", func(context.Context, membership.NodeID, Stream) error { return nil }, 0)
	c.waitMesh(idx...)
	s := mustOpen(t, c, 1, 0, "bye")
	defer s.Close()
	if _, err := recvWithin(t, s, time.Minute, "io.EOF"); err != io.EOF {
		t.Fatalf("Recv from a handler that returned nil: %v, want io.EOF", err)
	}
	var sendErr error
	poll.Until(t, time.Minute, "Send to a finished handler to fail", func() bool {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		sendErr = s.Send(ctx, []byte("anyone?"))
		return sendErr != nil
	})
	if errors.Is(sendErr, ErrCancelled) {
		t.Fatalf("Send to a finished handler blocked until its deadline: %v", sendErr)
	}
	t.Logf("Send to a finished handler: %v", sendErr)
}

// ---- extra: handler half-close ----

// StreamHandler's ctx ends when the peer abandons the stream, the
// connection dies or the transport closes; the handler's own CloseSend is
// none of these, so a handler that half-closes and keeps reading keeps its
// ctx, and it still ends when the peer abandons the stream afterwards.
func testStreamHandlerHalfClose(t *testing.T, c *cluster) {
	idx := startAll(c)
	mid := make(chan handlerReport, 1)
	final := make(chan handlerReport, 1)
	mustHandleStream(t, c.nodes[0].rpc, "half", func(ctx context.Context, from membership.NodeID, s Stream) error {
		rep := handlerReport{from: from}
		if rep.err = s.Send(ctx, []byte("hello")); rep.err != nil {
			mid <- rep
			return rep.err
		}
		if rep.err = s.CloseSend(); rep.err != nil {
			mid <- rep
			return rep.err
		}
		for rep.n < 3 {
			if _, rep.err = s.Recv(); rep.err != nil {
				mid <- rep
				return rep.err
			}
			rep.n++
			if ctx.Err() != nil && rep.problem == "" {
				rep.problem = fmt.Sprintf("handler ctx ended (%v) after its own CloseSend, while the peer was still sending (frame %d)", context.Cause(ctx), rep.n)
			}
		}
		mid <- rep
		_, err := s.Recv() // until the opener abandons the stream
		final <- handlerReport{from: from, err: err, ctxEnded: ctxEnds(ctx, ctxGrace)}
		return nil
	}, 0)
	c.waitMesh(idx...)
	s := mustOpen(t, c, 1, 0, "half")
	defer s.Close()
	if f, err := recvWithin(t, s, time.Minute, "hello"); err != nil || string(f) != "hello" {
		t.Fatalf("first frame: %q %v", f, err)
	}
	if _, err := recvWithin(t, s, time.Minute, "io.EOF"); err != io.EOF {
		t.Fatalf("after the handler's CloseSend: %v, want io.EOF", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	for i := range 3 {
		if err := s.Send(ctx, []byte{byte(i)}); err != nil {
			t.Fatalf("Send %d to a half-closed handler: %v", i, err)
		}
	}
	rep := within(t, mid, time.Minute, "the half-closed handler to read three frames")
	if rep.err != nil || rep.n != 3 || rep.problem != "" {
		t.Fatalf("half-closed handler: %d frames, %v; %s", rep.n, rep.err, rep.problem)
	}
	synctest.Wait() // the handler is blocked in Recv
	s.Close()
	rep = within(t, final, time.Minute, "the half-closed handler's Recv to fail")
	wantBroken(t, "half-closed handler's Recv after the opener's Close", rep.err)
	if !rep.ctxEnded {
		t.Fatal("half-closed handler's ctx did not end when the opener abandoned the stream")
	}
}
