package transport

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// Timing rules that only the QUIC transport has (memory frames arrive
// whole): a peer that stops part way through a request, or stops reading a
// response, is cut off after a bounded time.

// rawRequestWithin writes b on a new stream (without FIN) and waits at most
// d (virtual) for the peer to reset it; it returns the reset code, or
// reports false when the stream was still open after d.
func rawRequestWithin(t *testing.T, conn *quic.Conn, b []byte, d time.Duration) (quic.StreamErrorCode, bool) {
	t.Helper()
	str, err := conn.OpenStreamSync(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer str.CancelWrite(0)
	defer str.CancelRead(0)
	if _, err := str.Write(b); err != nil {
		t.Fatal(err)
	}
	_ = str.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 1024)
	for {
		_, err := str.Read(buf)
		var se *quic.StreamError
		switch {
		case errors.As(err, &se):
			return se.ErrorCode, true
		case errors.Is(err, os.ErrDeadlineExceeded):
			return 0, false
		case err != nil:
			t.Fatalf("read: %v", err)
		}
	}
}

// Issue 16, finding 8: a request that stops after its header, inside its
// length or inside its payload is reset within HeaderTimeout (header and
// length) or ProgressTimeout (payload) and counted as garbage; the budget
// charged for the partial payload is given back, so a whole request of the
// same size is served afterwards.
func TestStalledRequestIsTimedOut(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxFrameSize = 1 << 20
	cfg.MaxBytesPerPeer = 1 << 20
	simTest(t, 2, cfg, func(t *testing.T, c *cluster) {
		b, conn, closeRaw := rawAgainstNode1(t, c, nil)
		defer closeRaw()

		whole := append(appendRequestHeader(nil, kindCall, "echo", cfg.MaxFrameSize), make([]byte, cfg.MaxFrameSize)...)
		hdr := 3 + len("echo")
		cases := []struct {
			name  string
			n     int
			limit time.Duration
		}{
			{"header only", hdr, cfg.HeaderTimeout},
			{"half of the length", hdr + 2, cfg.HeaderTimeout},
			{"part of the payload", hdr + frameHeaderLen + 1000, cfg.ProgressTimeout},
		}
		for _, tc := range cases {
			start := time.Now()
			code, reset := rawRequestWithin(t, conn, whole[:tc.n], time.Minute)
			took := time.Since(start)
			if !reset {
				t.Errorf("%s: still open after %v", tc.name, took)
				continue
			}
			if code != codeGarbage || took > tc.limit+time.Second {
				t.Errorf("%s: reset with %#x after %v, want %#x within %v", tc.name, code, took, codeGarbage, tc.limit)
			}
		}
		if got := b.rpc.(*Transport).Stats(c.nodes[0].id.ID).GarbageFrames; got != uint64(len(cases)) {
			t.Errorf("garbage counted %d, want %d", got, len(cases))
		}
		code, out := rawRequest(t, conn, whole, true)
		if st, resp, err := decodeResponse(out, cfg.MaxFrameSize); code != 0 || err != nil || st != statusOK || len(resp) != cfg.MaxFrameSize {
			t.Fatalf("whole request after the stalled ones: code %#x, status %d, %d bytes, %v", code, st, len(resp), err)
		}
	})
}

