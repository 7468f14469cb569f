// Package wire converts between abcast's protobuf wire messages
// (proto/abcastpb) and the domain types of the broadcast core. It is the one
// place where the two meet: the core never sees a protobuf type, and the
// transport never builds a domain value by hand.
//
// Contract for callers:
//
//   - Decoders take bytes from a peer and trust nothing. Every way the bytes
//     can be wrong (not protobuf, a required choice missing, an empty or
//     oversized id, an oversized attribute or payload) yields an error that
//     wraps broadcast.ErrInvalid, so the caller can count it against the peer
//     with errors.Is. Decoders never panic, whatever the input.
//   - Limits bound what a decoder accepts. Input longer than the largest
//     message those limits allow is refused before it is parsed, so a hostile
//     frame never costs a second copy. Limits.MaxMessageLen gives that
//     length, for use as the transport's frame limit.
//   - Unknown protobuf fields are skipped and not retained, so newer peers can
//     add fields without older ones rejecting their messages.
//   - Decoded byte slices (attribute, payload) are freshly allocated and owned
//     by the caller; they never alias the input buffer. Empty ones are nil.
//   - Encoders produce deterministic bytes. They send only what an update's
//     kind carries (an advert drops the payload, cleared and sync updates drop
//     the artifact and sync drops the slot) and refuse only what cannot be
//     expressed on the wire: an unknown kind or an empty id. Size limits are
//     the decoder's business; the encoder does not know the peer's.
//   - A fetch response that says "not found" decodes to ErrNotFound, which is
//     a valid answer and does not wrap broadcast.ErrInvalid.
package wire
