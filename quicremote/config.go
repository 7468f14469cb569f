package quicremote

import (
	"errors"
	"fmt"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/protobuf/proto"

	"github.com/abcast/abcast/membership"
)

// DefaultProtocol is the RPC protocol name the remote's batches use.
const DefaultProtocol = "actor/1"

// Config holds the remote's limits. Start from DefaultConfig;
// New calls Validate.
type Config struct {
	// Protocol is the stream protocol name batches are sent on. Both ends
	// must agree. Default DefaultProtocol.
	Protocol string

	// HandlerLimit bounds how many of the remote's incoming streams one
	// peer may have open at once (the RPC HandleStream limit). A peer's
	// remote keeps one per connection, and briefly two while replacing a
	// failed one. Memory per incoming stream: one batch (up to the
	// transport's MaxFrameSize, charged to MaxRequestBytesPerPeer) plus the
	// stream's flow-control window. Default 4.
	HandlerLimit int

	// QueueCapacity bounds the messages waiting to be sent to one peer. A
	// message that finds the queue full is refused at once and becomes a
	// dead letter (DeadLetterQueueFull); senders never block. Memory per
	// peer is at most about QueueCapacity encoded messages. Default 16,384.
	QueueCapacity int

	// MaxBatchMessages and MaxBatchBytes bound one batch (one frame on the
	// peer's stream). The send loop takes whatever is queued up to these
	// bounds, so batches stay small when traffic is light (low latency) and
	// grow under load. The receiver refuses batches beyond its own bounds
	// (a larger frame is refused by the transport before it is read, and
	// the stream is reset), so every node must use the same values.
	// MaxBatchBytes must not exceed the transport's MaxFrameSize; a message whose encoding alone exceeds it becomes a
	// dead letter (DeadLetterUnserializable, ErrMessageTooLarge). Defaults
	// 4,096 messages and 256 KiB (smaller batches pipeline better: the
	// receiver decodes one while the next is on the wire; examples/
	// remotebench measured 128 KiB-512 KiB best and 1 MiB slower).
	MaxBatchMessages int
	MaxBatchBytes    int

	// MaxInflightBatches is how many batches written to a peer may await
	// its acknowledgement; the send loop waits when it is reached. Their
	// messages are kept until then (at most MaxInflightBatches ×
	// MaxBatchBytes of encoded messages per peer) so that a stream that
	// fails turns exactly them into dead letters. The receiver acknowledges
	// every 8 batches, or 2 ms after a batch when traffic is light; a value
	// below 8 makes a busy sender wait for that delay. Default 32.
	MaxInflightBatches int

	// SendTimeout bounds opening a peer's stream and writing one batch to
	// it (which blocks while the peer's flow-control window is full), and
	// how long a written batch may wait for the peer's acknowledgement. A
	// batch that times out is not retried: the stream is reset and every
	// batch not yet acknowledged on it becomes dead letters
	// (DeadLetterSendFailed; they may or may not have been delivered).
	// Default 10 s.
	SendTimeout time.Duration

	// ConnectGrace is how long messages to a member we have not been
	// connected to yet wait in its queue for the first connection (at
	// start-up the dial takes a moment). After that they, and later ones
	// while it stays down, become dead letters (DeadLetterUnreachable), and
	// watches of its actors end with AddressTerminated. Once a connection
	// has gone down (PeerDown), messages to the peer fail at once until it
	// is up again: requests fail fast instead of waiting for a redial that
	// may never come. Default 3 s, the transport's redial interval.
	ConnectGrace time.Duration

	// Serializers are tried in order for every outgoing message; the first
	// that does not return ErrUnsupportedMessage encodes it, and its ID
	// travels with the message. The built-in protobuf serializer (ID 0,
	// reserved) is always appended last. IDs must be unique.
	Serializers []Serializer

	// OnDeadLetter, if set, is told about every message the remote could not
	// send or deliver, with the reason. It runs on the goroutine that gave
	// up on the message (a sender inside Send, the peer's send loop, or a
	// handler); it must be quick and must not block. The standard
	// *actor.DeadLetterEvent is published as well, so a sender waiting for a
	// reply gets a DeadLetterResponse.
	OnDeadLetter func(DeadLetter)

	// Messages are the protobuf types peers may send to this node (each
	// value only names its type), beside protoactor's own messages the
	// remote carries (Watch, Unwatch, Terminated, Stop, PoisonPill,
	// DeadLetterResponse, PID); Remote.RegisterMessages adds more later. A
	// payload of any other type is refused undecoded (UnknownTypes,
	// DeadLetterUndecodable): decoding whatever type a peer names would let
	// it pick a type that costs far more memory decoded than on the wire
	// (the program links descriptorpb, whose FileDescriptorSet of empty
	// entries decodes to ~155 times its size). Default none.
	Messages []proto.Message

	// MaxDecodedBytes and MaxDecodedElements bound one incoming message
	// decoded: its estimated size in memory (Go structs, strings, slices
	// with their growth slack) and its elements (messages, nested ones
	// included, repeated elements, map entries), both counted from the wire
	// bytes before anything is allocated. A message past either is refused
	// (DeadLetterDecodeLimit). The estimate is also charged to the sending
	// peer's transport memory budget (RPC.Reserve) from decoding until the
	// message is handed on (a user message: until its actor has taken it
	// from its mailbox, so what a peer's messages waiting in mailboxes cost
	// is bounded by its budget however many actors it sends to); one the
	// budget cannot take is refused the same way. Defaults 4 MiB (16 full batches of
	// MaxBatchBytes: honest messages decode to a few times their size) and
	// 65,536.
	MaxDecodedBytes    int
	MaxDecodedElements int

	// MaxTargetBacklog bounds, in messages, the user messages a local
	// actor's mailbox may hold before the remote stops delivering more to
	// it from peers. The remote then stops reading that peer's stream (QUIC
	// flow control pushes back on the peer's sender, whose queue fills)
	// until the backlog falls below the bound, for at most BacklogWait per
	// batch; after that the message, and later ones to that actor while it
	// stays full, become dead letters the sender sees
	// (DeadLetterTargetBusy), and the peer's other messages flow again. So
	// a slow actor slows its senders instead of growing its mailbox
	// without bound. Other senders on this node are not counted against it
	// and not held up. Actors with a bounded mailbox (actorkit) refuse
	// beyond their own capacity first. What waiting messages cost stays
	// charged to their senders' budgets until taken (MaxDecodedBytes), so
	// one peer's are bounded by its budget on all actors together, this
	// bound applying per actor on top. Default 4,096 (MaxBatchMessages' default,
	// so one full batch to an idle actor never waits).
	MaxTargetBacklog int
	// BacklogWait is how long one incoming batch may wait in all for full
	// target mailboxes (see MaxTargetBacklog). It must be below
	// SendTimeout, or the sender gives up on the stream first and all its
	// unacknowledged messages fail. Default 2 s.
	BacklogWait time.Duration

	// AllowRemoteStop lets any member stop (Stop, PoisonPill) any actor it
	// can reach on this node. Without it (the default), a peer may stop
	// only actors it spawned here (SpawnNamed); other Stops and
	// PoisonPills are refused (DeadLetterRefused, RefusedSystem).
	AllowRemoteStop bool

	// MaxWatchesPerPeer bounds the watches one member may hold on this
	// node's actors at once (each is an entry in the watched actor's
	// state, about 250 bytes, and a peer may name watchers of any id). A
	// Watch beyond it is refused (DeadLetterRefused, Stats.WatchesRefused)
	// and the watcher is not told: it watches nothing. A record ends with
	// the peer's Unwatch, with the Terminated the actor sends when it
	// stops, and when the peer leaves the member set (its watches are then
	// taken off the actors). Default 16,384 (about 4 MiB per peer).
	MaxWatchesPerPeer int

	// MaxSpawnsPerPeer bounds the actors one member may have spawned on
	// this node (SpawnNamed) and alive at once; its further requests are
	// refused (ErrSpawnRefused at the requester) until some stop. Each is
	// a full actor, so this bounds what a member can make the node hold
	// through remote spawning; 0 refuses every remote spawn. Default 1,024.
	MaxSpawnsPerPeer int
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		Protocol:           DefaultProtocol,
		QueueCapacity:      16384,
		MaxBatchMessages:   4096,
		MaxBatchBytes:      256 << 10,
		SendTimeout:        10 * time.Second,
		MaxInflightBatches: 32,
		HandlerLimit:       4,
		ConnectGrace:       3 * time.Second,
		MaxDecodedBytes:    4 << 20,
		MaxDecodedElements: 1 << 16,
		MaxTargetBacklog:   4096,
		BacklogWait:        2 * time.Second,
		MaxSpawnsPerPeer:   1024,
		MaxWatchesPerPeer:  16384,
	}
}

