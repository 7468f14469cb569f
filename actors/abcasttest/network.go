package abcasttest

import (
	"time"

	"github.com/abcast/abcast/actors/abcasttest/faultnet"
)

// Network is the kit's faulty network, on which a Subnet's nodes run
// (see faultnet.Network for the link model: latency, loss, capacity with a
// drop-tail queue, cuts, a tap, counters).
type Network = faultnet.Network

// Packet is one datagram as Network's tap sees it.
type Packet = faultnet.Packet

// NetStats count what a Network did with its packets.
type NetStats = faultnet.Stats

// NewNetwork returns an empty network whose loss decisions follow seed,
// with latency and loss on every link (faultnet.New).
func NewNetwork(seed uint64, latency time.Duration, loss float64) *Network {
	return faultnet.New(seed, latency, loss)
}

// DefaultQueueLimit is the queue bound of a link of the given capacity
// (faultnet.DefaultQueueLimit).
func DefaultQueueLimit(capacity int64) int { return faultnet.DefaultQueueLimit(capacity) }
