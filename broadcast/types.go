package broadcast

import (
	"errors"
	"fmt"
)

// PeerID names a peer. The core treats it as an opaque comparable value; the
// actors use the printable form of the peer's NodeID.
type PeerID string

// Slot is a position in a sender's slot table. Freed slots are reused, so
// slot numbers stay dense and below the sender's live-slot bound.
type Slot uint64

// CommitID orders the changes of one sender's table. It grows by one on
// every publish and every abort; a restarted sender starts again from zero,
// which is why receivers order updates by (ConnID, CommitID).
type CommitID uint64

// ConnID is the receiver's local number for a connection to a peer. It grows
// with every new connection to that peer, so updates that arrive on a newer
// connection win over anything an older connection delivered.
type ConnID uint64

// ArtifactID identifies an artifact within a channel. It holds arbitrary
// bytes; a Go string is used so that it can key maps.
type ArtifactID string

// Artifact is the unit a channel broadcasts.
type Artifact struct {
	// ID is unique within the channel.
	ID ArtifactID
	// Attribute is small data the admission function reads without the payload.
	Attribute []byte
	// Payload is the artifact's content.
	Payload []byte
	// LatencySensitive artifacts are pushed whole up to the sender's
	// MaxPushSize (whatever its PushThreshold); larger ones are advertised
	// and fetched like any other, since receivers refuse pushes beyond it.
	LatencySensitive bool
}

// UpdateKind says what a SlotUpdate carries.
type UpdateKind uint8

const (
	// KindAdvert carries the id and attribute; the receiver fetches the payload.
	KindAdvert UpdateKind = iota + 1
	// KindPush carries the whole artifact.
	KindPush
	// KindCleared empties the slot.
	KindCleared
	// KindSync tells the receiver that every slot the sender holds has been
	// acknowledged on this connection, so entries the receiver still keeps
	// from the sender's earlier connections are obsolete. It has no slot.
	KindSync
)

func (k UpdateKind) String() string {
	switch k {
	case KindAdvert:
		return "advert"
	case KindPush:
		return "push"
	case KindCleared:
		return "cleared"
	case KindSync:
		return "sync"
	default:
		return fmt.Sprintf("kind(%d)", uint8(k))
	}
}

// SlotUpdate is the newest state of one slot of a sender's table, as sent to
// one peer.
type SlotUpdate struct {
	Commit CommitID
	Slot   Slot
	Kind   UpdateKind
	// Artifact holds the id and attribute for an advert, and everything for a
	// push. It is empty for cleared and sync updates.
	Artifact Artifact
	// Digest names the manifest of an advertised artifact (see Manifest):
	// what a receiver fetches and checks the chunks against.
	Digest Digest
}

// Decision is an admission function's verdict on an advertised artifact.
type Decision uint8

const (
	// Fetch downloads the artifact now (or uses the pushed copy).
	Fetch Decision = iota + 1
	// Later keeps the advert and asks again on Receiver.Reevaluate.
	Later
	// Drop never fetches the artifact while it stays advertised.
	Drop
)

func (d Decision) String() string {
	switch d {
	case Fetch:
		return "fetch"
	case Later:
		return "later"
	case Drop:
		return "drop"
	default:
		return fmt.Sprintf("decision(%d)", uint8(d))
	}
}

// AdmissionFunc decides, from an advert alone, whether to fetch an artifact.
// It must be pure and fast: the receiver calls it on its own goroutine for
// every new id and for every Later id on Reevaluate.
type AdmissionFunc func(id ArtifactID, attribute []byte) Decision

// VerifyFunc checks an artifact received for an id before it is delivered.
// A non-nil error rejects it and blames the peer that sent it.
type VerifyFunc func(a Artifact) error

// AdmitAll fetches everything.
func AdmitAll(ArtifactID, []byte) Decision { return Fetch }

// Errors returned by the cores. They are sentinel values so that callers can
// count them with errors.Is; the returned errors wrap them with detail.
var (
	// ErrSlotsExhausted: the sender already holds its maximum of live slots.
	ErrSlotsExhausted = errors.New("broadcast: live slot limit reached")
	// ErrDuplicate: the id is already published (or already aborted).
	ErrDuplicate = errors.New("broadcast: duplicate")
	// ErrUnknownID: abort of an id that is not live.
	ErrUnknownID = errors.New("broadcast: unknown artifact id")
	// ErrInvalid: an input fails validation (empty id, oversized id or attribute, unknown kind).
	ErrInvalid = errors.New("broadcast: invalid input")
	// ErrStale: an update older than what the receiver already holds for the slot.
	ErrStale = errors.New("broadcast: stale update")
	// ErrSlotLimit: an update for a new slot beyond the per-peer slot limit.
	ErrSlotLimit = errors.New("broadcast: slot limit exceeded")
	// ErrMismatch: a fetched or pushed artifact failed the id check or the verifier.
	ErrMismatch = errors.New("broadcast: artifact does not match its id")
	// ErrUnknownPeer: an event names a peer the core does not know.
	ErrUnknownPeer = errors.New("broadcast: unknown peer")
)

// EncodedSize is the size of an artifact in the wire encoding (protobuf
// message Artifact). The push-or-advert decision uses it, so it is computed
// here without importing the protobuf runtime.
func EncodedSize(a Artifact) int {
	n := bytesField(len(a.ID)) + bytesField(len(a.Attribute)) + bytesField(len(a.Payload))
	if a.LatencySensitive {
		n += 2
	}
	return n
}

// bytesField is the encoded size of a non-empty bytes field with a one-byte tag.
func bytesField(n int) int {
	if n == 0 {
		return 0
	}
	return 1 + varintLen(uint64(n)) + n
}

func varintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}
