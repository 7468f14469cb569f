package transport

import (
	"bytes"
	"testing"
)

// FuzzDecodeRequest feeds arbitrary bytes to the request decoder (header
// and frame): it must never panic or allocate beyond what arrived, and a
// request it accepts must re-encode to the same bytes.
func FuzzDecodeRequest(f *testing.F) {
	f.Add(append(appendRequestHeader(nil, kindCall, "echo", 4), "ping"...))
	f.Add(appendRequestHeader(nil, kindPush, "slot-updates", 0))
	f.Add([]byte{wireVersion, kindCall, 0})
	f.Add([]byte{wireVersion, 9, 1, 'x', 0, 0, 0, 0})
	f.Add([]byte{wireVersion, kindCall, 1, 'x', 0xff, 0xff, 0xff, 0xff})
	f.Add(append(appendRequestHeader(nil, kindCall, "x", 1), "ab"...))
	const max = 1 << 16
	f.Fuzz(func(t *testing.T, b []byte) {
		kind, protocol, payload, err := decodeRequest(b, max)
		if err != nil {
			return
		}
		if len(payload) > max {
			t.Fatalf("payload of %d bytes above the limit", len(payload))
		}
		again := append(appendRequestHeader(nil, kind, protocol, len(payload)), payload...)
		if !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs:\n got %x\nwant %x", again, b)
		}
	})
}

// FuzzDecodeResponse does the same for responses.
func FuzzDecodeResponse(f *testing.F) {
	f.Add(append(appendResponseHeader(nil, statusOK, 4), "pong"...))
	f.Add(append(appendResponseHeader(nil, statusError, 4), "oops"...))
	f.Add([]byte{7, 0, 0, 0, 0})
	f.Add([]byte{statusOK, 0x7f, 0xff, 0xff, 0xff})
	const max = 1 << 16
	f.Fuzz(func(t *testing.T, b []byte) {
		status, payload, err := decodeResponse(b, max)
		if err != nil {
			return
		}
		again := append(appendResponseHeader(nil, status, len(payload)), payload...)
		if !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs:\n got %x\nwant %x", again, b)
		}
	})
}
