package wire

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
)

// HelloProtocol is the transport protocol that carries a node's
// announcement of the channels it has open (broadcast.Presence).
const HelloProtocol = "abcast/hello"

// MaxHelloChannels bounds the channels one announcement may list.
const MaxHelloChannels = 1024

// ErrBadHello: an announcement that does not decode.
var ErrBadHello = errors.New("wire: bad hello")

// EncodeHello encodes an announcement: field 1 the version (varint),
// field 2 each channel name (bytes). Hand-encoded protobuf, so it needs no
// generated code.
func EncodeHello(version uint64, channels []string) []byte {
	b := protowire.AppendTag(nil, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, version)
	for _, c := range channels {
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendString(b, c)
	}
	return b
}

// DecodeHello decodes an announcement from a peer. valid checks each
// channel name. A missing or zero version, an unknown field, an invalid
// name or more than MaxHelloChannels names are refused (ErrBadHello).
func DecodeHello(b []byte, valid func(string) bool) (version uint64, channels []string, err error) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, nil, fmt.Errorf("%w: %v", ErrBadHello, protowire.ParseError(n))
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return 0, nil, fmt.Errorf("%w: version: %v", ErrBadHello, protowire.ParseError(n))
			}
			version, b = v, b[n:]
		case num == 2 && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return 0, nil, fmt.Errorf("%w: channel: %v", ErrBadHello, protowire.ParseError(n))
			}
			if !valid(string(v)) {
				return 0, nil, fmt.Errorf("%w: channel name %q", ErrBadHello, v)
			}
			if len(channels) == MaxHelloChannels {
				return 0, nil, fmt.Errorf("%w: more than %d channels", ErrBadHello, MaxHelloChannels)
			}
			channels, b = append(channels, string(v)), b[n:]
		default:
			return 0, nil, fmt.Errorf("%w: field %d of type %d", ErrBadHello, num, typ)
		}
	}
	if version == 0 {
		return 0, nil, fmt.Errorf("%w: no version", ErrBadHello)
	}
	return version, channels, nil
}
