package nodeconfig_test

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/abcast/abcast/examples/abcastctl/nodeconfig"
	"github.com/abcast/abcast/membership"
)

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// A config file Save wrote loads back, with relative paths resolved
// against its directory.
func TestSaveAndLoad(t *testing.T) {
	dir := t.TempDir()
	nc := nodeconfig.Config{IdentityKey: "node-0.key", Listen: "127.0.0.1:7000", Registry: "registry.json", Channels: []string{"blocks"}, PollInterval: "100ms"}
	path := filepath.Join(dir, "node-0.json")
	if err := nc.Save(path); err != nil {
		t.Fatal(err)
	}
	c, err := nodeconfig.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.IdentityKey != filepath.Join(dir, "node-0.key") || c.Registry != filepath.Join(dir, "registry.json") || c.Listen != nc.Listen {
		t.Fatalf("paths not resolved: %+v", c)
	}
}

func TestConfigStaticMembersAndLimits(t *testing.T) {
	id, err := membership.GenerateIdentity(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	e := membership.EntryOf(id.Member("127.0.0.1:7000"))
	dir := t.TempDir()
	path := writeFile(t, dir, "c.json", `{"identity_key": "k", "listen": "127.0.0.1:7000", "channels": ["blocks"],
		"static_members": [{"node_id": "`+e.NodeID+`", "addr": "`+e.Addr+`", "public_key": "`+e.PublicKey+`"}],
		"limits": {"slot_limit": 1000, "max_payload": "4MiB", "idle_timeout": "3s", "push_threshold": 512}}`)
	c, err := nodeconfig.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	acfg, tcfg, snap, err := c.NodeConfigs()
	if err != nil {
		t.Fatal(err)
	}
	if snap == nil || !snap.Contains(id.ID) || snap.Len() != 1 {
		t.Fatalf("static registry: %+v", snap)
	}
	if acfg.Receiver.SlotLimit != 1000 || acfg.Wire.MaxPayloadLen != 4<<20 || acfg.Sender.PushThreshold != 512 || tcfg.IdleTimeout.Seconds() != 3 {
		t.Fatalf("limits not applied: %+v %+v", acfg, tcfg)
	}
	if tcfg.MaxFrameSize <= 4<<20 {
		t.Fatalf("frame size %d leaves no room for a 4 MiB payload's envelope", tcfg.MaxFrameSize)
	}
}

// Mistakes are errors naming the field, never silently defaulted.
func TestConfigRejects(t *testing.T) {
	base := `"identity_key": "k", "listen": "127.0.0.1:7000", "channels": ["blocks"]`
	for name, tc := range map[string]struct{ body, want string }{
		"typo":            {`{` + base + `, "registyr": "r.json"}`, "unknown field"},
		"no registry":     {`{` + base + `}`, "exactly one of registry"},
		"two registries":  {`{` + base + `, "registry": "r.json", "static_members": [{"node_id": "x"}]}`, "exactly one of registry"},
		"etcd no prefix":  {`{` + base + `, "etcd": {"endpoints": ["127.0.0.1:2379"]}}`, "etcd needs"},
		"bad duration":    {`{` + base + `, "registry": "r.json", "limits": {"idle_timeout": "soon"}}`, "duration"},
		"bad limits":      {`{` + base + `, "registry": "r.json", "limits": {"keep_alive": "10s", "idle_timeout": "5s"}}`, "IdleTimeout"},
		"bad log format":  {`{` + base + `, "registry": "r.json", "log": {"format": "xml"}}`, "log.format"},
		"duplicate chan":  {`{"identity_key": "k", "listen": "127.0.0.1:7000", "registry": "r.json", "channels": ["a", "a"]}`, "twice"},
		"bad static node": {`{` + base + `, "static_members": [{"node_id": "zz", "addr": "127.0.0.1:1", "public_key": ""}]}`, "static_members[0]"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := nodeconfig.Load(writeFile(t, t.TempDir(), "c.json", tc.body))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int{"300": 300, "200KiB": 200 << 10, "2MiB": 2 << 20, "1.5MB": 1_500_000, "10B": 10} {
		if got, err := nodeconfig.ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "x", "-1", "3GiB?"} {
		if _, err := nodeconfig.ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) accepted", bad)
		}
	}
}
