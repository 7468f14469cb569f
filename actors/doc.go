// Package actors runs Abortable Broadcast as supervised protoactor-go
// actors: it is the concurrent shell around the pure cores of package
// broadcast, and the public entry point that wires a node.
//
// # Using it
//
// Start (real QUIC) or StartWith (any quicremote.RPC, e.g. the in-memory
// transport) creates a Node from an identity, a registry source and a
// Config. OpenChannel opens a named channel with its admission function,
// optional verifier and consumer (a function, or a PID answering Consumed).
// Channel.Publish and Channel.Abort never block: they update the
// publisher's pool under a mutex and wake the sender actor; at the
// live-slot bound Publish fails with broadcast.ErrSlotsExhausted.
// Node.Close stops every actor and goroutine and returns when they ended.
//
// # The actor tree
//
//	abcast (root supervisor, one-for-one, restarts counted)
//	├── <channel>-sender    owns the channel's broadcast.Sender
//	│   └── link (one per peer, bounded mailbox): one stream per slot update
//	├── <channel>-receiver  owns the channel's broadcast.Receiver
//	│   └── fetch (one per running download, bounded mailbox)
//	└── <channel>-consumer  hands Delivered/Withdrawn to the user, returns credits
//
// The cores live in the Channel, not in the actor instances, so a restarted
// sender or receiver continues from them: the sender resends what was in
// flight and reconciles its live set with the publisher's pool, the
// receiver restarts its fetches and re-applies members and consumed
// credits. A crashed link or fetch actor re-derives its work from the core.
// Nothing published is lost and nothing delivered is delivered again.
//
// # Flows
//
// Publish → sender core → SendUpdate → link → transport Push on
// "abcast/<channel>/update" → peer's handler → receiver actor → core →
// the handler answers only after the core applied the update, and only
// that answer counts as delivered at the sender. An advert starts a fetch
// actor that Calls "abcast/<channel>/fetch" on advertisers in turn, with a
// per-attempt timeout that doubles. Abort → cleared updates, cancelled
// streams, cancelled fetches, Withdrawn at the consumers.
//
// # Bounds
//
// Link and fetch mailboxes are [BoundedMailbox]es: a full mailbox refuses
// instead of blocking, and the refusal is a counted dead letter. The cores
// bound what is sent to them (in-flight updates per peer, running fetches),
// so refusals there mean a stuck actor. Sender and receiver mailboxes are
// bounded by construction: publishes and aborts queue in the channel (at
// most twice the live-slot bound, then ErrBusy), incoming updates are
// bounded by the transport's per-protocol handler limit, and deliveries by
// the receiver's DeliveryCredits.
//
// Actor systems are created with [NewActorSystem], so protoactor-go's own
// logs land in the node's zerolog logger, tagged with the node id.
package actors
