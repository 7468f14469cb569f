package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/abcast/abcast/examples/abcastctl/nodeconfig"
	"github.com/abcast/abcast/membership"
)

func ctl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(args, &out, &errOut)
	return out.String(), err
}

func mustCtl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := ctl(t, args...)
	if err != nil {
		t.Fatalf("abcastctl %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func TestKeygenPrintsNodeIDAndNeverOverwrites(t *testing.T) {
	key := filepath.Join(t.TempDir(), "node.key")
	out := mustCtl(t, "keygen", "-out", key)
	id, err := membership.LoadIdentity(key)
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(out) != id.ID.String() {
		t.Fatalf("printed %q, key is %s", out, id.ID)
	}
	if _, err := ctl(t, "keygen", "-out", key); err == nil {
		t.Fatal("keygen overwrote a key")
	}
	if again, _ := membership.LoadIdentity(key); again.ID != id.ID {
		t.Fatal("key changed")
	}
	if _, err := ctl(t, "keygen"); !errors.Is(err, errUsage) {
		t.Fatalf("missing -out: %v", err)
	}
}

func TestSubnetWritesKeysRegistryAndConfigs(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "subnet")
	mustCtl(t, "subnet", "-n", "4", "-dir", dir, "-base-port", "7000", "-channels", "blocks,ingress")
	r, err := membership.ReadRegistryFile(filepath.Join(dir, "registry.json"))
	if err != nil {
		t.Fatal(err)
	}
	snap, err := r.Snapshot()
	if err != nil || snap.Version != 1 || snap.Len() != 4 {
		t.Fatalf("registry v%d with %d members: %v", snap.Version, snap.Len(), err)
	}
	for i := range 4 {
		cfg, err := nodeconfig.Load(filepath.Join(dir, fmt.Sprintf("node-%d.json", i)))
		if err != nil {
			t.Fatal(err)
		}
		id, err := membership.LoadIdentity(cfg.IdentityKey)
		if err != nil {
			t.Fatal(err)
		}
		m, ok := snap.Member(id.ID)
		if !ok || m.Addr != cfg.Listen || cfg.Listen != fmt.Sprintf("127.0.0.1:%d", 7000+i) {
			t.Fatalf("node %d: listed %v at %q, listens on %q", i, ok, m.Addr, cfg.Listen)
		}
		if cfg.Registry != filepath.Join(dir, "registry.json") || len(cfg.Channels) != 2 {
			t.Fatalf("node %d config: %+v", i, cfg)
		}
	}
	if _, err := ctl(t, "subnet", "-n", "2", "-dir", dir); err == nil {
		t.Fatal("subnet overwrote an existing subnet")
	}
}

func TestAddRemoveOldestShow(t *testing.T) {
	dir := t.TempDir()
	mustCtl(t, "subnet", "-n", "2", "-dir", dir, "-base-port", "7100")
	reg := filepath.Join(dir, "registry.json")
	key := filepath.Join(dir, "new.key")
	newID := strings.TrimSpace(mustCtl(t, "keygen", "-out", key))

	// add: a join, as version 2.
	if out := mustCtl(t, "add", "-registry", reg, "-key", key, "-addr", "127.0.0.1:7200"); !strings.Contains(out, "version 2") {
		t.Fatalf("add printed %q", out)
	}
	out := mustCtl(t, "show", "-registry", reg)
	if !strings.Contains(out, "version 2") || !strings.Contains(out, newID+"  127.0.0.1:7200") || !strings.Contains(out, "3 member(s)") {
		t.Fatalf("show after add:\n%s", out)
	}
	// add again with a new address: an address change.
	mustCtl(t, "add", "-registry", reg, "-key", key, "-addr", "127.0.0.1:7201")
	if out := mustCtl(t, "show", "-registry", reg); !strings.Contains(out, newID+"  127.0.0.1:7201") {
		t.Fatalf("show after move:\n%s", out)
	}
	// Same address again is an error and no new version.
	if _, err := ctl(t, "add", "-registry", reg, "-key", key, "-addr", "127.0.0.1:7201"); err == nil {
		t.Fatal("no-op add accepted")
	}

	// Keep version 3 in use, then remove: the member stays in force.
	mustCtl(t, "oldest", "-registry", reg, "-version", "3")
	mustCtl(t, "remove", "-registry", reg, "-node", newID)
	out = mustCtl(t, "show", "-registry", reg)
	if !strings.Contains(out, "version 5, oldest version in use 3") || !strings.Contains(out, newID+"  127.0.0.1:7201  (kept from an older version in use)") {
		t.Fatalf("show with an older version in use:\n%s", out)
	}
	// Advancing the oldest version lets it go.
	mustCtl(t, "oldest", "-registry", reg, "-version", "5")
	out = mustCtl(t, "show", "-registry", reg)
	if strings.Contains(out, newID) || !strings.Contains(out, "2 member(s)") {
		t.Fatalf("show after advancing:\n%s", out)
	}
	if _, err := ctl(t, "remove", "-registry", reg, "-node", newID); err == nil {
		t.Fatal("removed a non-member")
	}
	if _, err := ctl(t, "remove", "-registry", reg, "-node", "xyz"); err == nil || !strings.Contains(err.Error(), "-node") {
		t.Fatalf("bad node id: %v", err)
	}
	if _, err := ctl(t, "oldest", "-registry", reg, "-version", "1"); err == nil {
		t.Fatal("oldest version went back")
	}
}

func TestAddReplaceRotatesAKey(t *testing.T) {
	dir := t.TempDir()
	mustCtl(t, "subnet", "-n", "2", "-dir", dir, "-base-port", "7300")
	reg := filepath.Join(dir, "registry.json")
	old, _ := membership.LoadIdentity(filepath.Join(dir, "node-1.key"))
	key := filepath.Join(dir, "node-1-rotated.key")
	newID := strings.TrimSpace(mustCtl(t, "keygen", "-out", key))
	mustCtl(t, "add", "-registry", reg, "-key", key, "-addr", "127.0.0.1:7301", "-replace", old.ID.String())
	out := mustCtl(t, "show", "-registry", reg)
	if strings.Contains(out, old.ID.String()) || !strings.Contains(out, newID+"  127.0.0.1:7301") {
		t.Fatalf("show after rotation:\n%s", out)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{nil, {"frobnicate"}, {"show"}, {"add", "-registry", "x"}, {"show", "-registry", "x", "extra"}} {
		if _, err := ctl(t, args...); !errors.Is(err, errUsage) {
			t.Errorf("%q: err = %v, want usage error", args, err)
		}
	}
	if _, err := ctl(t, "show", "-registry", filepath.Join(t.TempDir(), "none.json")); err == nil || errors.Is(err, errUsage) {
		t.Errorf("missing registry: %v", err)
	}
	bad := filepath.Join(t.TempDir(), "bad.json")
	os.WriteFile(bad, []byte(`{"version":1,"members":[]}`), 0o644)
	if _, err := ctl(t, "show", "-registry", bad); !errors.Is(err, membership.ErrBadRegistry) {
		t.Errorf("bad registry: %v", err)
	}
}