// Validate reports the fields that are out of range.
func (c Config) Validate() error {
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	check(c.Protocol != "" && len(c.Protocol) <= 255, "Protocol %q must be 1..255 bytes", c.Protocol)
	check(c.QueueCapacity > 0, "QueueCapacity %d must be positive", c.QueueCapacity)
	check(c.MaxBatchMessages > 0, "MaxBatchMessages %d must be positive", c.MaxBatchMessages)
	check(c.MaxBatchBytes > 0, "MaxBatchBytes %d must be positive", c.MaxBatchBytes)
	check(c.MaxInflightBatches > 0, "MaxInflightBatches %d must be positive", c.MaxInflightBatches)
	check(c.SendTimeout > 0, "SendTimeout %v must be positive", c.SendTimeout)
	check(c.ConnectGrace >= 0, "ConnectGrace %v must not be negative", c.ConnectGrace)
	check(c.MaxDecodedBytes > 0, "MaxDecodedBytes %d must be positive", c.MaxDecodedBytes)
	check(c.MaxDecodedElements > 0, "MaxDecodedElements %d must be positive", c.MaxDecodedElements)
	check(c.MaxSpawnsPerPeer >= 0, "MaxSpawnsPerPeer %d must not be negative", c.MaxSpawnsPerPeer)
	check(c.MaxWatchesPerPeer >= 0, "MaxWatchesPerPeer %d must not be negative", c.MaxWatchesPerPeer)
	check(c.MaxTargetBacklog > 0, "MaxTargetBacklog %d must be positive", c.MaxTargetBacklog)
	check(c.BacklogWait >= 0 && c.BacklogWait < c.SendTimeout, "BacklogWait %v must be in [0, SendTimeout %v)", c.BacklogWait, c.SendTimeout)
	for i, m := range c.Messages {
		check(m != nil, "Messages[%d] is nil", i)
	}
	seen := map[int32]bool{protoSerializerID: true}
	for _, s := range c.Serializers {
		if s == nil {
			errs = append(errs, errors.New("nil serializer"))
			continue
		}
		check(!seen[s.ID()], "serializer id %d used twice (0 is the protobuf serializer)", s.ID())
		seen[s.ID()] = true
	}
	if len(errs) > 0 {
		return fmt.Errorf("quicremote: invalid remote config: %w", errors.Join(errs...))
	}
	return nil
}

