// Package nodeconfig is the per-node config file: abcastctl writes it,
// examples/replica (and the multi-process tests, through it) read it. It
// names the node's identity key, where it listens, where its registry is (a
// registry file, an etcd prefix or a static member list), the channels it
// opens, and optional HTTP, log and limit settings.
//
//	{
//	  "identity_key": "node-0.key",
//	  "listen": "127.0.0.1:7000",
//	  "registry": "registry.json",
//	  "channels": ["blocks", "signatures"],
//	  "http": "127.0.0.1:9100",
//	  "log": {"format": "json", "level": "info"},
//	  "limits": {"slot_limit": 10000, "max_payload": "16MiB", "idle_timeout": "3s"}
//	}
//
// Relative paths are relative to the config file's directory.
package nodeconfig

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/membership"
	"github.com/abcast/abcast/quicremote/transport"
)

// Config is one node's config file. `abcastctl subnet` writes its first
// fields (identity_key, listen, registry or etcd, channels); the rest are
// optional.
//
//	{
//	  "identity_key": "node-0.key",
//	  "listen": "127.0.0.1:7000",
//	  "registry": "registry.json",
//	  "channels": ["blocks", "signatures"],
//	  "http": "127.0.0.1:9100",
//	  "log": {"format": "json", "level": "info"},
//	  "limits": {"slot_limit": 10000, "max_payload": "16MiB", "idle_timeout": "3s"}
//	}
//
// Relative paths are relative to the config file's directory.
type Config struct {
	// IdentityKey is the node's Ed25519 key (PEM PKCS#8), created on first
	// start if missing.
	IdentityKey string `json:"identity_key"`
	// Listen is the UDP host:port of the node's QUIC endpoint; it must be
	// the address the registry lists for this node.
	Listen string `json:"listen"`
	// Registry is a registry file (abcastctl's format), watched for
	// changes. Exactly one of Registry, Etcd and StaticMembers is set.
	Registry string `json:"registry,omitempty"`
	// PollInterval is how often the registry file is re-read (Go duration,
	// e.g. "100ms"); default 1 s.
	PollInterval string `json:"poll_interval,omitempty"`
	// Etcd names an etcd registry: one key per member under Prefix, the
	// etcd revision as the version, followed with a watch.
	Etcd *EtcdConfig `json:"etcd,omitempty"`
	// StaticMembers is a fixed registry (version 1), for a subnet without a
	// registry file.
	StaticMembers []membership.RegistryEntry `json:"static_members,omitempty"`
	// Channels the node opens; every member must open the same ones.
	Channels []string `json:"channels"`
	// HTTP is the address of /metrics and the test API; "" disables them
	// (the -http flag overrides it). Port 0 picks a free port.
	HTTP string `json:"http,omitempty"`
	// Log chooses the log format ("console", the default, or "json") and
	// level ("debug", "info" (default), "warn", "error").
	Log LogConfig `json:"log,omitempty"`
	// Limits override the library defaults; zero fields keep them.
	Limits Limits `json:"limits,omitempty"`
}

// EtcdConfig names an etcd registry.
type EtcdConfig struct {
	Endpoints []string `json:"endpoints"`
	Prefix    string   `json:"prefix"`
}

// LogConfig chooses the log output.
type LogConfig struct {
	Format string `json:"format,omitempty"`
	Level  string `json:"level,omitempty"`
}

