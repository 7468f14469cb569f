package wire

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/proto/abcastpb"
)

// ErrNotFound is what DecodeFetchResponse returns when the peer answered that
// it no longer has the artifact. It is a well-formed answer, not a fault.
var ErrNotFound = errors.New("wire: artifact not found")

var (
	// Deterministic output makes encodings comparable byte for byte, which
	// the fuzz targets and the generated-corpus tests rely on.
	marshalOpts = proto.MarshalOptions{Deterministic: true}
	// Unknown fields are dropped rather than kept on the message, so padding
	// a frame with them costs the receiver no memory beyond the frame itself.
	unmarshalOpts = proto.UnmarshalOptions{DiscardUnknown: true}
)

// invalidf builds an error about malformed input; it wraps
// broadcast.ErrInvalid so that callers can blame the peer.
func invalidf(format string, args ...any) error {
	return fmt.Errorf("wire: %s: %w", fmt.Sprintf(format, args...), broadcast.ErrInvalid)
}

// unmarshal parses b into m after checking b against the longest canonical
// encoding that could be valid.
func unmarshal(what string, b []byte, maxLen int64, m proto.Message) error {
	if int64(len(b)) > maxLen {
		return invalidf("%s: %d bytes, longer than any valid one (%d)", what, len(b), maxLen)
	}
	if err := unmarshalOpts.Unmarshal(b, m); err != nil {
		return fmt.Errorf("wire: %s: undecodable: %w: %w", what, err, broadcast.ErrInvalid)
	}
	return nil
}

func marshal(what string, m proto.Message) ([]byte, error) {
	b, err := marshalOpts.Marshal(m)
	if err != nil {
		// Our messages hold only bytes, integers and booleans, so this is
		// not expected; report it rather than panic.
		return nil, fmt.Errorf("wire: encode %s: %w", what, err)
	}
	return b, nil
}

// checkID validates an id received from a peer.
func checkID(what string, id []byte, lim Limits) error {
	switch {
	case len(id) == 0:
		return invalidf("%s: empty id", what)
	case len(id) > lim.MaxIDLen:
		return invalidf("%s: id is %d bytes, limit %d", what, len(id), lim.MaxIDLen)
	}
	return nil
}

func checkAttribute(what string, attr []byte, lim Limits) error {
	if len(attr) > lim.MaxAttributeLen {
		return invalidf("%s: attribute is %d bytes, limit %d", what, len(attr), lim.MaxAttributeLen)
	}
	return nil
}

// artifactFromRaw converts a whole artifact received from a peer. Its
// bytes alias the frame (or protobuf's fresh copies of it), which the
// decoder's caller owns, so they are handed on as they are.
func artifactFromRaw(what string, raw rawSlotUpdate, lim Limits) (broadcast.Artifact, error) {
	if err := checkID(what, raw.id, lim); err != nil {
		return broadcast.Artifact{}, err
	}
	if err := checkAttribute(what, raw.attr, lim); err != nil {
		return broadcast.Artifact{}, err
	}
	if n := len(raw.payload); n > lim.MaxPayloadLen {
		return broadcast.Artifact{}, invalidf("%s: payload is %d bytes, limit %d", what, n, lim.MaxPayloadLen)
	}
	return broadcast.Artifact{
		ID:               broadcast.ArtifactID(raw.id),
		Attribute:        nilIfEmpty(raw.attr),
		Payload:          nilIfEmpty(raw.payload),
		LatencySensitive: raw.latency,
	}, nil
}

func advertFromRaw(what string, id, attr []byte, lim Limits) (broadcast.Artifact, error) {
	if err := checkID(what, id, lim); err != nil {
		return broadcast.Artifact{}, err
	}
	if err := checkAttribute(what, attr, lim); err != nil {
		return broadcast.Artifact{}, err
	}
	return broadcast.Artifact{
		ID:        broadcast.ArtifactID(id),
		Attribute: nilIfEmpty(attr),
	}, nil
}

// artifactToPB shares the caller's attribute and payload with the message;
// marshalling copies them into the output once.
func artifactToPB(what string, a *broadcast.Artifact) (*abcastpb.Artifact, error) {
	if a.ID == "" {
		return nil, invalidf("encode %s: empty id", what)
	}
	return &abcastpb.Artifact{
		Id:               []byte(a.ID),
		Attribute:        a.Attribute,
		Payload:          a.Payload,
		LatencySensitive: a.LatencySensitive,
	}, nil
}

// nilIfEmpty gives decoded values one representation of "nothing", so that
// values compare equal however the peer encoded an empty field.
func nilIfEmpty(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}
