package transport

import (
	"testing"
	"time"
)

func TestDefaultConfigValid(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestConfigValidateRejects(t *testing.T) {
	for name, mut := range map[string]func(*Config){
		"zero frame":          func(c *Config) { c.MaxFrameSize = 0 },
		"frame above 32 bits": func(c *Config) { c.MaxFrameSize = 1 << 33 },
		"no streams":          func(c *Config) { c.MaxIncomingStreams = 0 },
		"protocol > streams":  func(c *Config) { c.DefaultProtocolLimit = c.MaxIncomingStreams + 1 },
		"idle <= keepalive":   func(c *Config) { c.IdleTimeout = c.KeepAlive },
		"backoff inverted":    func(c *Config) { c.ReconnectBackoffMax = time.Millisecond },
		"window inverted":     func(c *Config) { c.MaxStreamWindow = c.InitialStreamWindow - 1 },
		"conn < stream":       func(c *Config) { c.InitialConnectionWindow = c.InitialStreamWindow - 1 },
		"budget < frame":      func(c *Config) { c.MaxBytesPerPeer = c.MaxFrameSize - 1 },
		"no progress timeout": func(c *Config) { c.ProgressTimeout = 0 },
		"no handshakes":       func(c *Config) { c.MaxPendingHandshakes = 0 },
		"retry above cap":     func(c *Config) { c.RetryHandshakesAbove = c.MaxPendingHandshakes + 1 },
		"negative retry":      func(c *Config) { c.RetryHandshakesAbove = -1 },
		"no accept timeout":   func(c *Config) { c.AcceptHandshakeTimeout = 0 },
	} {
		c := DefaultConfig()
		mut(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// The stateless reset key must survive a restart (same node key, same
// reset key) and differ between nodes.
func TestStatelessResetKeyDeterministic(t *testing.T) {
	ids := newIdentities(t, 2)
	k1, err := StatelessResetKey(ids[0])
	if err != nil {
		t.Fatal(err)
	}
	k2, _ := StatelessResetKey(ids[0])
	k3, _ := StatelessResetKey(ids[1])
	if *k1 != *k2 {
		t.Fatal("key differs for the same identity")
	}
	if *k1 == *k3 {
		t.Fatal("two identities share a key")
	}
}