// DeadLetterReason says why the remote gave up on a message. The values
// travel between nodes (RemoteDeadLetter): new ones are only appended.
type DeadLetterReason int

const (
	// DeadLetterQueueFull: the peer's outbound queue was at QueueCapacity.
	DeadLetterQueueFull DeadLetterReason = iota
	// DeadLetterPeerDown: the message was queued for a connection that went
	// down before it was sent.
	DeadLetterPeerDown
	// DeadLetterUnreachable: the peer was not connected for ConnectGrace.
	DeadLetterUnreachable
	// DeadLetterSendFailed: the stream carrying the message failed (write
	// timeout, connection lost, refused by the peer) before the peer
	// acknowledged its batch. It may have been delivered.
	DeadLetterSendFailed
	// DeadLetterNotMember: the target's address is not a current member.
	DeadLetterNotMember
	// DeadLetterUnserializable: no serializer could encode the message, or
	// it is a system message the remote does not carry.
	DeadLetterUnserializable
	// DeadLetterClosed: the remote was closed.
	DeadLetterClosed
	// DeadLetterUndecodable: an incoming message named a type no serializer
	// knows, or its payload did not decode. The sender, if any, is sent a
	// DeadLetterResponse.
	DeadLetterUndecodable
	// DeadLetterHidden: an incoming message was for an actor hidden from
	// peers (Hide).
	DeadLetterHidden
	// DeadLetterRefused: an incoming message the sending peer may not send:
	// a reply to a request that was not sent to it, a system message
	// outside its rights, a Stop or PoisonPill it may not give.
	DeadLetterRefused
	// DeadLetterTargetBusy: the target's mailbox stayed at MaxTargetBacklog
	// for BacklogWait.
	DeadLetterTargetBusy
	// DeadLetterDecodeLimit: an incoming message would decode beyond
	// MaxDecodedBytes or MaxDecodedElements, or beyond what the peer's
	// memory budget has left.
	DeadLetterDecodeLimit
	// DeadLetterNotFound: an incoming message was for an actor that does
	// not exist on this node.
	DeadLetterNotFound
	numDeadLetterReasons
)