// Limits are the knobs an operator most often turns; each maps to a field
// of actors.Config, broadcast.SenderConfig / ReceiverConfig or
// transport.Config (see their doc comments for the defaults).
type Limits struct {
	MaxSlots           int      `json:"max_slots,omitempty"`              // SenderConfig.MaxSlots
	PushThreshold      Size     `json:"push_threshold,omitempty"`         // SenderConfig.PushThreshold
	MaxInFlightPerPeer int      `json:"max_in_flight_per_peer,omitempty"` // SenderConfig.MaxInFlightPerPeer
	SlotLimit          int      `json:"slot_limit,omitempty"`             // ReceiverConfig.SlotLimit
	MaxActiveFetches   int      `json:"max_active_fetches,omitempty"`     // ReceiverConfig.MaxActiveFetches
	MaxFetchesPerPeer  int      `json:"max_fetches_per_peer,omitempty"`   // ReceiverConfig.MaxFetchesPerPeer
	DeliveryCredits    int      `json:"delivery_credits,omitempty"`       // ReceiverConfig.DeliveryCredits
	MaxPayload         Size     `json:"max_payload,omitempty"`            // Config.Wire.MaxPayloadLen and quicremote MaxFrameSize (plus headroom)
	MailboxCapacity    int      `json:"mailbox_capacity,omitempty"`       // Config.MailboxCapacity
	MaxIncomingStreams int      `json:"max_incoming_streams,omitempty"`   // transport.Config.MaxIncomingStreams
	KeepAlive          Duration `json:"keep_alive,omitempty"`             // transport.Config.KeepAlive
	IdleTimeout        Duration `json:"idle_timeout,omitempty"`           // transport.Config.IdleTimeout
	ReconnectMax       Duration `json:"reconnect_backoff_max,omitempty"`  // transport.Config.ReconnectBackoffMax
}

// Duration is a time.Duration written as a Go duration string ("250ms").
type Duration time.Duration

// UnmarshalJSON reads a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration: want a string such as \"250ms\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
		return fmt.Errorf("duration %q: want a positive Go duration such as \"250ms\"", s)
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON writes a duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// Size is a byte count written as a number or a string with a unit
// ("64KiB", "16MiB").
type Size int

// UnmarshalJSON reads a number of bytes or a size string.
func (s *Size) UnmarshalJSON(b []byte) error {
	var n int
	if err := json.Unmarshal(b, &n); err == nil {
		*s = Size(n)
		return nil
	}
	var str string
	if err := json.Unmarshal(b, &str); err != nil {
		return fmt.Errorf("size: want a number of bytes or a string such as \"16MiB\"")
	}
	v, err := ParseSize(str)
	if err != nil {
		return err
	}
	*s = Size(v)
	return nil
}

// Load reads path, resolves relative paths against its directory and
// validates it. Unknown fields are errors (a typo would silently keep a
// default).
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	resolve := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	c.IdentityKey, c.Registry = resolve(c.IdentityKey), resolve(c.Registry)
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return &c, nil
}

// Validate checks the fields that need no I/O.
func (c *Config) Validate() error {
	sources := 0
	for _, set := range []bool{c.Registry != "", c.Etcd != nil, len(c.StaticMembers) > 0} {
		if set {
			sources++
		}
	}
	switch {
	case c.IdentityKey == "":
		return errors.New("identity_key is empty")
	case c.Listen == "":
		return errors.New("listen is empty")
	case sources != 1:
		return errors.New("set exactly one of registry, etcd and static_members")
	case c.Etcd != nil && (len(c.Etcd.Endpoints) == 0 || c.Etcd.Prefix == ""):
		return errors.New("etcd needs endpoints and a prefix")
	case len(c.Channels) == 0:
		return errors.New("channels is empty")
	}
	if c.PollInterval != "" {
		if d, err := time.ParseDuration(c.PollInterval); err != nil || d <= 0 {
			return fmt.Errorf("poll_interval %q: want a positive Go duration", c.PollInterval)
		}
	}
	switch c.Log.Format {
	case "", "console", "json":
	default:
		return fmt.Errorf("log.format %q: want console or json", c.Log.Format)
	}
	seen := map[string]bool{}
	for _, ch := range c.Channels {
		if seen[ch] {
			return fmt.Errorf("channel %q listed twice", ch)
		}
		seen[ch] = true
	}
	_, _, _, err := c.NodeConfigs()
	return err
}

