package abcasttest

import (
	"errors"
	"testing"
)

// DecodeUpdateAck reads what a node writes on an update stream (through,
// count, then each refused sequence with its reason) and refuses bytes
// that are cut short or run on, so a test of a hostile member never reads
// a half acknowledgement as a whole one.
func TestDecodeUpdateAck(t *testing.T) {
	// through 5, one refusal: update 4, reason "no".
	good := []byte{5, 1, 4, 2, 'n', 'o'}
	through, refused, err := DecodeUpdateAck(good)
	if err != nil || through != 5 || len(refused) != 1 || refused[4] != "no" {
		t.Fatalf("DecodeUpdateAck(%v) = %d, %v, %v; want 5, map[4:no], nil", good, through, refused, err)
	}
	if through, refused, err := DecodeUpdateAck([]byte{3, 0}); err != nil || through != 3 || refused != nil {
		t.Fatalf("an acknowledgement without refusals: %d, %v, %v", through, refused, err)
	}
	for name, b := range map[string][]byte{
		"empty":       nil,
		"no count":    {5},
		"cut reason":  good[:len(good)-1],
		"missing one": {5, 2, 4, 2, 'n', 'o'},
		"trailing":    append(append([]byte{}, good...), 0),
		"bad varint":  {0xff},
	} {
		if _, _, err := DecodeUpdateAck(b); !errors.Is(err, ErrBadUpdateAck) {
			t.Errorf("%s: %v, want ErrBadUpdateAck", name, err)
		}
	}
}

// EncodeUpdateBatch numbers its updates from first, as a node's update
// stream expects.
func TestEncodeUpdateBatch(t *testing.T) {
	got := EncodeUpdateBatch(7, []byte("a"), []byte("bc"))
	want := []byte{7, 1, 'a', 8, 2, 'b', 'c'}
	if string(got) != string(want) {
		t.Fatalf("EncodeUpdateBatch = %v, want %v", got, want)
	}
}
