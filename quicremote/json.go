package quicremote

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sync"
)

// JSONSerializer carries plain Go values that are not protobuf messages,
// encoded with encoding/json under names registered on every node. Put it
// in Config.Serializers (its ID must be the same everywhere) and Register
// each type on every node before Start:
//
//	js := quicremote.NewJSONSerializer(1)
//	js.Register("app.Greeting", &Greeting{})
//	cfg.Serializers = []quicremote.Serializer{js}
//
// A peer can make it decode only registered types, and only payloads of at
// most MaxJSONBytes with at most MaxJSONValues JSON values (objects,
// arrays, members and elements), counted before decoding; what it decodes
// is charged to the peer like any message (Config.MaxDecodedBytes).
type JSONSerializer struct {
	id     int32
	mu     sync.RWMutex
	byName map[string]reflect.Type
	byType map[reflect.Type]string
}

// Bounds on what one JSON payload may be: a value may decode to many
// times its text (`{}` becomes a whole struct), so the count of values
// is bounded as well as the size.
const (
	MaxJSONBytes  = 1 << 20
	MaxJSONValues = 1 << 16
)

// NewJSONSerializer returns a JSON serializer with the given wire ID (not
// 0, which is the protobuf serializer's).
func NewJSONSerializer(id int32) *JSONSerializer {
	return &JSONSerializer{id: id, byName: make(map[string]reflect.Type), byType: make(map[reflect.Type]string)}
}

// Register carries values of prototype's type (a pointer to a struct, as
// actor messages usually are, or any other type encoding/json handles)
// under name; they decode as the same type. A name or type registered
// twice is an error.
func (s *JSONSerializer) Register(name string, prototype any) error {
	if name == "" || prototype == nil {
		return errors.New("quicremote: JSON Register needs a name and a value")
	}
	t := reflect.TypeOf(prototype)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.byName[name]; ok {
		return fmt.Errorf("quicremote: JSON type name %q registered twice", name)
	}
	if old, ok := s.byType[t]; ok {
		return fmt.Errorf("quicremote: JSON type %v registered twice (as %q)", t, old)
	}
	s.byName[name] = t
	s.byType[t] = name
	return nil
}

// ID is the serializer's wire ID.
func (s *JSONSerializer) ID() int32 { return s.id }

// Serialize encodes msg if its type is registered.
func (s *JSONSerializer) Serialize(msg any) (string, []byte, error) {
	s.mu.RLock()
	name, ok := s.byType[reflect.TypeOf(msg)]
	s.mu.RUnlock()
	if !ok {
		return "", nil, ErrUnsupportedMessage
	}
	data, err := json.Marshal(msg)
	return name, data, err
}

// Deserialize decodes data as the type registered under typeName.
func (s *JSONSerializer) Deserialize(typeName string, data []byte) (any, error) {
	s.mu.RLock()
	t, ok := s.byName[typeName]
	s.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w: JSON type %q", ErrUnknownMessageType, typeName)
	}
	if _, err := jsonValues(data); err != nil {
		return nil, err
	}
	ptr := t.Kind() == reflect.Pointer
	if ptr {
		t = t.Elem()
	}
	v := reflect.New(t)
	if err := json.Unmarshal(data, v.Interface()); err != nil {
		return nil, fmt.Errorf("quicremote: decoding JSON %s: %w", typeName, err)
	}
	if ptr {
		return v.Interface(), nil
	}
	return v.Elem().Interface(), nil
}

// estimateDecoded bounds what decoding data costs: the remote checks it
// against MaxDecodedBytes and charges it to the peer before decoding.
func (s *JSONSerializer) estimateDecoded(_ string, data []byte) (int, error) {
	n, err := jsonValues(data)
	if err != nil {
		return 0, err
	}
	// Each value may become a field, element or map entry of a few words,
	// and strings are copied; slices and maps grow by doubling.
	return 2*len(data) + 64*n + 256, nil
}

// jsonValues counts, without decoding, the values in a JSON text as
// container openings and separators outside strings, refusing texts past
// MaxJSONBytes or MaxJSONValues.
func jsonValues(data []byte) (int, error) {
	if len(data) > MaxJSONBytes {
		return 0, fmt.Errorf("%w: JSON payload of %d bytes, MaxJSONBytes %d", errDecodeLimit, len(data), MaxJSONBytes)
	}
	n, inString, escaped := 1, false, false
	for _, c := range data {
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == '{' || c == '[' || c == ',' || c == ':':
			if n++; n > MaxJSONValues {
				return 0, fmt.Errorf("%w: more than MaxJSONValues (%d) JSON values", errDecodeLimit, MaxJSONValues)
			}
		}
	}
	return n, nil
}
