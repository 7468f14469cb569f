package transport

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/abcast/abcast/membership"
)

// MemNetwork connects MemTransports in memory. Two transports are linked
// when both are open, each one's latest snapshot contains the other, and
// the pair is not partitioned with Disconnect. Every time a link comes up
// each side gets a new, larger connection id and a PeerUp; when it goes
// down each side gets PeerDown, and in-flight requests over it fail with
// ErrNotConnected while their handlers' contexts end — the same contract as
// the QUIC Transport, minus the wire.
type MemNetwork struct {
	mu    sync.Mutex
	nodes map[membership.NodeID]*MemTransport
	cut   map[[2]membership.NodeID]bool
	evMu  sync.Mutex // serialises event delivery, as in Transport
}

// NewMemNetwork returns an empty network.
func NewMemNetwork() *MemNetwork {
	return &MemNetwork{
		nodes: make(map[membership.NodeID]*MemTransport),
		cut:   make(map[[2]membership.NodeID]bool),
	}
}

func pairKey(a, b membership.NodeID) [2]membership.NodeID {
	if b.Less(a) {
		a, b = b, a
	}
	return [2]membership.NodeID{a, b}
}

// Disconnect partitions a and b: their link goes down until Connect.
func (n *MemNetwork) Disconnect(a, b membership.NodeID) {
	n.mu.Lock()
	n.cut[pairKey(a, b)] = true
	n.reconcileLocked()
}

// Connect heals a partition made by Disconnect.
func (n *MemNetwork) Connect(a, b membership.NodeID) {
	n.mu.Lock()
	delete(n.cut, pairKey(a, b))
	n.reconcileLocked()
}

// memLink is one side's view of a live link.
type memLink struct {
	connID uint64
	ctx    context.Context
	cancel context.CancelFunc
	// credits bounds the requests the peer has in flight towards us, like
	// MaxIncomingStreams on a QUIC connection.
	credits chan struct{}
}

// MemTransport is the in-memory RPC implementation.
type MemTransport struct {
	net    *MemNetwork
	id     membership.NodeID
	cfg    Config
	events EventFunc
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	hmu      sync.RWMutex
	handlers map[string]*handlerEntry

	// guarded by net.mu
	closed     bool
	snap       *membership.Snapshot
	links      map[membership.NodeID]*memLink
	nextConnID uint64
	counters   counterTable
}

// NewTransport adds a node to the network. Like New, it follows source.
func (n *MemNetwork) NewTransport(cfg Config, id membership.NodeID, source membership.Source, events EventFunc) (*MemTransport, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if events == nil {
		events = func(PeerEvent) {}
	}
	m := &MemTransport{
		net: n, id: id, cfg: cfg, events: events,
		handlers: make(map[string]*handlerEntry),
		links:    make(map[membership.NodeID]*memLink),
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	n.mu.Lock()
	if _, dup := n.nodes[id]; dup {
		n.mu.Unlock()
		m.cancel()
		return nil, fmt.Errorf("quicremote: node %s already on the memory network", id.Short())
	}
	n.nodes[id] = m
	m.snap = source.Current()
	n.reconcileLocked()
	ch := source.Watch(m.ctx)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		for s := range ch {
			n.mu.Lock()
			if s.Version > m.snap.Version {
				m.snap = s
			}
			n.reconcileLocked()
		}
	}()
	return m, nil
}

// reconcileLocked brings every link in line with the rules, then releases
// n.mu and delivers the resulting events in order.
func (n *MemNetwork) reconcileLocked() {
	var evs []func()
	for _, a := range n.nodes {
		for _, b := range n.nodes {
			if !a.id.Less(b.id) {
				continue
			}
			want := !a.closed && !b.closed && a.snap.Contains(b.id) && b.snap.Contains(a.id) && !n.cut[pairKey(a.id, b.id)]
			la, lb := a.links[b.id], b.links[a.id]
			up := la != nil
			if want == up {
				continue
			}
			if !want {
				la.cancel()
				lb.cancel()
				delete(a.links, b.id)
				delete(b.links, a.id)
				evs = append(evs, a.emitter(PeerDown{b.id, la.connID, fmt.Errorf("link to %s down", b.id.Short())}),
					b.emitter(PeerDown{a.id, lb.connID, fmt.Errorf("link to %s down", a.id.Short())}))
				continue
			}
			ctx, cancel := newLinkContext()
			for _, side := range [2][2]*MemTransport{{a, b}, {b, a}} {
				self, peer := side[0], side[1]
				self.nextConnID++
				l := &memLink{connID: self.nextConnID, ctx: ctx, cancel: cancel, credits: make(chan struct{}, self.cfg.MaxIncomingStreams)}
				self.links[peer.id] = l
				evs = append(evs, self.emitter(PeerUp{peer.id, l.connID}))
			}
		}
	}
	n.evMu.Lock()
	n.mu.Unlock()
	for _, e := range evs {
		e()
	}
	n.evMu.Unlock()
}

// newLinkContext makes the context shared by both sides of a link; it is
// cancelled when the link goes down.
func newLinkContext() (context.Context, context.CancelFunc) {
	return context.WithCancel(context.Background())
}

