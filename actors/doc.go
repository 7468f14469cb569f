// Package actors is the concurrent shell around the broadcast cores: the
// actors that own connections, slot tables, peer links, fetches and
// consumers, the supervision tree that restarts them, and the protoactor-go
// plumbing they share.
//
// Caller's contract for the plumbing in this package:
//
//   - Mailboxes that must stay bounded use [BoundedMailbox]. A full mailbox
//     refuses the message instead of blocking the sender: the message becomes
//     a dead letter on the actor system's EventStream and is counted. Senders
//     must treat a send as "maybe delivered"; the protocol re-derives lost
//     work from the slot tables, so a refusal costs latency, not correctness.
//   - Actor systems are created with [NewActorSystem] so protoactor-go's own
//     logs land in the node's zerolog logger, tagged with the node id.
package actors
