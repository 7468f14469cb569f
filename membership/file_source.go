package membership

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// FileSourceConfig configures a FileSource.
type FileSourceConfig struct {
	// Path is the registry file (see RegistryFile for its format).
	Path string
	// PollInterval is how often the file is re-read and hashed; a change
	// is applied within one interval. Default 1 s: a registry changes by
	// hand or by a tool, and a second is well under a connection's idle
	// timeout. Reading a small file once a second costs nothing.
	PollInterval time.Duration
	// Log receives one line per applied or refused change. The zero value
	// logs nothing.
	Log zerolog.Logger
}

// DefaultFileSourceConfig returns the defaults for the registry at path.
func DefaultFileSourceConfig(path string) FileSourceConfig {
	return FileSourceConfig{Path: path, PollInterval: time.Second}
}

// Validate reports the first field out of range.
func (c FileSourceConfig) Validate() error {
	switch {
	case c.Path == "":
		return errors.New("membership: FileSourceConfig.Path is empty")
	case c.PollInterval <= 0:
		return fmt.Errorf("membership: FileSourceConfig.PollInterval must be positive, got %v", c.PollInterval)
	}
	return nil
}

// FileSource is a Source backed by a registry file that it polls for
// changes. A change is applied only if the new document is valid and its
// version is newer; otherwise the last good snapshot stays in force and the
// refusal is logged and kept for LastError. A rewrite that changes nothing
// (same version, same content) is ignored.
//
// The file is polled rather than watched with inotify: polling sees atomic
// renames, editors that replace the file, symlink swaps (Kubernetes
// ConfigMaps) and network file systems alike, needs no dependency, and the
// cost of reading a few kilobytes once a second is negligible.
type FileSource struct {
	cfg    FileSourceConfig
	static *StaticSource

	mu       sync.Mutex
	lastHash [32]byte // of the raw bytes last read
	goodDoc  []byte   // canonical JSON of the document in force
	lastErr  error
	applied  uint64 // number of snapshots installed after the first

	cancel context.CancelFunc
	done   chan struct{}
}

var _ Source = (*FileSource)(nil)

// NewFileSource reads the registry at cfg.Path and starts polling it. It
// fails if the file cannot be read or is invalid: there is no earlier
// snapshot to fall back on. Close stops the polling.
func NewFileSource(cfg FileSourceConfig) (*FileSource, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	data, err := readBounded(cfg.Path)
	if err != nil {
		return nil, err
	}
	doc, snap, err := decodeRegistry(cfg.Path, data)
	if err != nil {
		return nil, err
	}
	static, err := NewStaticSource(snap)
	if err != nil {
		return nil, fmt.Errorf("registry %s: %w", cfg.Path, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &FileSource{cfg: cfg, static: static, lastHash: sha256.Sum256(data), goodDoc: doc, cancel: cancel, done: make(chan struct{})}
	cfg.Log.Info().Str("registry", cfg.Path).Uint64("version", snap.Version).Int("members", snap.Len()).Msg("registry loaded")
	go s.poll(ctx)
	return s, nil
}

// decodeRegistry parses data and returns its canonical form and snapshot.
func decodeRegistry(path string, data []byte) ([]byte, *Snapshot, error) {
	r, err := ParseRegistry(data)
	if err != nil {
		return nil, nil, fmt.Errorf("registry %s: %w", path, err)
	}
	snap, err := r.Snapshot()
	if err != nil {
		return nil, nil, fmt.Errorf("registry %s: %w", path, err)
	}
	canon, err := json.Marshal(r)
	if err != nil {
		return nil, nil, fmt.Errorf("registry %s: %w", path, err)
	}
	return canon, snap, nil
}

// Current implements Source.
func (s *FileSource) Current() *Snapshot { return s.static.Current() }

// Watch implements Source.
func (s *FileSource) Watch(ctx context.Context) <-chan *Snapshot { return s.static.Watch(ctx) }

// LastError returns why the most recent read of the file was refused, or
// nil if it was applied (or changed nothing).
func (s *FileSource) LastError() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
}

// Reload reads the file now instead of waiting for the next poll (on
// SIGHUP, say) and returns the refusal, if any.
func (s *FileSource) Reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastErr = s.reloadLocked()
	return s.lastErr
}