func (m *MemTransport) emitter(ev PeerEvent) func() { return func() { m.events(ev) } }

// ID is this node's id.
func (m *MemTransport) ID() membership.NodeID { return m.id }

// Handle implements RPC.
func (m *MemTransport) Handle(protocol string, h Handler, limit int) error {
	return registerHandler(&m.hmu, m.handlers, protocol, h, nil, limit, m.cfg.DefaultProtocolLimit)
}

// HandleStream implements RPC.
func (m *MemTransport) HandleStream(protocol string, h StreamHandler, limit int) error {
	return registerHandler(&m.hmu, m.handlers, protocol, nil, h, limit, m.cfg.DefaultProtocolLimit)
}

// ConnID implements RPC.
func (m *MemTransport) ConnID(peer membership.NodeID) (uint64, bool) {
	m.net.mu.Lock()
	defer m.net.mu.Unlock()
	if l := m.links[peer]; l != nil {
		return l.connID, true
	}
	return 0, false
}

// Peers implements RPC.
func (m *MemTransport) Peers() []membership.NodeID {
	m.net.mu.Lock()
	ids := make([]membership.NodeID, 0, len(m.links))
	for id := range m.links {
		ids = append(ids, id)
	}
	m.net.mu.Unlock()
	slices.SortFunc(ids, membership.NodeID.Compare)
	return ids
}

// Stats returns the counters kept about peer.
func (m *MemTransport) Stats(peer membership.NodeID) PeerStats { return m.counters.stats(peer) }

func (m *MemTransport) counter(peer membership.NodeID) *peerCounters { return m.counters.get(peer) }

// Close implements RPC.
func (m *MemTransport) Close() error {
	m.net.mu.Lock()
	if m.closed {
		m.net.mu.Unlock()
		return nil
	}
	m.closed = true
	m.cancel()
	m.net.reconcileLocked()
	m.wg.Wait()
	m.net.mu.Lock()
	delete(m.net.nodes, m.id)
	m.net.mu.Unlock()
	return nil
}

// Call implements RPC.
func (m *MemTransport) Call(ctx context.Context, peer membership.NodeID, protocol string, req []byte, opts ...CallOption) ([]byte, error) {
	return m.roundTrip(ctx, peer, protocol, kindCall, req, responseLimit(m.cfg, opts))
}

// Push implements RPC.
func (m *MemTransport) Push(ctx context.Context, peer membership.NodeID, protocol string, msg []byte) error {
	_, err := m.roundTrip(ctx, peer, protocol, kindPush, msg, 0)
	return err
}

var (
	errMemLinkDown       = errors.New("memory link down")
	errMemRespOverBudget = errors.New("the response does not fit the peer's memory budget for us (the handler ran)")
)

// memAdmission is what a request or stream holds on the remote side once
// admitted: a stream credit (given back by release) and a slot of the
// protocol's per-peer limit (given back by he.release).
type memAdmission struct {
	link, rlink *memLink
	remote      *MemTransport
	he          *handlerEntry
	rctr        *peerCounters
	release     func()
}

// admit checks the link to peer, takes one of the remote's stream credits
// (waiting until ctx ends) and a slot of protocol's limit, for a request
// handler or, with stream, a stream handler. Errors are *Error.
func (m *MemTransport) admit(ctx context.Context, peer membership.NodeID, protocol string, stream bool) (*memAdmission, error) {
	fail := func(k error, cause error, detail string) (*memAdmission, error) {
		return nil, newErr(peer, protocol, k, cause, detail)
	}
	m.net.mu.Lock()
	closed, known, link := m.closed, m.snap.Contains(peer), m.links[peer]
	var remote *MemTransport
	var rlink *memLink
	if link != nil {
		remote = m.net.nodes[peer]
		rlink = remote.links[m.id]
	}
	m.net.mu.Unlock()
	switch {
	case closed:
		return fail(ErrClosed, nil, "")
	case !known:
		return fail(ErrUnknownPeer, nil, "")
	case link == nil:
		return fail(ErrNotConnected, nil, "")
	}
	if err := ctx.Err(); err != nil {
		return fail(ErrCancelled, err, "")
	}
	// A stream credit on the remote side, held until its handler returns.
	select {
	case rlink.credits <- struct{}{}:
	case <-ctx.Done():
		return fail(ErrCancelled, ctx.Err(), "waiting for a stream credit")
	case <-link.ctx.Done():
		return fail(ErrNotConnected, errMemLinkDown, "")
	}
	release := func() { <-rlink.credits }
	rctr := remote.counter(m.id)
	remote.hmu.RLock()
	he := remote.handlers[protocol]
	remote.hmu.RUnlock()
	if he == nil || (stream && he.sh == nil) || (!stream && he.h == nil) {
		release()
		rctr.refused.Add(1)
		return fail(ErrRefused, errors.New("no handler for protocol"), "")
	}
	if !he.acquire(m.id) {
		release()
		rctr.refused.Add(1)
		return fail(ErrRefused, errors.New("protocol at its concurrency limit"), "")
	}
	return &memAdmission{link: link, rlink: rlink, remote: remote, he: he, rctr: rctr, release: release}, nil
}