// A peer that grants no flow-control window and never reads gets its
// responses, however small, reset after ProgressTimeout (counted as
// stalled writes): a response is done only once it has been sent, so a
// stream's credit and budget are not handed back while its last bytes
// still wait in quic-go for a window that never opens.
func TestUnreadSmallResponsesAreReset(t *testing.T) {
	simTest(t, 2, DefaultConfig(), func(t *testing.T, c *cluster) {
		b, conn, closeRaw := rawAgainstNode1(t, c, &quic.Config{
			MaxIdleTimeout: c.cfg.IdleTimeout, KeepAlivePeriod: c.cfg.KeepAlive,
			InitialStreamReceiveWindow: 1, MaxStreamReceiveWindow: 1,
		})
		defer closeRaw()

		const streams = 10
		var strs []*quic.Stream
		for range streams {
			str, err := conn.OpenStreamSync(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := str.Write(append(appendRequestHeader(nil, kindCall, "echo", 100), make([]byte, 100)...)); err != nil {
				t.Fatal(err)
			}
			str.Close()
			strs = append(strs, str)
		}
		time.Sleep(c.cfg.ProgressTimeout + time.Second)
		for i, str := range strs {
			_ = str.SetReadDeadline(time.Now().Add(time.Millisecond))
			var one [1]byte
			_, err := str.Read(one[:])
			var se *quic.StreamError
			if !errors.As(err, &se) || se.ErrorCode != codeStalled {
				t.Errorf("stream %d: read %v, want a reset with code %#x", i, err, codeStalled)
			}
		}
		if got := b.rpc.(*Transport).Stats(c.nodes[0].id.ID).StalledWrites; got != streams {
			t.Errorf("stalled writes counted %d, want %d", got, streams)
		}
	})
}

// What a Call or Push reads back is bounded by what it can legitimately
// get: a Push answered with a payload fails with ErrProtocol (a garbage
// frame of the peer's) without the payload being read; a handler error
// text longer than our MaxErrorText is cut to it on reading.
func TestAnswersBoundedOnReading(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxErrorText = 100
	simTest(t, 2, cfg, func(t *testing.T, c *cluster) {
		b, conn, closeRaw := rawAgainstNode1(t, c, nil)
		defer closeRaw()
		answers := map[string][]byte{
			"push-payload": append(appendResponseHeader(nil, statusOK, 5), "hello"...),
			"push-empty":   appendResponseHeader(nil, statusOK, 0),
			"long-error":   append(appendResponseHeader(nil, statusError, 64<<10), bytes.Repeat([]byte("e"), 64<<10)...),
		}
		go func() {
			for {
				str, err := conn.AcceptStream(context.Background())
				if err != nil {
					return
				}
				go func() {
					_, proto, _, err := readRequestFrame(str)
					if err != nil {
						return
					}
					str.Write(answers[proto])
					str.Close()
				}()
			}
		}()
		peer := c.nodes[0].id.ID
		ctx := t.Context()
		wantKind(t, "push answered with a payload", b.rpc.Push(ctx, peer, "push-payload", nil), ErrProtocol)
		if err := b.rpc.Push(ctx, peer, "push-empty", nil); err != nil {
			t.Fatalf("push answered with nothing: %v", err)
		}
		_, err := b.rpc.Call(ctx, peer, "long-error", nil)
		wantKind(t, "call answered with a long error", err, ErrRemote)
		var e *Error
		if errors.As(err, &e); len(e.Detail) != cfg.MaxErrorText {
			t.Errorf("error text of %d bytes, want it cut to %d", len(e.Detail), cfg.MaxErrorText)
		}
		if got := b.rpc.(*Transport).Stats(peer); got.GarbageFrames != 1 {
			t.Errorf("stats %+v, want one garbage frame", got)
		}
	})
}

// readRequestFrame reads a whole request from a stream.
func readRequestFrame(r io.Reader) (kind byte, protocol string, payload []byte, err error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return 0, "", nil, err
	}
	return decodeRequest(b, 1<<20)
}

// A peer that reads a response slowly but steadily is served to the end:
// the progress rule cuts off a reader that stopped, not one on a link
// that moves little per stream (a lossy link shared by many streams).
// Here the client's stream window is 4 KiB and it reads 2 KiB every 4 s
// (500 B/s, under the 16 KiB per ProgressTimeout the rule once asked
// for, which reset this stream after 10 s).
func TestSlowSteadyReaderIsServed(t *testing.T) {
	simTest(t, 2, DefaultConfig(), func(t *testing.T, c *cluster) {
		b, conn, closeRaw := rawAgainstNode1(t, c, &quic.Config{
			MaxIdleTimeout: c.cfg.IdleTimeout, KeepAlivePeriod: c.cfg.KeepAlive,
			InitialStreamReceiveWindow: 4 << 10, MaxStreamReceiveWindow: 4 << 10,
		})
		defer closeRaw()
		const size = 64 << 10
		str, err := conn.OpenStreamSync(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := str.Write(append(appendRequestHeader(nil, kindCall, "echo", size), make([]byte, size)...)); err != nil {
			t.Fatal(err)
		}
		str.Close()
		start := time.Now()
		var got int
		buf := make([]byte, 2<<10)
		for {
			time.Sleep(4 * time.Second)
			n, err := io.ReadFull(str, buf)
			got += n
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				break
			}
			if err != nil {
				t.Fatalf("after %d bytes in %v: %v", got, time.Since(start), err)
			}
		}
		if got < size {
			t.Fatalf("read %d bytes of a %d-byte answer", got, size)
		}
		if st := b.rpc.(*Transport).Stats(c.nodes[0].id.ID); st.StalledWrites != 0 {
			t.Errorf("stalled writes counted %d, want 0", st.StalledWrites)
		}
		t.Logf("%d bytes read at 500 B/s in %v", got, time.Since(start).Round(time.Second))
	})
}
