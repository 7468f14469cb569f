package wire

import (
	"testing"

	"github.com/abcast/abcast/broadcast"
)

var benchSizes = []struct {
	name string
	n    int
}{
	{"1KiB", 1 << 10},
	{"1MiB", 1 << 20},
}

func benchArtifact(n int) broadcast.Artifact {
	return broadcast.Artifact{ID: "0123456789abcdef0123456789abcdef", Attribute: []byte("height=123456"), Payload: repeat('p', n)}
}

func BenchmarkEncodeSlotUpdatePush(b *testing.B) {
	for _, s := range benchSizes {
		b.Run(s.name, func(b *testing.B) {
			u := broadcast.SlotUpdate{Commit: 1000, Slot: 17, Kind: broadcast.KindPush, Artifact: benchArtifact(s.n)}
			b.SetBytes(int64(s.n))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := EncodeSlotUpdate(u); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkDecodeSlotUpdatePush(b *testing.B) {
	lim := DefaultLimits()
	for _, s := range benchSizes {
		b.Run(s.name, func(b *testing.B) {
			buf, err := EncodeSlotUpdate(broadcast.SlotUpdate{Commit: 1000, Slot: 17, Kind: broadcast.KindPush, Artifact: benchArtifact(s.n)})
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(s.n))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := DecodeSlotUpdate(buf, lim); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkEncodeFetchChunk(b *testing.B) {
	for _, s := range benchSizes {
		b.Run(s.name, func(b *testing.B) {
			chunk := repeat('p', s.n)
			b.SetBytes(int64(s.n))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := EncodeFetchChunk(chunk); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkDecodeFetchChunk(b *testing.B) {
	lim := DefaultLimits()
	for _, s := range benchSizes {
		b.Run(s.name, func(b *testing.B) {
			buf, err := EncodeFetchChunk(repeat('p', s.n))
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(s.n))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := DecodeFetchResponse(buf, lim); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
