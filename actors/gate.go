package actors

import (
	"context"
	"sync"

	"github.com/abcast/abcast/membership"
)

// gatedSource is the registry as the node's transport sees it: empty until
// the node starts, then the real one. The transport is created (and the
// remote installed on it) when the node is created, but it neither dials
// nor admits anyone until Start, so everything declared in between —
// channels, the user's actors — is in place before the first peer
// connects.
type gatedSource struct {
	real  membership.Source
	empty *membership.Snapshot
	once  sync.Once
	open  chan struct{}
}

func newGatedSource(real membership.Source) *gatedSource {
	empty, _ := membership.NewSnapshot(0) // valid: no members
	return &gatedSource{real: real, empty: empty, open: make(chan struct{})}
}

func (g *gatedSource) start() { g.once.Do(func() { close(g.open) }) }

func (g *gatedSource) isOpen() bool {
	select {
	case <-g.open:
		return true
	default:
		return false
	}
}

func (g *gatedSource) Current() *membership.Snapshot {
	if g.isOpen() {
		return g.real.Current()
	}
	return g.empty
}

// Watch yields the empty snapshot, then, once open, the real source's
// snapshots, keeping at most one pending (the newest) as Source requires.
func (g *gatedSource) Watch(ctx context.Context) <-chan *membership.Snapshot {
	out := make(chan *membership.Snapshot, 1)
	if g.isOpen() {
		return g.real.Watch(ctx)
	}
	out <- g.empty
	go func() {
		defer close(out)
		select {
		case <-g.open:
		case <-ctx.Done():
			return
		}
		for snap := range g.real.Watch(ctx) {
			select { // replace a pending snapshot: only this goroutine sends
			case <-out:
			default:
			}
			out <- snap
		}
	}()
	return out
}
