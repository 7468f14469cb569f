package membership

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
)

func TestNewStaticSourceRejectsInvalid(t *testing.T) {
	if _, err := NewStaticSource(nil); !errors.Is(err, ErrInvalidSnapshot) {
		t.Fatalf("nil: %v", err)
	}
	bad := &Snapshot{Version: 1, Members: map[NodeID]Member{{1}: testMember(t, 1)}}
	if _, err := NewStaticSource(bad); !errors.Is(err, ErrInvalidSnapshot) {
		t.Fatalf("invalid: %v", err)
	}
}

func TestUpdateRejectsStaleOrInvalidAndKeepsLastGood(t *testing.T) {
	src, err := NewStaticSource(mustSnapshot(t, 5, testMember(t, 1)))
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Update(mustSnapshot(t, 4, testMember(t, 2))); !errors.Is(err, ErrInvalidSnapshot) {
		t.Fatalf("backwards version: %v", err)
	}
	if err := src.Update(mustSnapshot(t, 5, testMember(t, 2))); !errors.Is(err, ErrInvalidSnapshot) {
		t.Fatalf("repeated version: %v", err)
	}
	bad := mustSnapshot(t, 6, testMember(t, 2))
	bad.Members[testMember(t, 3).ID] = testMember(t, 2) // key does not match entry
	if err := src.Update(bad); !errors.Is(err, ErrInvalidSnapshot) {
		t.Fatalf("invalid snapshot: %v", err)
	}
	if err := src.Update(nil); !errors.Is(err, ErrInvalidSnapshot) {
		t.Fatalf("nil snapshot: %v", err)
	}
	cur := src.Current()
	if cur.Version != 5 || !cur.Contains(testMember(t, 1).ID) || cur.Contains(testMember(t, 2).ID) {
		t.Fatalf("last good snapshot not kept: %+v", cur)
	}
	if err := src.Update(mustSnapshot(t, 9, testMember(t, 2))); err != nil {
		t.Fatalf("newer version: %v", err)
	}
	if v := src.Current().Version; v != 9 {
		t.Fatalf("version = %d, want 9", v)
	}
}

func TestUpdateCopiesTheSnapshot(t *testing.T) {
	src, _ := NewStaticSource(mustSnapshot(t, 1))
	next := mustSnapshot(t, 2, testMember(t, 1))
	if err := src.Update(next); err != nil {
		t.Fatal(err)
	}
	delete(next.Members, testMember(t, 1).ID)
	if !src.Current().Contains(testMember(t, 1).ID) {
		t.Fatal("caller's change to an accepted snapshot leaked into the source")
	}
}

func TestWatchYieldsCurrentThenLatestWinsAndClosesOnCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src, _ := NewStaticSource(mustSnapshot(t, 1))
		ctx, cancel := context.WithCancel(t.Context())
		ch := src.Watch(ctx)

		if s := <-ch; s.Version != 1 {
			t.Fatalf("first value version %d, want the current 1", s.Version)
		}
		// A slow reader: three updates arrive before it reads again.
		for v := uint64(2); v <= 4; v++ {
			if err := src.Update(mustSnapshot(t, v, testMember(t, byte(v)))); err != nil {
				t.Fatal(err)
			}
		}
		if s := <-ch; s.Version != 4 {
			t.Fatalf("after a burst got version %d, want only the latest 4", s.Version)
		}
		select {
		case s := <-ch:
			t.Fatalf("intermediate version %d was not skipped", s.Version)
		default:
		}
		// A rejected update does not reach watchers.
		_ = src.Update(mustSnapshot(t, 3))
		select {
		case s := <-ch:
			t.Fatalf("rejected version %d delivered", s.Version)
		default:
		}

		cancel()
		synctest.Wait()
		select {
		case s, ok := <-ch:
			if ok {
				t.Fatalf("got version %d after cancel, want closed channel", s.Version)
			}
		default:
			t.Fatal("channel not closed after cancel")
		}
		// Updates after the watcher left neither block nor panic.
		if err := src.Update(mustSnapshot(t, 10)); err != nil {
			t.Fatal(err)
		}
		src.mu.Lock()
		n := len(src.watchers)
		src.mu.Unlock()
		if n != 0 {
			t.Fatalf("%d watchers still registered after cancel", n)
		}
	})
}

func TestWatchWithCancelledContextYieldsCurrentThenCloses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src, _ := NewStaticSource(mustSnapshot(t, 3))
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		ch := src.Watch(ctx)
		synctest.Wait()
		var got []uint64
		for s := range ch {
			got = append(got, s.Version)
		}
		if len(got) > 1 || (len(got) == 1 && got[0] != 3) {
			t.Fatalf("got versions %v, want at most the current one", got)
		}
	})
}

// Property: with concurrent updates and readers, every watcher sees strictly
// increasing versions and ends on the final one.
func TestWatchersSeeIncreasingVersionsUnderConcurrency(t *testing.T) {
	const last = 200
	src, _ := NewStaticSource(mustSnapshot(t, 0))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var wg sync.WaitGroup
	for range 4 {
		ch := src.Watch(ctx)
		wg.Go(func() {
			prev := int64(-1)
			for s := range ch {
				if int64(s.Version) <= prev {
					t.Errorf("version %d after %d", s.Version, prev)
					return
				}
				prev = int64(s.Version)
				if s.Version == last {
					return
				}
			}
			t.Errorf("channel closed before the last version")
		})
	}
	for v := uint64(1); v <= last; v++ {
		if err := src.Update(mustSnapshot(t, v)); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
}