// roundTrip runs one request; maxResp is the largest response payload it
// accepts (0 for a Push). A response is "written" the moment the handler
// returns it, so the remote charges it to our budget only for that moment:
// it is refused when the budget is full then, as on QUIC.
func (m *MemTransport) roundTrip(ctx context.Context, peer membership.NodeID, protocol string, kind byte, req []byte, maxResp int) ([]byte, error) {
	fail := func(k error, cause error, detail string) ([]byte, error) {
		return nil, newErr(peer, protocol, k, cause, detail)
	}
	if err := validProtocol(protocol); err != nil {
		return fail(ErrRefused, err, "")
	}
	if len(req) > m.cfg.MaxFrameSize {
		return fail(ErrTooLarge, nil, fmt.Sprintf("request of %d bytes exceeds %d", len(req), m.cfg.MaxFrameSize))
	}
	a, err := m.admit(ctx, peer, protocol, false)
	if err != nil {
		return nil, err
	}
	link, rlink, remote, he, rctr, release := a.link, a.rlink, a.remote, a.he, a.rctr, a.release
	if !rctr.hold(len(req), remote.cfg.MaxBytesPerPeer) {
		he.release(m.id)
		release()
		rctr.refused.Add(1)
		return fail(ErrRefused, errors.New("the peer's memory budget for us is exhausted"), "")
	}

	// The handler's context ends with the caller's, the link, or the
	// remote's shutdown; hcancel is only called here, so hctx.Done below
	// never fires just because the handler finished.
	hctx, hcancel := context.WithCancel(WithConnID(link.ctx, rlink.connID))
	defer hcancel()
	stopCaller := context.AfterFunc(ctx, hcancel)
	defer stopCaller()
	stopRemote := context.AfterFunc(remote.ctx, hcancel)
	defer stopRemote()
	type result struct {
		resp []byte
		err  error
	}
	done := make(chan result, 1)
	reqCopy := slices.Clone(req)
	remote.wg.Add(1)
	go func() {
		defer remote.wg.Done()
		defer release()
		defer he.release(m.id)
		resp, err := runMemHandler(hctx, he.h, m.id, reqCopy)
		rctr.unhold(len(reqCopy))
		if kind == kindPush {
			resp = nil
		}
		if err == nil && len(resp) <= remote.cfg.MaxFrameSize {
			if !rctr.hold(len(resp), remote.cfg.MaxBytesPerPeer) {
				rctr.refused.Add(1)
				resp, err = nil, errMemRespOverBudget
			} else {
				rctr.unhold(len(resp))
			}
		}
		done <- result{resp, err}
	}()
	select {
	case r := <-done:
		if ctx.Err() != nil {
			return fail(ErrCancelled, ctx.Err(), "")
		}
		if link.ctx.Err() != nil || remote.ctx.Err() != nil {
			return fail(ErrNotConnected, errMemLinkDown, "")
		}
		if r.err == errMemRespOverBudget {
			return fail(ErrRefused, r.err, "")
		}
		if r.err != nil {
			// Cut by the peer's limit when it sends, by ours when we read.
			msg := r.err.Error()
			msg = msg[:min(len(msg), remote.cfg.MaxErrorText, m.cfg.MaxErrorText)]
			return fail(ErrRemote, nil, msg)
		}
		ctrs := m.counter(peer)
		switch n := len(r.resp); {
		case n > m.cfg.MaxFrameSize || n > remote.cfg.MaxFrameSize:
			ctrs.oversized.Add(1)
			return fail(ErrTooLarge, nil, "response")
		case n > maxResp:
			ctrs.oversized.Add(1)
			return fail(ErrTooLarge, nil, fmt.Sprintf("response of %d bytes exceeds the call's limit of %d", n, maxResp))
		case !ctrs.hold(n, m.cfg.MaxBytesPerPeer):
			ctrs.refused.Add(1)
			return fail(ErrRefused, nil, fmt.Sprintf("response of %d bytes does not fit our memory budget for the peer", n))
		}
		defer ctrs.unhold(len(r.resp))
		if kind == kindPush {
			return nil, nil
		}
		return slices.Clone(r.resp), nil
	case <-ctx.Done():
		return fail(ErrCancelled, ctx.Err(), "")
	case <-hctx.Done():
		// link down or remote closing (the caller's ctx is handled above,
		// though both may race: prefer the caller's view).
		if ctx.Err() != nil {
			return fail(ErrCancelled, ctx.Err(), "")
		}
		return fail(ErrNotConnected, errMemLinkDown, "")
	}
}

func runMemHandler(ctx context.Context, h Handler, peer membership.NodeID, req []byte) (resp []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("handler panicked: %v", r)
		}
	}()
	return h(ctx, peer, req)
}

// Reserve implements RPC.
func (m *MemTransport) Reserve(peer membership.NodeID, n int) bool {
	return m.counter(peer).hold(n, m.cfg.MaxBytesPerPeer)
}

// Release implements RPC.
func (m *MemTransport) Release(peer membership.NodeID, n int) { m.counter(peer).unhold(n) }
