// Package actors runs Abortable Broadcast on protoactor-go: it is the
// concurrent shell around the pure cores of package broadcast, and the
// public entry point that wires a node.
//
// # One node, one bus
//
// A Node is one actor system (yours, WithActorSystem, or one it creates),
// one UDP socket and one QUIC connection per member pair, carrying the
// broadcast channels and actor messages alike: the actor remote
// (package quicremote) is installed on the system when the node is
// created, before anything is spawned, so every actor you spawn on
// Node.System() has a PID the other members can Send, Request and Watch
// (and Stop, if they spawned it: see quicremote.Remote), and PIDs of their
// actors work here.
//
//	node, _ := actors.NewNode(actors.DefaultConfig(), id, registry, sock, log)
//	blocks, _ := node.NewChannel(actors.ChannelConfig{Name: "blocks", Admit: admit})
//	node.System().Root.SpawnNamed(consensusProps(blocks), "consensus") // yours
//	node.Start() // now it dials; channels and actors are already in place
//
// NewNode dials nobody; Start does. In between, declare channels and
// spawn your actors, so everything is in place before the first peer
// connects. Start alone (the package function) does both steps.
//
// # Channels, by actor messages
//
// A channel is declared with NewChannel and run by an actor you spawn
// where you want it — ctx.Spawn(ch.Props()) under your own supervisor —
// or by OpenChannel under the node's. The channel's actor answers
// requests with typed replies, each carrying an error (nil, or wrapping
// broadcast.ErrSlotsExhausted, broadcast.ErrDuplicate, broadcast.ErrInvalid,
// broadcast.ErrUnknownID, ErrBusy, ErrChannelClosed, ErrChannelFailed):
//
//	Publish{Artifact} → *Published      Abort{ID} → *Aborted
//	Reevaluate{}      → *Reevaluated    Subscribe{Consumer} → *Subscribed
//	ListHeld{}        → *Held           GetStats{} → *ChannelStats
//
// The Go methods of Channel (Publish, Abort, Reevaluate, Subscribe, Held,
// Stats, Close) run the same code. Publish and Abort never block.
//
// # The consumer contract
//
// A channel hands its events — *Delivered, then *Withdrawn once no peer
// advertises the artifact — to its consumer: a function
// (ChannelConfig.Consume) or a local actor (ConsumerPID, or Subscribe).
// Every event carries a sequence number and must be confirmed:
// Confirm(ctx) in the actor's Receive (or ctx.Respond(&Consumed{Seq})),
// or returning from the function. An event that is not confirmed is
// delivered again — when the consumer crashes on it (its supervisor's
// restart is noticed), stops (it is watched; an actor of the same name is
// found again), dead-letters, confirms a later one first, re-subscribes,
// or after ConsumerTimeout — with its delivery credit kept, so nothing is
// lost and a failing consumer pauses fetching instead of draining it. A
// consumer slower than ConsumerTimeout may see an event twice: the same
// Seq tells it so.
//
// # Supervision and failure
//
//	<your supervisor, or the node's "abcast">
//	└── <channel>            answers requests; supervises:
//	    ├── sender           owns the channel's broadcast.Sender
//	    │   └── link         one per peer, bounded mailbox
//	    ├── receiver         owns the channel's broadcast.Receiver
//	    │   └── fetch        one per running download, bounded mailbox
//	    └── consumer         the consumer contract
//
// A crashing actor is restarted (counted in Stats) and continues from the
// cores, which live in the Channel, not in the actor instances: nothing
// published is lost and nothing delivered is delivered again. Past
// Config.MaxRestarts within RestartWindow the failure is escalated to the
// channel's supervisor; when the node's supervisor gives up on a channel
// (or yours stops one after a failure) the channel is reported failed:
// ChannelFailed on the EventStream, ErrChannelFailed from its calls,
// ChannelStats.Failed and Node.Health. Its name can be opened again.
//
// # Presence: which peer gets which channel
//
// Members exchange a channel's artifacts only while both have it open.
// Each node announces its open channels to every peer on every connection
// (a hello, acknowledged); a channel's sender starts with a peer once the
// peer announced the channel and applied our announcement
// (broadcast.Presence). A channel opened late therefore starts within a
// few round trips, and a closed one's stragglers are refused.
//
// # Bounds
//
// Link, fetch and channel mailboxes are bounded (actorkit.BoundedMailbox):
// a full mailbox refuses instead of blocking, and the refusal is a counted
// dead letter. Sender and receiver mailboxes are bounded by construction:
// publishes and aborts queue in the channel (at most twice the live-slot
// bound, then ErrBusy), incoming updates are bounded by the transport's
// per-protocol handler limit (a large push) or by the update stream (one
// batch of at most 64 KiB and 256 updates applied at a time per peer
// stream, two streams per peer), deliveries by the receiver's
// DeliveryCredits, and a consumer has at most ConsumerWindow events
// unconfirmed.
//
// # Wire
//
// Per channel and peer: a long-lived stream of batched small updates with
// cumulative acknowledgements that name refused updates
// ("abcast/<ch>/updates"), a stream per large push ("abcast/<ch>/update"),
// manifest requests ("abcast/<ch>/fetch") and chunk requests answered
// with the chunk's bare bytes ("abcast/<ch>/chunk"). Members of a subnet
// run the same version: a peer that refuses the update stream gets each
// update on its own stream for a while.
package actors
