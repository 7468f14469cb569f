// Package quicremote is protoactor-go's remote on abcast's QUIC transport
// (package quicremote/transport): PIDs of actors on other subnet members
// work as if local — Send, Request, RequestFuture, Watch, Stop — over the
// same member-only, mutually authenticated connections that carry the
// broadcast channels.
//
// Most users never create a Remote themselves: an actors.Node installs one
// on its actor system before anything is spawned, and Node.Remote returns
// it. Remote's own documentation describes addresses, start-up order,
// delivery, dead letters, watches and failures.
package quicremote