// NodeConfigs applies Limits to the library defaults and validates the
// results; the snapshot is the static registry, nil unless StaticMembers
// is set.
func (c *Config) NodeConfigs() (actors.Config, transport.Config, *membership.Snapshot, error) {
	acfg, tcfg := actors.DefaultConfig(), transport.DefaultConfig()
	l := c.Limits
	set := func(dst *int, v int) {
		if v != 0 {
			*dst = v
		}
	}
	set(&acfg.Sender.MaxSlots, l.MaxSlots)
	set(&acfg.Sender.PushThreshold, int(l.PushThreshold))
	set(&acfg.Sender.MaxInFlightPerPeer, l.MaxInFlightPerPeer)
	set(&acfg.Receiver.SlotLimit, l.SlotLimit)
	set(&acfg.Receiver.MaxActiveFetches, l.MaxActiveFetches)
	set(&acfg.Receiver.MaxFetchesPerPeer, l.MaxFetchesPerPeer)
	set(&acfg.Receiver.DeliveryCredits, l.DeliveryCredits)
	set(&acfg.MailboxCapacity, l.MailboxCapacity)
	set(&tcfg.MaxIncomingStreams, l.MaxIncomingStreams)
	if l.MaxPayload != 0 {
		acfg.Wire.MaxPayloadLen = int(l.MaxPayload)
		// A frame carries the payload plus id, attribute and framing.
		tcfg.MaxFrameSize = int(l.MaxPayload) + acfg.Wire.MaxIDLen + acfg.Wire.MaxAttributeLen + 4096
		// A peer may have two maximal frames in our memory at once.
		tcfg.MaxBytesPerPeer = max(tcfg.MaxBytesPerPeer, 2*tcfg.MaxFrameSize)
	}
	if l.KeepAlive != 0 {
		tcfg.KeepAlive = time.Duration(l.KeepAlive)
	}
	if l.IdleTimeout != 0 {
		tcfg.IdleTimeout = time.Duration(l.IdleTimeout)
	}
	if l.ReconnectMax != 0 {
		tcfg.ReconnectBackoffMax = time.Duration(l.ReconnectMax)
		tcfg.ReconnectBackoffMin = min(tcfg.ReconnectBackoffMin, tcfg.ReconnectBackoffMax)
	}
	if tcfg.DefaultProtocolLimit > tcfg.MaxIncomingStreams {
		tcfg.DefaultProtocolLimit = tcfg.MaxIncomingStreams
	}
	if err := acfg.Validate(); err != nil {
		return acfg, tcfg, nil, fmt.Errorf("limits: %w", err)
	}
	if err := tcfg.Validate(); err != nil {
		return acfg, tcfg, nil, fmt.Errorf("limits: %w", err)
	}
	var snap *membership.Snapshot
	if len(c.StaticMembers) > 0 {
		var ms []membership.Member
		for i, e := range c.StaticMembers {
			m, err := e.Member()
			if err != nil {
				return acfg, tcfg, nil, fmt.Errorf("static_members[%d]: %w", i, err)
			}
			ms = append(ms, m)
		}
		var err error
		if snap, err = membership.NewSnapshot(1, ms...); err != nil {
			return acfg, tcfg, nil, fmt.Errorf("static_members: %w", err)
		}
	}
	return acfg, tcfg, snap, nil
}

// Save writes c to path as indented JSON (paths are written as given).
func (c *Config) Save(path string) error {
	if err := c.Validate(); err != nil {
		return fmt.Errorf("node config %s: %w", path, err)
	}
	data, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

// ParseSize reads "300000", "64KiB", "2MiB", "1.5MB".
func ParseSize(s string) (int, error) {
	s = strings.TrimSpace(s)
	for _, u := range []struct {
		suffix string
		mult   float64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"KB", 1e3}, {"MB", 1e6}, {"B", 1}, {"", 1}} {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
			if err != nil || v < 0 || v*u.mult > 1<<40 {
				return 0, fmt.Errorf("size %q: want a number with an optional unit B, KB, KiB, MB, MiB", s)
			}
			return int(v * u.mult), nil
		}
	}
	return 0, fmt.Errorf("size %q: unknown unit", s)
}
