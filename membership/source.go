package membership

import (
	"context"
	"fmt"
	"sync"
)

// Source supplies registry snapshots.
//
// Current never returns nil. Watch returns a channel that first yields the
// current snapshot and then each newer one. The channel holds at most one
// pending snapshot: a reader that falls behind sees only the latest, never a
// backlog, and never blocks the source. Versions seen on one channel strictly
// increase. The channel is closed once ctx is done (a snapshot already
// buffered may still be received before the close).
type Source interface {
	Current() *Snapshot
	Watch(ctx context.Context) <-chan *Snapshot
}

// MemberSet answers "is this node a member right now". *Snapshot implements
// it; the TLS configs take a func returning one so that every handshake sees
// the latest snapshot.
type MemberSet interface {
	Contains(id NodeID) bool
}

// LatestMembers adapts a Source for ServerTLSConfig / ClientTLSConfig: each
// call returns the source's current snapshot.
func LatestMembers(src Source) func() MemberSet {
	return func() MemberSet { return src.Current() }
}

// StaticSource is a Source whose snapshots are pushed in by the program
// (from a config file, a test, or a registry client). It is safe for
// concurrent use.
type StaticSource struct {
	mu       sync.Mutex
	cur      *Snapshot
	watchers map[*watcher]struct{}
}

type watcher struct {
	ch chan *Snapshot
}

var _ Source = (*StaticSource)(nil)

// NewStaticSource starts a source at s, which must be valid. s is copied.
func NewStaticSource(s *Snapshot) (*StaticSource, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return &StaticSource{cur: s.clone(), watchers: make(map[*watcher]struct{})}, nil
}

// Current returns the latest accepted snapshot. Do not modify it.
func (s *StaticSource) Current() *Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

// Update installs next (copied) and notifies watchers. It refuses, keeping
// the current snapshot, a nil or invalid snapshot and one whose version is not
// greater than the current version; such errors wrap ErrInvalidSnapshot.
func (s *StaticSource) Update(next *Snapshot) error {
	if err := next.Validate(); err != nil {
		return err
	}
	c := next.clone()
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.Version <= s.cur.Version {
		return fmt.Errorf("%w: version %d is not newer than current version %d", ErrInvalidSnapshot, c.Version, s.cur.Version)
	}
	s.cur = c
	for w := range s.watchers {
		w.offer(c)
	}
	return nil
}

// Watch implements Source.
func (s *StaticSource) Watch(ctx context.Context) <-chan *Snapshot {
	w := &watcher{ch: make(chan *Snapshot, 1)}
	s.mu.Lock()
	w.ch <- s.cur // the buffer is empty: cannot block
	s.watchers[w] = struct{}{}
	s.mu.Unlock()
	context.AfterFunc(ctx, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.watchers, w)
		close(w.ch)
	})
	return w.ch
}

// offer replaces any unread snapshot with snap. The caller holds the source's
// lock, so the source is the only sender and the send below cannot block.
func (w *watcher) offer(snap *Snapshot) {
	select {
	case <-w.ch:
	default:
	}
	w.ch <- snap
}
