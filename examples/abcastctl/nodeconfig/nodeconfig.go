// Package nodeconfig is the per-node config file that abcastctl writes and
// node programs read: which key is the node's identity, where it listens,
// where its registry is (a registry file or an etcd prefix) and which
// channels it opens.
//
//	{
//	  "identity_key": "node-0.key",
//	  "listen": "127.0.0.1:7000",
//	  "registry": "registry.json",
//	  "channels": ["blocks"]
//	}
//
// Relative paths are relative to the config file's directory. Exactly one of
// "registry" and "etcd" ({"endpoints": [...], "prefix": "..."}) is set.
package nodeconfig

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Config is one node's config file.
type Config struct {
	IdentityKey string      `json:"identity_key"`
	Listen      string      `json:"listen"`
	Registry    string      `json:"registry,omitempty"`
	Etcd        *EtcdConfig `json:"etcd,omitempty"`
	Channels    []string    `json:"channels"`
	// PollInterval overrides the registry file's poll interval
	// (Go duration syntax, e.g. "100ms"); empty means the default.
	PollInterval string `json:"poll_interval,omitempty"`
}

// EtcdConfig names an etcd registry.
type EtcdConfig struct {
	Endpoints []string `json:"endpoints"`
	Prefix    string   `json:"prefix"`
}

// Load reads path and resolves relative paths against its directory.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("node config %s: %w", path, err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("node config %s: %w", path, err)
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("node config %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	c.IdentityKey = resolve(dir, c.IdentityKey)
	if c.Registry != "" {
		c.Registry = resolve(dir, c.Registry)
	}
	return &c, nil
}

func resolve(dir, p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(dir, p)
}

// Validate checks that the required fields are present.
func (c *Config) Validate() error {
	switch {
	case c.IdentityKey == "":
		return errors.New("identity_key is empty")
	case c.Listen == "":
		return errors.New("listen is empty")
	case (c.Registry == "") == (c.Etcd == nil):
		return errors.New("set exactly one of registry and etcd")
	case c.Etcd != nil && (len(c.Etcd.Endpoints) == 0 || c.Etcd.Prefix == ""):
		return errors.New("etcd needs endpoints and a prefix")
	case len(c.Channels) == 0:
		return errors.New("channels is empty")
	}
	return nil
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
