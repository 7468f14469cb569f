package actors

import (
	"errors"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/membership"
)

// Event is what a channel's consumer receives: *Delivered or *Withdrawn.
// Every event carries a sequence number and must be confirmed (Confirm,
// or ctx.Respond(&Consumed{Seq: ev.Seq}) from an actor consumer); an event
// that is not confirmed is delivered again (see ChannelConfig.ConsumerPID).
type Event interface {
	isEvent()
	// Sequence returns the event's number within its channel on this node.
	Sequence() uint64
}

// Delivered hands over an artifact a peer published, at most once while it
// stays advertised — unless it is not confirmed, in which case the same
// event (same Seq, Attempt one higher) is delivered again.
type Delivered struct {
	Channel  string
	Artifact broadcast.Artifact
	From     membership.NodeID
	// Seq numbers the channel's events on this node, from 1; a redelivery
	// keeps the number, so a consumer that must never act twice skips a
	// Seq it has already confirmed.
	Seq uint64
	// Attempt is 1 for the first hand-over and grows with each redelivery.
	Attempt int
}

// Withdrawn says no peer advertises a delivered artifact any more. It is
// confirmed like a Delivered.
type Withdrawn struct {
	Channel string
	ID      broadcast.ArtifactID
	Seq     uint64
	Attempt int
}

func (*Delivered) isEvent()           {}
func (*Withdrawn) isEvent()           {}
func (d *Delivered) Sequence() uint64 { return d.Seq }
func (w *Withdrawn) Sequence() uint64 { return w.Seq }

// Consumed confirms the event numbered Seq. An actor consumer answers every
// *Delivered and *Withdrawn with it (ctx.Respond), once it has taken the
// event; a Delivered's confirmation returns its delivery credit, so
// fetching continues.
type Consumed struct{ Seq uint64 }

// Confirm answers the event an actor consumer is handling: call it from
// Receive while ctx.Message() is a *Delivered or *Withdrawn. It does
// nothing for other messages.
func Confirm(ctx actor.Context) {
	if ev, ok := ctx.Message().(Event); ok && ctx.Sender() != nil {
		ctx.Respond(&Consumed{Seq: ev.Sequence()})
	}
}

// Requests a channel's actor answers (ctx.Request or RequestFuture to the
// PID from Channel.PID or the one spawned from Channel.Props). Each reply
// has an Err: nil, or an error wrapping broadcast.ErrSlotsExhausted,
// broadcast.ErrDuplicate, broadcast.ErrInvalid, broadcast.ErrUnknownID,
// ErrBusy, ErrChannelClosed or ErrChannelFailed. The Go methods of Channel
// take the same path and return the same errors.
type (
	// Publish an artifact to every other member; reply *Published.
	Publish struct{ Artifact broadcast.Artifact }
	// Published answers Publish.
	Published struct {
		ID  broadcast.ArtifactID
		Err error
	}
	// Abort a published artifact; reply *Aborted.
	Abort struct{ ID broadcast.ArtifactID }
	// Aborted answers Abort.
	Aborted struct {
		ID  broadcast.ArtifactID
		Err error
	}
	// Reevaluate asks admission again about every advert it answered
	// Later for; reply *Reevaluated once the receiver has done so.
	Reevaluate struct{}
	// Reevaluated answers Reevaluate.
	Reevaluated struct{ Err error }
	// Subscribe (re)binds the channel's consumer to Consumer, a local
	// actor: every event not yet confirmed is delivered to it at once,
	// the way a consumer that restarted re-registers. A nil Consumer
	// pauses delivery (events wait, their credits stay out). Reply
	// *Subscribed.
	Subscribe struct{ Consumer *actor.PID }
	// Subscribed answers Subscribe.
	Subscribed struct{ Err error }
	// ListHeld asks what the channel holds; reply *Held.
	ListHeld struct{}
	// Held answers ListHeld (see Channel.Held).
	Held struct {
		Artifacts []HeldArtifact
		Err       error
	}
	// GetStats asks for the channel's counters; reply *ChannelStats.
	GetStats struct{}
)

// HeldArtifact is one artifact a channel delivered (or is delivering) on
// this node and no peer has withdrawn yet.
type HeldArtifact struct {
	ID   broadcast.ArtifactID
	From membership.NodeID
	// Confirmed reports whether the consumer confirmed its Delivered.
	Confirmed bool
}

// ChannelFailed is published on the actor system's EventStream when a
// channel stops because its supervisor gave up on it (its actors kept
// crashing), rather than because it was closed. From then on the channel's
// calls fail with ErrChannelFailed and Node.Health reports it.
type ChannelFailed struct {
	Channel string
	Node    membership.NodeID
	Reason  any
}

// Errors of channel calls.
var (
	// ErrBusy: the channel's queue of publishes and aborts not yet taken by
	// its sender actor is full; retry shortly.
	ErrBusy = errors.New("actors: channel busy")
	// ErrChannelClosed: the channel was closed (Close, or its actor was
	// stopped).
	ErrChannelClosed = errors.New("actors: channel closed")
	// ErrChannelFailed: the channel's supervisor gave up on it.
	ErrChannelFailed = errors.New("actors: channel failed")
	// ErrClosed: the node is closed.
	ErrClosed = errors.New("actors: node closed")
	// ErrNotLocal: a consumer PID that no local actor answers.
	ErrNotLocal = errors.New("actors: not a live local actor")
)
