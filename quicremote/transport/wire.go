package transport

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/abcast/abcast/membership"

	"github.com/quic-go/quic-go"
)

// Wire format. Every request runs on its own bidirectional stream opened by
// the caller:
//
//	request:  version(1)=1 | kind(1) | nameLen(1) | name | frame, then FIN
//	response: status(1) | frame, then FIN
//	frame:    length(4, big endian) | payload
//
// kind is kindCall or kindPush; status is statusOK (payload is the
// response) or statusError (payload is the handler's error text). The
// receiver refuses a stream by resetting it with one of the stream codes
// below, which the caller maps to a typed error.
//
// A long-lived stream (kind kindStream) sends the same header without a
// frame; the receiver answers statusOK once it admitted the stream, and
// from then on each side writes any number of frames and ends its side
// with FIN.
const (
	wireVersion byte = 1

	kindCall   byte = 1
	kindPush   byte = 2
	kindStream byte = 3

	statusOK    byte = 0
	statusError byte = 1

	// MaxProtocolLen is the longest protocol name, in bytes.
	MaxProtocolLen = 64

	frameHeaderLen = 4
)

// Stream reset codes (both directions).
const (
	codeCancelled      quic.StreamErrorCode = 0x10 + iota // caller gave up
	codeNoHandler                                         // no handler for the protocol
	codeBusy                                              // protocol at its concurrency limit
	codeTooLarge                                          // frame above MaxFrameSize
	codeGarbage                                           // undecodable header or frame
	codeShutdown                                          // receiver is closing
	codeHandlerError                                      // a stream handler returned an error
	codeOverBudget                                        // the peer's memory budget is spent
	codeRespOverBudget                                    // the response does not fit the caller's budget at the callee
	codeStalled                                           // the reader made no progress for ProgressTimeout
)

// Connection close codes.
const (
	connShutdown      quic.ApplicationErrorCode = 0x100 + iota // transport closed
	connRemoved                                                // peer left the member set
	connReplaced                                               // a newer connection took over
	connWrongDialer                                            // the peer should not have dialled us
	connWelcomeFailed                                          // welcome exchange failed
	connAddrChanged                                            // the peer's address changed; redialling
)

// welcomeMagic starts the welcome exchanged on the first stream of every
// connection: the dialler sends magic+its NodeID, the acceptor answers with
// magic+its own. A dial into a node that rejects our certificate "succeeds"
// in QUIC before the rejection arrives; only the answer proves the peer let
// us in. Each side also checks that the NodeID the other claims is the one
// its certificate proves: a node run with another member's key (a mix-up of
// key files, or a stolen key used under a different identity) is refused
// instead of being taken for the member whose key it holds.
var welcomeMagic = []byte("abcast/1 welcome")

func welcomeFor(id membership.NodeID) []byte {
	return append(append([]byte(nil), welcomeMagic...), id[:]...)
}

var welcomeLen = len(welcomeMagic) + len(membership.NodeID{})

var (
	errBadVersion = errors.New("unknown wire version")
	errBadKind    = errors.New("unknown request kind")
	errBadName    = errors.New("bad protocol name")
	errBadStatus  = errors.New("unknown response status")
	errTooLarge   = errors.New("frame exceeds limit")
	errTrailing   = errors.New("data after the frame")
)

// appendRequestHeader appends the request header and the frame length.
func appendRequestHeader(b []byte, kind byte, protocol string, payloadLen int) []byte {
	b = append(b, wireVersion, kind, byte(len(protocol)))
	b = append(b, protocol...)
	return binary.BigEndian.AppendUint32(b, uint32(payloadLen))
}

// appendResponseHeader appends the response status and the frame length.
func appendResponseHeader(b []byte, status byte, payloadLen int) []byte {
	b = append(b, status)
	return binary.BigEndian.AppendUint32(b, uint32(payloadLen))
}

func validProtocol(p string) error {
	if len(p) == 0 || len(p) > MaxProtocolLen {
		return fmt.Errorf("%w: length %d not in 1..%d", errBadName, len(p), MaxProtocolLen)
	}
	return nil
}

