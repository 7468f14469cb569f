package quicremote

import (
	"sync"

	"github.com/abcast/abcast/membership"
)

// EndpointConnected is published on the actor system's EventStream when a
// connection to a member comes up (and, at Start, for every member already
// connected). Address is the member's actor address.
type EndpointConnected struct {
	Peer    membership.NodeID
	Address string
	ConnID  uint64
}

// EndpointTerminated is published on the actor system's EventStream when
// the connection reported by an EndpointConnected goes down (the peer
// stopped, crashed, became unreachable, left the member set, or the
// transport replaced the connection with a newer one, which gets its own
// EndpointConnected). Err says why. Watches of the member's actors end
// with AddressTerminated at the same time.
type EndpointTerminated struct {
	Peer    membership.NodeID
	Address string
	ConnID  uint64
	Err     error
}

// maxEndpointEvents bounds the events waiting to be published. They only
// wait while an EventStream subscriber is slow; past the bound the oldest
// is dropped and counted (Stats.EndpointEventsDropped).
const maxEndpointEvents = 4096

// endpointEvents publishes endpoint events, in order, from a goroutine of
// its own: EventStream subscribers run on the publisher's goroutine, and
// the transport's event callback must never wait for them.
type endpointEvents struct {
	mu      sync.Mutex
	up      map[membership.NodeID]uint64 // connection reported up, per peer
	queue   []any
	dropped uint64
	wake    chan struct{}
}

// noteUp queues an EndpointConnected unless conn was reported already.
// Called with r.mu held, so that Start's snapshot and later events are
// queued in order.
func (e *endpointEvents) noteUp(peer membership.NodeID, conn uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.up == nil {
		e.up = make(map[membership.NodeID]uint64)
	}
	if e.up[peer] >= conn {
		return
	}
	e.up[peer] = conn
	e.pushLocked(&EndpointConnected{Peer: peer, Address: peer.String(), ConnID: conn})
}

// noteDown queues an EndpointTerminated if conn is the one reported up.
func (e *endpointEvents) noteDown(peer membership.NodeID, conn uint64, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.up[peer] != conn || conn == 0 {
		return
	}
	delete(e.up, peer)
	e.pushLocked(&EndpointTerminated{Peer: peer, Address: peer.String(), ConnID: conn, Err: err})
}

func (e *endpointEvents) pushLocked(ev any) {
	if len(e.queue) >= maxEndpointEvents {
		e.queue[0] = nil
		e.queue = e.queue[1:]
		e.dropped++
	}
	e.queue = append(e.queue, ev)
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

func (e *endpointEvents) droppedCount() uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.dropped
}

// publishEndpoints is the publishing goroutine; it ends with the remote.
func (r *Remote) publishEndpoints() {
	defer r.wg.Done()
	e := &r.endpoints
	for {
		select {
		case <-e.wake:
		case <-r.ctx.Done():
			return
		}
		for {
			e.mu.Lock()
			if len(e.queue) == 0 {
				e.queue = nil
				e.mu.Unlock()
				break
			}
			ev := e.queue[0]
			e.queue[0] = nil
			e.queue = e.queue[1:]
			e.mu.Unlock()
			r.system.EventStream.Publish(ev)
		}
	}
}
