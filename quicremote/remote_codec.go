package quicremote

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"
)

// Serializer turns actor messages into bytes and back. The remote tries its
// serializers in order (Config.Serializers, then protobuf); ID names
// the serializer on the wire, so every node must register the same
// serializers under the same IDs.
type Serializer interface {
	// ID identifies the serializer on the wire. 0 is the protobuf serializer.
	ID() int32
	// Serialize encodes msg and names its type. It returns
	// ErrUnsupportedMessage for a message it does not handle, so the next
	// serializer is tried.
	Serialize(msg any) (typeName string, data []byte, err error)
	// Deserialize decodes data as typeName. It returns an error wrapping
	// ErrUnknownMessageType for a type it does not know, and any other
	// error for a payload that does not decode. It must not panic on any
	// input: the bytes come from a peer.
	Deserialize(typeName string, data []byte) (any, error)
}

var (
	// ErrUnsupportedMessage is returned by Serializer.Serialize for a
	// message it does not handle.
	ErrUnsupportedMessage = errors.New("quicremote: message not supported by serializer")
	// ErrUnknownMessageType is wrapped by Serializer.Deserialize for a type
	// name it does not know.
	ErrUnknownMessageType = errors.New("quicremote: unknown message type")
	// ErrMessageTooLarge: an outgoing message's encoding alone exceeds
	// Config.MaxBatchBytes; it becomes a dead letter
	// (DeadLetterUnserializable) instead of failing its batch.
	ErrMessageTooLarge = errors.New("quicremote: message too large")
)

const protoSerializerID int32 = 0

// protoSerializer encodes protobuf messages under their full name and
// decodes the types the remote accepts from peers (typeRegistry). It is
// the remote's last serializer, ID 0.
type protoSerializer struct{ types *typeRegistry }

func (protoSerializer) ID() int32 { return protoSerializerID }

func (protoSerializer) Serialize(msg any) (string, []byte, error) {
	m, ok := msg.(proto.Message)
	if !ok {
		return "", nil, ErrUnsupportedMessage
	}
	data, err := proto.Marshal(m)
	if err != nil {
		return "", nil, err
	}
	return string(m.ProtoReflect().Descriptor().FullName()), data, nil
}

// Deserialize decodes data as typeName if peers may send that type. The
// remote's own decoder does the same after checking the decoding limits.
func (s protoSerializer) Deserialize(typeName string, data []byte) (any, error) {
	ti := s.types.lookup(typeName)
	if ti == nil {
		return nil, fmt.Errorf("%w: %q", ErrUnknownMessageType, typeName)
	}
	m := ti.mt.New().Interface()
	if err := unmarshalOpts.Unmarshal(data, m); err != nil {
		return nil, fmt.Errorf("quicremote: decoding %s: %w", typeName, err)
	}
	return m, nil
}
