package membership

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/abcast/abcast/internal/poll"
)

func newFileSource(t *testing.T, path string) *FileSource {
	t.Helper()
	cfg := DefaultFileSourceConfig(path)
	cfg.PollInterval = 5 * time.Millisecond
	s, err := NewFileSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func writeRegistry(t *testing.T, path string, r *RegistryFile) {
	t.Helper()
	if err := WriteRegistryFile(path, r); err != nil {
		t.Fatal(err)
	}
}

// A FileSource applies joins, leaves, address changes and key rotations
// written to the file, and watchers see each new version.
func TestFileSourceAppliesChangesLive(t *testing.T) {
	path := filepath.Join(t.TempDir(), "registry.json")
	a, b, c := testMember(t, 1), testMember(t, 2), testMember(t, 3)
	r, _ := NewRegistryFile(a, b)
	writeRegistry(t, path, r)
	s := newFileSource(t, path)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := s.Watch(ctx)
	if first := <-w; first.Version != 1 || first.Len() != 2 {
		t.Fatalf("first snapshot v%d with %d members", first.Version, first.Len())
	}
	next := func(want uint64) *Snapshot {
		t.Helper()
		select {
		case snap := <-w:
			if snap.Version != want {
				t.Fatalf("got version %d, want %d", snap.Version, want)
			}
			return snap
		case <-time.After(5 * time.Second):
			t.Fatalf("no snapshot version %d", want)
			return nil
		}
	}

	if err := r.Put(c); err != nil { // join
		t.Fatal(err)
	}
	writeRegistry(t, path, r)
	if snap := next(2); !snap.Contains(c.ID) {
		t.Fatal("join not applied")
	}
	if err := r.Remove(a.ID); err != nil { // leave
		t.Fatal(err)
	}
	writeRegistry(t, path, r)
	if snap := next(3); snap.Contains(a.ID) {
		t.Fatal("leave not applied")
	}
	moved := b
	moved.Addr = "127.0.0.1:7777"
	if err := r.Put(moved); err != nil { // address change
		t.Fatal(err)
	}
	writeRegistry(t, path, r)
	if m, _ := next(4).Member(b.ID); m.Addr != moved.Addr {
		t.Fatalf("address change not applied: %s", m.Addr)
	}
	rotated := testIdentity(t, 9).Member(c.Addr)
	if err := r.Replace(c.ID, rotated); err != nil { // key rotation
		t.Fatal(err)
	}
	writeRegistry(t, path, r)
	if snap := next(5); snap.Contains(c.ID) || !snap.Contains(rotated.ID) {
		t.Fatal("rotation not applied")
	}
	if err := s.LastError(); err != nil {
		t.Fatal(err)
	}
}

// Bad updates keep the last good snapshot and report why; a later good
// update is applied again.
func TestFileSourceKeepsLastGoodSnapshot(t *testing.T) {
	path := filepath.Join(t.TempDir(), "registry.json")
	a, b := testMember(t, 1), testMember(t, 2)
	r, _ := NewRegistryFile(a, b)
	r.Version = 5
	writeRegistry(t, path, r)
	s := newFileSource(t, path)

	raw := func(doc string) {
		t.Helper()
		// Not atomic on purpose: a watcher may see the file half written
		// and must survive it.
		if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	refused := func(want string) {
		t.Helper()
		poll.Until(t, 5*time.Second, "refusal mentioning "+want, func() bool {
			err := s.LastError()
			return err != nil && strings.Contains(err.Error(), want)
		})
		if !errors.Is(s.LastError(), ErrBadRegistry) {
			t.Fatalf("%v does not wrap ErrBadRegistry", s.LastError())
		}
		if cur := s.Current(); cur.Version != 5 || cur.Len() != 2 {
			t.Fatalf("snapshot changed to v%d with %d members", cur.Version, cur.Len())
		}
	}
	raw(`{"version": 6, "members": [`)
	refused("malformed JSON")
	raw(`{"version": 6, "members": []}`)
	refused("lists no members")
	raw(`{"version": 6, "members": [` + entryJSON(a) + `,` + entryJSON(a) + `]}`)
	refused("duplicate node_id")
	old := *r
	old.Version = 4
	old.Members = old.Members[:1]
	writeRegistry(t, path, &old)
	refused("version went backwards from 5 to 4")
	same := *r
	same.Members = same.Members[:1]
	writeRegistry(t, path, &same)
	refused("version 5 was not increased")

	// Rewriting the good content (other formatting) is no change, no error.
	raw(`{"members":[` + entryJSON(a) + `,` + entryJSON(b) + `],"version":5}`)
	poll.Until(t, 5*time.Second, "error cleared", func() bool { return s.LastError() == nil })
	if s.Current().Version != 5 {
		t.Fatal("version changed")
	}

	// A missing file keeps the snapshot too.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 5*time.Second, "missing file reported", func() bool { return s.LastError() != nil })
	if s.Current().Len() != 2 {
		t.Fatal("snapshot lost with the file")
	}
	if err := r.Remove(b.ID); err != nil {
		t.Fatal(err)
	}
	writeRegistry(t, path, r)
	poll.Until(t, 5*time.Second, "version 6", func() bool { return s.Current().Version == 6 })
	if s.Current().Contains(b.ID) || s.LastError() != nil {
		t.Fatalf("v6 wrong: %v, %v", s.Current().IDs(), s.LastError())
	}
}

func TestNewFileSourceRefusesABadFile(t *testing.T) {
	dir := t.TempDir()
	if _, err := NewFileSource(DefaultFileSourceConfig(filepath.Join(dir, "missing.json"))); err == nil {
		t.Fatal("missing file accepted")
	}
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"version":1,"members":[]}`), 0o644)
	if _, err := NewFileSource(DefaultFileSourceConfig(bad)); !errors.Is(err, ErrBadRegistry) || !strings.Contains(err.Error(), bad) {
		t.Fatalf("err = %v", err)
	}
	cfg := DefaultFileSourceConfig(bad)
	cfg.PollInterval = 0
	if _, err := NewFileSource(cfg); err == nil {
		t.Fatal("zero poll interval accepted")
	}
}

func TestFileSourceReloadAppliesAtOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "registry.json")
	r, _ := NewRegistryFile(testMember(t, 1))
	writeRegistry(t, path, r)
	cfg := DefaultFileSourceConfig(path)
	cfg.PollInterval = time.Hour
	s, err := NewFileSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r.Put(testMember(t, 2))
	writeRegistry(t, path, r)
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if s.Current().Version != 2 || s.Current().Len() != 2 {
		t.Fatalf("v%d", s.Current().Version)
	}
}
