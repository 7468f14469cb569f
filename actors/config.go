package actors

import (
	"fmt"
	"time"

	"github.com/abcast/abcast/quicremote"
	"github.com/abcast/abcast/quicremote/transport"

	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/internal/wire"
)

// Config bounds a node's actors. Every field has a default from
// DefaultConfig; Validate reports the first one out of range.
type Config struct {
	// Sender and Receiver are the per-channel core limits used when a
	// ChannelConfig leaves its own zero. They include the protocol's
	// timing: Sender's update timeouts and retry backoff, Receiver's fetch
	// attempt timeouts and backoff.
	Sender   broadcast.SenderConfig
	Receiver broadcast.ReceiverConfig
	// Wire bounds what a peer's message may contain (ids, attributes,
	// payloads); larger messages are refused and counted.
	Wire wire.Limits
	// HandlerTimeout bounds how long an incoming update waits for the
	// receiver actor; past it the update is refused and the sender retries.
	// Default 5 s.
	HandlerTimeout time.Duration
	// MailboxCapacity bounds the mailboxes of peer-link, fetch and channel
	// actors (their senders never send more than the cores allow, so a
	// refusal there means a bug or a stuck actor, and is counted).
	// Default 1024.
	MailboxCapacity int
	// UpdateHandlers and FetchHandlers bound concurrent incoming updates
	// and fetches per peer connection and channel (the transport counts
	// them per peer, so they need not grow with the subnet). Each must
	// cover what one honest peer may send at once: UpdateHandlers at least
	// Sender.MaxInFlightPerPeer, FetchHandlers at least
	// Receiver.MaxFetchesPerPeer × Receiver.FetchWindow (Validate checks
	// both); past them a request is refused and the peer backs off.
	// Defaults 128 and 32.
	UpdateHandlers, FetchHandlers int
	// MaxRestarts within RestartWindow before a supervisor gives up on a
	// child. Inside a channel the failure is then escalated: the channel's
	// actor fails and its own supervisor (the node's, or yours when you
	// spawned it from Channel.Props) restarts or stops it. The node's
	// supervisor stops a channel past the same limit and reports it failed
	// (ChannelFailed on the EventStream, ErrChannelFailed from its calls,
	// Node.Health). Defaults 10 per 10 s.
	MaxRestarts   int
	RestartWindow time.Duration
	// ConsumerTimeout is how long an event handed to a consumer actor may
	// stay unconfirmed before it is delivered again (same Seq, Attempt+1).
	// Lost events are usually redelivered sooner: when the consumer stops
	// (watched), a delivery dead-letters, a later event is confirmed first
	// (the earlier one was lost in a crash), or the consumer re-subscribes.
	// A consumer slower than this sees the event twice. Default 30 s.
	ConsumerTimeout time.Duration
	// ConsumerWindow bounds the events handed to a consumer and not yet
	// confirmed; the rest wait in the channel (their number is bounded by
	// the receiver's DeliveryCredits and by the ids it holds). Default 64.
	ConsumerWindow int
	// Transport configures the node's QUIC transport, Remote the actor
	// remote that shares it.
	Transport transport.Config
	Remote    quicremote.Config
	// Hooks are test hooks; leave nil in production.
	Hooks *Hooks
}

// Hooks let tests inject faults into the actors.
type Hooks struct {
	// BeforeReceive runs at the start of every user message an actor of
	// kind ("channel", "sender", "link", "receiver", "fetch", "consumer")
	// receives on
	// channel; a panic in it crashes that actor as a bug would.
	BeforeReceive func(kind, channel string, msg any)
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		Sender:          broadcast.DefaultSenderConfig(),
		Receiver:        broadcast.DefaultReceiverConfig(),
		Wire:            wire.DefaultLimits(),
		HandlerTimeout:  5 * time.Second,
		MailboxCapacity: 1024,
		UpdateHandlers:  128,
		FetchHandlers:   32,
		MaxRestarts:     10,
		RestartWindow:   10 * time.Second,
		ConsumerTimeout: 30 * time.Second,
		ConsumerWindow:  64,
		Transport:       transport.DefaultConfig(),
		Remote:          quicremote.DefaultConfig(),
	}
}

// Validate reports the first field out of range.
func (c Config) Validate() error {
	if err := c.Sender.Validate(); err != nil {
		return err
	}
	if err := c.Receiver.Validate(); err != nil {
		return err
	}
	if err := c.Wire.Validate(); err != nil {
		return err
	}
	switch {
	case c.HandlerTimeout <= 0:
		return fmt.Errorf("actors: HandlerTimeout must be positive")
	case c.MailboxCapacity < 4*c.Sender.MaxInFlightPerPeer:
		return fmt.Errorf("actors: MailboxCapacity %d must be at least 4 × Sender.MaxInFlightPerPeer (%d)", c.MailboxCapacity, c.Sender.MaxInFlightPerPeer)
	case c.UpdateHandlers < c.Sender.MaxInFlightPerPeer:
		return fmt.Errorf("actors: UpdateHandlers %d must be at least Sender.MaxInFlightPerPeer (%d), or peers' updates in flight are refused", c.UpdateHandlers, c.Sender.MaxInFlightPerPeer)
	case c.FetchHandlers < c.Receiver.MaxFetchesPerPeer*c.Receiver.FetchWindow:
		return fmt.Errorf("actors: FetchHandlers %d must be at least Receiver.MaxFetchesPerPeer × FetchWindow (%d), or peers' fetches are refused", c.FetchHandlers, c.Receiver.MaxFetchesPerPeer*c.Receiver.FetchWindow)
	case c.MaxRestarts <= 0 || c.RestartWindow <= 0:
		return fmt.Errorf("actors: restart limits must be positive")
	case c.ConsumerTimeout <= 0 || c.ConsumerWindow <= 0:
		return fmt.Errorf("actors: ConsumerTimeout and ConsumerWindow must be positive")
	}
	if err := c.Transport.Validate(); err != nil {
		return err
	}
	return c.Remote.Validate()
}
