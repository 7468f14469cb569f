package actors

import (
	"fmt"
	"strings"
)

// MemoryBound is the most memory other members can make a node hold, as a
// function of its configuration: what G4 promises, written out. The README
// ("Memory limits") explains each term; tests/attack_*_test.go check that
// the heap growth under each attack of issue 16 stays within it.
//
// It counts what peers' traffic makes the node hold: frames, decoded
// copies, slot tables, fetches in progress, answers being written, queued
// actor messages, watches, connection state, deliveries not yet consumed.
// It does not count the node's own state (what it publishes, its actors
// and what they keep, messages it sends), which the application decides.
type MemoryBound struct {
	// Members and Channels are what the bound was computed for.
	Members, Channels int
	// PerPeer is the most one member, hostile or not, can make the node
	// hold on all channels together: the sum of the per-peer terms.
	PerPeer int64
	// PerNode is the most all peers together and the node-wide terms
	// (handshakes, deliveries waiting for the consumers, the remote's
	// batches in flight) make the node hold: (Members − 1) × PerPeer
	// plus the node-wide terms.
	PerNode int64
	// Terms are the parts, in the README's order.
	Terms []MemoryTerm
}

// MemoryTerm is one part of a MemoryBound.
type MemoryTerm struct {
	Name    string // what holds the bytes
	PerPeer bool   // counted once per peer (else once per node)
	Formula string // in configuration fields
	Bytes   int64
}

// Costs behind the bound that are not configuration but measured (quic-go
// v0.65, protoactor-go as pinned, Go 1.26, amd64); the attack tests check
// them.
const (
	// SlotEntryOverhead is what one slot entry costs beyond its id and
	// attribute: the entry, the advertiser set and id state, a fetch-queue
	// slot, the digest, and a delivered id's record for the consumer.
	// Measured 525 bytes (50,000 entries with 128-byte ids and 1 KiB
	// attributes took 80 MiB, TestAttackSlotsAcrossConnections at full
	// size).
	SlotEntryOverhead = 640
	// WatchCost is one peer's watch of a local actor: protoactor's
	// watcher entry and the remote's record (measured 240 + 80 bytes).
	WatchCost = 320
	// quicCongestionBytes is the most unacknowledged data quic-go keeps
	// for retransmission on one connection: 10,000 packets of at most
	// 1,500 bytes.
	quicCongestionBytes = 10_000 * 1_500
	// quicStreamCost is a stream's state and its handler goroutine.
	quicStreamCost = 16 << 10
	// quicConnCost is a connection's TLS and handshake state, keys and
	// bookkeeping.
	quicConnCost = 256 << 10
	// handshakeCost is an incoming handshake in progress (measured ~25
	// KB, see transport.Config.MaxPendingHandshakes).
	handshakeCost = 64 << 10
	// manifestPerKiB is what a fetch keeps per chunk besides the chunk
	// (its hash, slice header and state), per KiB of the smallest chunk.
	manifestPerKiB = 64
	// encodeOverhead covers a fetch answer's framing around its chunk.
	encodeOverhead = 64
)

// MemoryBound computes the bound for a subnet of members nodes (this one
// included) each running channels channels with this configuration
// (channels whose ChannelConfig overrides Sender or Receiver are counted
// with these).
func (c Config) MemoryBound(members, channels int) MemoryBound {
	t, rm, rc := c.Transport, c.Remote, c.Receiver
	n, ch := int64(members), int64(channels)
	b := MemoryBound{Members: members, Channels: channels}
	add := func(perPeer bool, name, formula string, bytes int64) {
		b.Terms = append(b.Terms, MemoryTerm{Name: name, PerPeer: perPeer, Formula: formula, Bytes: bytes})
	}
	add(true, "transport budget: requests and stream frames, answers being written or read, fetch answers until the receiver took them, the remote's decoded messages until their actor took them",
		"Transport.MaxBytesPerPeer", int64(t.MaxBytesPerPeer))
	add(true, "decoded copies of charged frames, while the frame is charged (an update being handled)",
		"Transport.MaxBytesPerPeer", int64(t.MaxBytesPerPeer))
	add(true, "QUIC connection: receive window, unacknowledged data, streams and their goroutines",
		"Transport.MaxConnectionWindow + 15 MB + Transport.MaxIncomingStreams × 16 KiB + 256 KiB",
		int64(t.MaxConnectionWindow)+quicCongestionBytes+int64(t.MaxIncomingStreams)*quicStreamCost+quicConnCost)
	add(true, "watches on local actors",
		"Remote.MaxWatchesPerPeer × 320 B", int64(rm.MaxWatchesPerPeer)*WatchCost)
	add(true, "slot entries, those of older connections included",
		"channels × Receiver.SlotLimit × (Receiver.MaxIDLen + Receiver.MaxAttributeLen + 640 B)",
		ch*int64(rc.SlotLimit)*int64(rc.MaxIDLen+rc.MaxAttributeLen+SlotEntryOverhead))
	add(true, "fetches following the peer's manifests: chunks and manifests",
		"channels × Receiver.MaxFetchBytesPerPeer × (1 + 64/1024)",
		ch*int64(rc.MaxFetchBytesPerPeer)*(1024+manifestPerKiB)/1024)
	add(true, "fetch answers being encoded for the peer, before the transport charges them",
		"channels × FetchHandlers × (Sender.ChunkSize + 64 B)",
		ch*int64(c.FetchHandlers)*int64(c.Sender.ChunkSize+encodeOverhead))
	add(false, "incoming handshakes in progress (anyone, before authentication)",
		"Transport.MaxPendingHandshakes × 64 KiB", int64(t.MaxPendingHandshakes)*handshakeCost)
	add(false, "deliveries waiting for the consumers (from any peer)",
		"channels × (Receiver.DeliveryCredits + Receiver.MaxActiveFetches + members) × Receiver.MaxFetchSize",
		ch*int64(rc.DeliveryCredits+rc.MaxActiveFetches+members)*int64(rc.MaxFetchSize))
	add(false, "the remote's batches to peers awaiting acknowledgement",
		"(members − 1) × Remote.MaxInflightBatches × Remote.MaxBatchBytes",
		(n-1)*int64(rm.MaxInflightBatches)*int64(rm.MaxBatchBytes))
	for _, term := range b.Terms {
		if term.PerPeer {
			b.PerPeer += term.Bytes
		}
	}
	b.PerNode = (n - 1) * b.PerPeer
	for _, term := range b.Terms {
		if !term.PerPeer {
			b.PerNode += term.Bytes
		}
	}
	return b
}

// Term returns the bytes of the term whose name starts with prefix (0 if
// none).
func (b MemoryBound) Term(prefix string) int64 {
	for _, t := range b.Terms {
		if strings.HasPrefix(t.Name, prefix) {
			return t.Bytes
		}
	}
	return 0
}

// String lists the terms with their sizes.
func (b MemoryBound) String() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "memory bound for %d members, %d channels: per peer %s, per node %s\n", b.Members, b.Channels, mibString(b.PerPeer), mibString(b.PerNode))
	for _, t := range b.Terms {
		scope := "node"
		if t.PerPeer {
			scope = "peer"
		}
		fmt.Fprintf(&sb, "  %-4s %12s  %s  [%s]\n", scope, mibString(t.Bytes), t.Name, t.Formula)
	}
	return sb.String()
}

func mibString(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
