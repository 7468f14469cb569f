// Package quicremote is protoactor-go's remote on abcast's QUIC transport
// (package quicremote/transport): PIDs of actors on other subnet members
// work as if local — Send, Request, RequestFuture, Watch, Stop — over the
// same member-only, mutually authenticated connections that carry the
// broadcast channels.
//
// Most users never create a Remote themselves: an actors.Node installs one
// on its actor system before anything is spawned, and Node.Remote returns
// it. Remote's own documentation describes addresses, start-up order,
// delivery, who may send what, watches and failures.
//
// # Compared with protoactor's stock remote
//
// What the stock remote offers is here too, in this package's terms:
// remote spawn of registered kinds (Register, SpawnNamed, Spawn, with
// ErrUnknownKind, ErrNameTaken, ErrSpawnRefused, ErrSpawnTimeout,
// ErrNotMember); endpoint events on the actor system's EventStream
// (*EndpointConnected, *EndpointTerminated, where stock publishes
// EndpointConnectedEvent and EndpointTerminatedEvent); a JSON serializer
// beside the protobuf one (JSONSerializer, for Go values registered by
// name); message headers; AddressTerminated for watches of a node that
// went away; and dead letters that say why (Remote.Result returns a
// *DeadLetterError, OnDeadLetter and Stats count every reason).
//
// Deliberately absent or different:
//   - No listening address, advertised host or gRPC options: a node's
//     address is its NodeID, and membership (the registry, member-only
//     TLS) decides who connects; removing a member closes its connection.
//     So there is no BlockList either.
//   - The cluster layer (grains, identity lookup, gossip, pub-sub) is not
//     part of the remote; abcast's broadcast channels and membership
//     cover what this project needs of it.
//   - Peers cannot decode into any protobuf type linked into the program,
//     as stock does: only registered types (Config.Messages), because a
//     member could otherwise pick a type that costs far more memory
//     decoded than on the wire. Stock's JSON serializer (protobuf messages
//     as protojson) is not offered: peers already speak binary protobuf,
//     and JSONSerializer is for values that are not protobuf messages.
//   - Peers cannot stop every actor (stock lets any node Stop any PID),
//     answer another node's requests (stock futures take the first reply
//     from anyone, under a guessable id), reach actors the node hides, or
//     send system messages outside their own watches: see "Who may send
//     what" on Remote.
//   - Queues, batches, decoded sizes and mailbox backlogs are bounded and
//     every refusal is a counted dead letter, where stock queues without
//     bound.
//   - Spawned actors run under the root context of the node (as with
//     stock); there is no per-kind supervisor or placement strategy, and
//     no listing of registered kinds.
package quicremote