// readRequestHeader decodes version, kind and protocol name.
func readRequestHeader(r io.Reader) (kind byte, protocol string, err error) {
	var h [3]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, "", err
	}
	if h[0] != wireVersion {
		return 0, "", fmt.Errorf("%w %d", errBadVersion, h[0])
	}
	if h[1] != kindCall && h[1] != kindPush && h[1] != kindStream {
		return 0, "", fmt.Errorf("%w %d", errBadKind, h[1])
	}
	n := int(h[2])
	if n == 0 || n > MaxProtocolLen {
		return 0, "", fmt.Errorf("%w: length %d", errBadName, n)
	}
	name := make([]byte, n)
	if _, err := io.ReadFull(r, name); err != nil {
		return 0, "", err
	}
	return h[1], string(name), nil
}

// readStatus decodes a response status byte.
func readStatus(r io.Reader) (byte, error) {
	var s [1]byte
	if _, err := io.ReadFull(r, s[:]); err != nil {
		return 0, err
	}
	if s[0] != statusOK && s[0] != statusError {
		return 0, fmt.Errorf("%w %d", errBadStatus, s[0])
	}
	return s[0], nil
}

// readFrameLen decodes a frame length and checks it against max.
func readFrameLen(r io.Reader, max int) (int, error) {
	var l [frameHeaderLen]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return 0, err
	}
	n := binary.BigEndian.Uint32(l[:])
	if uint64(n) > uint64(max) {
		return 0, fmt.Errorf("%w: %d > %d bytes", errTooLarge, n, max)
	}
	return int(n), nil
}

// readPayload reads exactly n bytes. It does not trust n for allocation:
// the buffer grows with the bytes that actually arrive, so a peer that
// announces a huge frame and sends nothing costs us almost nothing.
func readPayload(r io.Reader, n int) ([]byte, error) {
	const step = 1 << 20
	if n <= step {
		buf := make([]byte, n)
		_, err := io.ReadFull(r, buf)
		return buf, noEOF(err)
	}
	buf := make([]byte, 0, step)
	for len(buf) < n {
		if len(buf) == cap(buf) {
			next := min(2*cap(buf), n)
			nb := make([]byte, len(buf), next)
			copy(nb, buf)
			buf = nb
		}
		m, err := r.Read(buf[len(buf):min(cap(buf), n)])
		buf = buf[:len(buf)+m]
		if err != nil {
			if len(buf) == n && err == io.EOF {
				break
			}
			return nil, noEOF(err)
		}
	}
	return buf, nil
}

// expectEOF checks that the stream ends right after the frame.
func expectEOF(r io.Reader) error {
	var b [1]byte
	for {
		n, err := r.Read(b[:])
		if n > 0 {
			return errTrailing
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// noEOF turns a premature end of stream into io.ErrUnexpectedEOF.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// decodeRequest parses a complete request held in memory. The transport
// reads from streams incrementally; this is the same decoder run over a
// byte slice, used by the fuzz target and the in-memory transport's tests.
func decodeRequest(b []byte, max int) (kind byte, protocol string, payload []byte, err error) {
	r := &sliceReader{b: b}
	kind, protocol, err = readRequestHeader(r)
	if err != nil {
		return 0, "", nil, noEOF(err)
	}
	n, err := readFrameLen(r, max)
	if err != nil {
		return 0, "", nil, noEOF(err)
	}
	payload, err = readPayload(r, n)
	if err != nil {
		return 0, "", nil, err
	}
	if err := expectEOF(r); err != nil {
		return 0, "", nil, err
	}
	return kind, protocol, payload, nil
}

// decodeResponse parses a complete response held in memory.
func decodeResponse(b []byte, max int) (status byte, payload []byte, err error) {
	r := &sliceReader{b: b}
	status, err = readStatus(r)
	if err != nil {
		return 0, nil, noEOF(err)
	}
	n, err := readFrameLen(r, max)
	if err != nil {
		return 0, nil, noEOF(err)
	}
	payload, err = readPayload(r, n)
	if err != nil {
		return 0, nil, err
	}
	if err := expectEOF(r); err != nil {
		return 0, nil, err
	}
	return status, payload, nil
}

// sliceReader is bytes.Reader without the extras; it returns short reads
// of at most 7 bytes to exercise the incremental decoder paths.
type sliceReader struct{ b []byte }

func (r *sliceReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), 7)], r.b)
	r.b = r.b[n:]
	return n, nil
}

