package actors

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// The README's "Memory limits" table works the bound out for the
// defaults; it must say what MemoryBound computes.
func TestMemoryBoundDefaultsMatchTheREADME(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	i := strings.Index(string(readme), "## Memory limits")
	if i < 0 {
		t.Fatal("README has no Memory limits section")
	}
	section := string(readme[i:])
	for _, nc := range [][2]int{{4, 1}, {4, 2}, {13, 2}} {
		b := DefaultConfig().MemoryBound(nc[0], nc[1])
		perPeer := fmt.Sprintf("**%.1f MiB**", float64(b.PerPeer)/(1<<20))
		perNode := fmt.Sprintf("**%.1f GiB**", float64(b.PerNode)/(1<<30))
		for _, want := range []string{perPeer, perNode} {
			if !strings.Contains(section, want) {
				t.Errorf("N = %d, C = %d: the README's table lacks %s\n%v", nc[0], nc[1], want, b)
			}
		}
	}
}

// Every term grows with the limit it names, so a configuration change
// shows in the bound.
func TestMemoryBoundFollowsTheConfiguration(t *testing.T) {
	base := DefaultConfig().MemoryBound(4, 2)
	for _, c := range []struct {
		term string
		set  func(*Config)
	}{
		{"transport budget", func(c *Config) { c.Transport.MaxBytesPerPeer *= 2 }},
		{"QUIC connection", func(c *Config) { c.Transport.MaxConnectionWindow *= 2 }},
		{"watches", func(c *Config) { c.Remote.MaxWatchesPerPeer *= 2 }},
		{"slot entries", func(c *Config) { c.Receiver.SlotLimit *= 2 }},
		{"fetches following", func(c *Config) { c.Receiver.MaxFetchBytesPerPeer *= 2 }},
		{"fetch answers being encoded", func(c *Config) { c.FetchHandlers *= 2 }},
		{"incoming handshakes", func(c *Config) { c.Transport.MaxPendingHandshakes *= 2 }},
		{"deliveries waiting", func(c *Config) { c.Receiver.DeliveryCredits *= 2 }},
		{"the remote's batches", func(c *Config) { c.Remote.MaxInflightBatches *= 2 }},
	} {
		cfg := DefaultConfig()
		c.set(&cfg)
		b := cfg.MemoryBound(4, 2)
		if b.Term(c.term) <= base.Term(c.term) || b.PerNode <= base.PerNode {
			t.Errorf("doubling the limit behind %q: term %d -> %d, per node %d -> %d", c.term, base.Term(c.term), b.Term(c.term), base.PerNode, b.PerNode)
		}
	}
	if base.PerNode != 3*base.PerPeer+base.Term("incoming handshakes")+base.Term("deliveries waiting")+base.Term("the remote's batches") {
		t.Errorf("per node %d is not 3 × per peer %d plus the node-wide terms", base.PerNode, base.PerPeer)
	}
}