// Close stops polling. Watch channels stay open until their contexts end.
func (s *FileSource) Close() error {
	s.cancel()
	<-s.done
	return nil
}

func (s *FileSource) poll(ctx context.Context) {
	defer close(s.done)
	t := time.NewTicker(s.cfg.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.Reload()
		}
	}
}

// reloadLocked applies the file if it changed; s.mu is held.
func (s *FileSource) reloadLocked() error {
	data, err := readBounded(s.cfg.Path)
	if err != nil {
		s.lastHash = [32]byte{} // judge the file afresh once it is back
		if s.lastErr == nil || s.lastErr.Error() != err.Error() {
			s.cfg.Log.Error().Err(err).Str("registry", s.cfg.Path).Uint64("keeping_version", s.Current().Version).Msg("registry unreadable; keeping the last good snapshot")
		}
		return err
	}
	h := sha256.Sum256(data)
	if h == s.lastHash {
		return s.lastErr // unchanged bytes: same verdict as last time
	}
	s.lastHash = h
	cur := s.Current()
	doc, snap, err := decodeRegistry(s.cfg.Path, data)
	switch {
	case err != nil:
	case snap.Version < cur.Version:
		err = fmt.Errorf("registry %s: %w: version went backwards from %d to %d", s.cfg.Path, ErrBadRegistry, cur.Version, snap.Version)
	case snap.Version == cur.Version && !bytes.Equal(doc, s.goodDoc):
		err = fmt.Errorf("registry %s: %w: content changed but version %d was not increased", s.cfg.Path, ErrBadRegistry, cur.Version)
	case snap.Version == cur.Version:
		return nil // rewritten without a change
	default:
		err = s.static.Update(snap)
	}
	if err != nil {
		s.cfg.Log.Error().Err(err).Str("registry", s.cfg.Path).Uint64("keeping_version", cur.Version).Msg("registry change refused; keeping the last good snapshot")
		return err
	}
	s.goodDoc = doc
	s.applied++
	s.logChange(cur, snap)
	return nil
}

func (s *FileSource) logChange(prev, next *Snapshot) {
	ev := s.cfg.Log.Info().Str("registry", s.cfg.Path).Uint64("from_version", prev.Version).Uint64("version", next.Version).Int("members", next.Len())
	d := DiffSnapshots(prev, next)
	if len(d.Joined) > 0 {
		ev = ev.Strs("joined", shortIDs(d.Joined))
	}
	if len(d.Left) > 0 {
		ev = ev.Strs("left", shortIDs(d.Left))
	}
	if len(d.Moved) > 0 {
		ev = ev.Strs("moved", shortIDs(d.Moved))
	}
	ev.Msg("registry change applied")
}

func shortIDs(ids []NodeID) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = id.Short()
	}
	return out
}

// SnapshotDiff is what changed between two snapshots, each list in NodeID
// order. A key rotation shows as one id leaving and another joining.
type SnapshotDiff struct {
	Joined, Left, Moved []NodeID
}

// DiffSnapshots compares prev with next (either may be nil).
func DiffSnapshots(prev, next *Snapshot) SnapshotDiff {
	var d SnapshotDiff
	for _, id := range next.IDs() {
		nm, _ := next.Member(id)
		pm, ok := prev.Member(id)
		switch {
		case !ok:
			d.Joined = append(d.Joined, id)
		case pm.Addr != nm.Addr:
			d.Moved = append(d.Moved, id)
		}
	}
	for _, id := range prev.IDs() {
		if !next.Contains(id) {
			d.Left = append(d.Left, id)
		}
	}
	return d
}
