package wire

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func validForTest(s string) bool { return s != "" && !strings.Contains(s, " ") }

func TestHelloRoundTrip(t *testing.T) {
	for _, chans := range [][]string{nil, {"blocks"}, {"blocks", "signatures", "x.y-z_1"}} {
		v, got, err := DecodeHello(EncodeHello(7, chans), validForTest)
		if err != nil || v != 7 || !slices.Equal(got, chans) {
			t.Fatalf("%v: got v%d %v %v", chans, v, got, err)
		}
	}
}

func TestHelloRefusesBadInput(t *testing.T) {
	many := make([]string, MaxHelloChannels+1)
	for i := range many {
		many[i] = "c"
	}
	cases := map[string][]byte{
		"no version":     EncodeHello(0, []string{"a"}),
		"bad name":       EncodeHello(1, []string{"a b"}),
		"too many":       EncodeHello(1, many),
		"unknown field":  append(EncodeHello(1, nil), 0x18, 0x01),
		"truncated":      EncodeHello(1, []string{"abc"})[:5],
		"garbage":        {0xff, 0xff, 0xff},
		"wrong wiretype": {0x0a, 0x01, 0x01},
	}
	for name, b := range cases {
		if _, _, err := DecodeHello(b, validForTest); !errors.Is(err, ErrBadHello) {
			t.Errorf("%s: err %v, want ErrBadHello", name, err)
		}
	}
}

func FuzzDecodeHello(f *testing.F) {
	f.Add(EncodeHello(1, []string{"blocks", "sigs"}))
	f.Add([]byte{0x08})
	f.Fuzz(func(t *testing.T, b []byte) {
		v, chans, err := DecodeHello(b, validForTest)
		if err != nil {
			return
		}
		if v == 0 || len(chans) > MaxHelloChannels {
			t.Fatalf("accepted v%d with %d channels", v, len(chans))
		}
		// What decodes re-encodes to something that decodes the same.
		v2, chans2, err := DecodeHello(EncodeHello(v, chans), validForTest)
		if err != nil || v2 != v || !slices.Equal(chans, chans2) {
			t.Fatalf("re-encoding changed it: v%d %v -> v%d %v %v", v, chans, v2, chans2, err)
		}
	})
}