// smallFrame is the size up to which a frame is written in one piece.
const smallFrame = 16 << 10

// progressChunk is the largest piece of a frame written under one
// deadline, and progressFloor what a frame in transit must move in every
// period of Config.ProgressTimeout (or reach its end). The floor is low
// on purpose: a lossy link shared by many streams moves each of them
// slowly, and such a stream is slow, not stalled (at 20% loss and 150 ms
// one-way, a floor of 16 KiB per 10 s cut honest fetches off, and the
// artifacts of a cell of the fault matrix were never delivered). A peer
// that reads or sends just above the floor holds no more than its budget
// lets it (MaxBytesPerPeer).
const (
	progressChunk = 16 << 10
	progressFloor = 1 << 10
)

// writeWithProgress writes hdr then payload under the progress rule. QUIC
// sends bytes only as fast as the peer's flow control allows, i.e. as fast
// as the peer reads, so a reader that stopped makes the write fail with
// os.ErrDeadlineExceeded instead of pinning the payload and the stream
// forever. It returns only once every byte has left (bar
// retransmissions): quic-go's Write would otherwise keep the last
// kilobyte queued and return, and a peer that grants no window could
// pile up such streams after we gave their credits back.
func writeWithProgress(str *quic.Stream, hdr, payload []byte, d time.Duration) error {
	defer func() { _ = str.SetWriteDeadline(time.Time{}) }()
	if len(hdr)+len(payload) <= smallFrame {
		return writeSent(str, append(hdr, payload...), d)
	}
	if err := writeSent(str, hdr, d); err != nil {
		return err
	}
	return writeSent(str, payload, d)
}

// writeSent writes p as described under writeWithProgress. A small p
// that the peer's window takes at once is queued whole (quic-go copies
// it, and has the window to send it), so that the FIN that usually follows
// goes out in the same packet.
func writeSent(str *quic.Stream, p []byte, d time.Duration) error {
	if len(p) <= smallFrame {
		if err := str.TryWriteAll(p); !errors.Is(err, quic.ErrWouldBlock) {
			return err
		}
	}
	for off := 0; off < len(p); {
		_ = str.SetWriteDeadline(time.Now().Add(d))
		end := min(off+progressChunk, len(p))
		var n int
		var err error
		if end < len(p) {
			// Write returns with the chunk's last kilobyte still queued,
			// which keeps the stream busy until the next chunk arrives.
			n, err = str.Write(p[off:end])
		} else {
			n, err = str.WriteWithLimit(p[off:end], sendAll)
		}
		off += n
		if err != nil && !(n >= progressFloor && errors.Is(err, os.ErrDeadlineExceeded)) {
			return err
		}
	}
	return nil
}

// sendAll is a write limiter that limits nothing; passing one makes
// quic-go's Write wait until the bytes are sent rather than buffered.
func sendAll(n int) int { return n }

// progressReader reads from a stream under the progress rule: a peer that
// sends less than progressFloor in a period of d makes Read fail with
// os.ErrDeadlineExceeded. done clears the deadline.
type progressReader struct {
	str   *quic.Stream
	d     time.Duration
	armed bool // a period is running
	got   int  // bytes read in it
}

func (r *progressReader) Read(p []byte) (int, error) {
	for {
		if !r.armed || r.got >= progressFloor {
			_ = r.str.SetReadDeadline(time.Now().Add(r.d))
			r.armed, r.got = true, 0
		}
		n, err := r.str.Read(p)
		r.got += n
		if n == 0 && r.got >= progressFloor && errors.Is(err, os.ErrDeadlineExceeded) {
			continue // the period moved enough: another one
		}
		return n, err
	}
}

func (r *progressReader) done() { _ = r.str.SetReadDeadline(time.Time{}) }