var deadLetterReasonNames = [...]string{"queue full", "peer down", "unreachable", "send failed", "not a member", "unserializable", "closed", "undecodable",
	"hidden", "refused", "target busy", "decode limit", "no such actor"}

func (r DeadLetterReason) String() string {
	if r >= 0 && int(r) < len(deadLetterReasonNames) {
		return deadLetterReasonNames[r]
	}
	return fmt.Sprintf("DeadLetterReason(%d)", int(r))
}

// DeadLetter describes one message the remote gave up on.
type DeadLetter struct {
	Peer    membership.NodeID
	Target  *actor.PID
	Sender  *actor.PID // nil if none
	Message any        // nil when it could not be decoded
	System  bool
	Reason  DeadLetterReason
	Err     error // the underlying error, if any
}

// Stats counts what the remote did. All counters only grow.
type Stats struct {
	// Sent counts messages in batches the peer acknowledged; Batches counts
	// those batches. Received counts decoded incoming messages handed to
	// local processes (including the dead-letter process for unknown ids).
	Sent, Batches, Received uint64
	// DeadLetters counts messages given up on, by reason.
	DeadLetters [numDeadLetterReasons]uint64
	// UnknownTypes and BadPayloads split the undecodable incoming messages:
	// a type name no serializer knows, and a payload that did not decode
	// (or an unknown serializer id).
	UnknownTypes, BadPayloads uint64
	// BadBatches counts incoming batches that were not a valid ActorBatch.
	BadBatches uint64
	// StaleBatches counts incoming batches refused because a newer epoch or
	// connection of the same peer had started (their messages become dead
	// letters at the sender).
	StaleBatches uint64
	// AddressTerminated counts Terminated messages the remote generated
	// because a watched actor's node went down or became unreachable.
	AddressTerminated uint64
	// FailedFutures counts local futures failed early because the peer
	// holding their request went down.
	FailedFutures uint64
	// StaleTerminated counts incoming Terminated messages dropped because no
	// watch was recorded for them (it had already ended with
	// AddressTerminated, or was never made from this node).
	StaleTerminated uint64
	// AckTimeouts counts outgoing streams given up on because the peer
	// had not acknowledged a batch within SendTimeout (their
	// unacknowledged messages became DeadLetterSendFailed).
	AckTimeouts uint64
	// ForgedReplies counts incoming messages refused because they
	// answered a local future that had not asked the sending peer (an
	// unknown or already answered reply alias, another peer's alias, a
	// future's own id).
	ForgedReplies uint64
	// RefusedSystem counts incoming Watch, Unwatch, Terminated, Stop and
	// PoisonPill messages the sending peer had no right to send.
	RefusedSystem uint64
	// BacklogStalls counts the times delivery from a peer waited for a
	// target whose mailbox was at MaxTargetBacklog.
	BacklogStalls uint64
	// BadAcks counts acknowledgement frames that were not a valid count.
	BadAcks uint64
	// EndpointEventsDropped counts EndpointConnected/EndpointTerminated
	// events dropped because EventStream subscribers fell behind.
	EndpointEventsDropped uint64
	// WatchesRefused counts incoming Watch messages refused because the
	// peer already held MaxWatchesPerPeer watches on this node's actors.
	WatchesRefused uint64
	// Queued is the number of messages waiting in outbound queues right now.
	Queued int
	// QueuedBytes is what peers' messages waiting in local mailboxes are
	// charged to their transport memory budgets right now (their decoded
	// estimates; see MaxDecodedBytes).
	QueuedBytes int64
}

// TotalDeadLetters sums DeadLetters over all reasons.
func (s Stats) TotalDeadLetters() uint64 {
	var n uint64
	for _, v := range s.DeadLetters {
		n += v
	}
	return n
}
