// Package broadcasttest simulates whole subnets of broadcast cores on a
// deterministic in-memory network: messages are lost, duplicated, delayed
// and reordered, links are cut and healed, connections are replaced and
// nodes restart, and some nodes may be Byzantine. Everything is driven by
// one seed, in virtual time, on one goroutine, so a failing seed replays
// exactly. After the faults stop and every link heals, Run checks the
// guarantees G1 (delivery), G2 (integrity, no duplicates) and G4 (bounded
// tables), and calls CheckInvariants after every step.
//
// Other packages' tests can use it too: it imports only the standard
// library and package broadcast.
package broadcasttest

import (
	"container/heap"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/abcast/abcast/broadcast"
)

// Config describes one simulation.
type Config struct {
	Seed uint64
	// Nodes is the subnet size; the last Byzantine of them misbehave.
	Nodes     int
	Byzantine int
	// Loss and Duplicate are per-message probabilities.
	Loss, Duplicate float64
	// MinDelay and MaxDelay bound one-way message delay; messages overtake
	// each other when the range is wide.
	MinDelay, MaxDelay time.Duration
	// Bandwidth is each link's capacity per direction, in bytes per
	// second: a message occupies its link for its size over the bandwidth,
	// after the messages sent before it. Zero means unlimited (sizes cost
	// no time).
	Bandwidth int
	// Faults enables link cuts, connection flaps and node restarts.
	Faults bool
	// Ops is the number of workload operations (publish, abort, faults).
	Ops int
	// OpGap is the mean virtual time between operations.
	OpGap time.Duration
	// Settle bounds the virtual time allowed for delivery after healing.
	Settle time.Duration
	// SlowConsumer makes consumers take up to this long per delivery.
	SlowConsumer time.Duration
	Sender       broadcast.SenderConfig
	Receiver     broadcast.ReceiverConfig
	// Check calls CheckInvariants after every event (on by default in
	// DefaultConfig; expensive for large tables).
	Check bool
	// MaxEvents bounds the events a run may process and hold pending at
	// once; a run beyond it fails with its seed instead of growing until
	// the test times out (a timer storm, a livelock). Zero means
	// DefaultMaxEvents.
	MaxEvents int
}

// DefaultMaxEvents is far above what a run needs: the sweep's largest runs
// process a few tens of thousands of events.
const DefaultMaxEvents = 2_000_000

// DefaultConfig returns a small, fault-heavy simulation for seed.
func DefaultConfig(seed uint64) Config {
	sc := broadcast.DefaultSenderConfig()
	sc.MaxSlots = 64
	sc.MaxInFlightPerPeer = 4
	sc.UpdateTimeout, sc.UpdateTimeoutPerMiB, sc.UpdateTimeoutMax = 2*time.Second, 20*time.Second, 16*time.Second
	// Some latency-sensitive artifacts (up to 5,000 bytes) exceed it and
	// are advertised instead.
	sc.MaxPushSize = 4096
	// Advertised artifacts (2,000 to 8,000 bytes) are fetched in several
	// chunks.
	sc.ChunkSize = broadcast.MinChunkSize
	rc := broadcast.DefaultReceiverConfig()
	rc.FetchTimeoutMin, rc.FetchTimeoutMax = time.Second, 10*time.Second
	rc.FetchBackoffMin, rc.FetchBackoffMax = 50*time.Millisecond, 5*time.Second
	rc.MaxPushSize = 4096
	rc.SlotLimit = 64
	rc.MaxActiveFetches = 8
	rc.MaxFetchesPerPeer = 3
	rc.DeliveryCredits = 12
	return Config{
		Seed: seed, Nodes: 4, Loss: 0.05, Duplicate: 0.02,
		MinDelay: time.Millisecond, MaxDelay: 60 * time.Millisecond,
		Faults: true, Ops: 120, OpGap: 40 * time.Millisecond, Settle: 10 * time.Minute,
		SlowConsumer: 20 * time.Millisecond, Sender: sc, Receiver: rc, Check: true,
	}
}

// Result summarises a run.
type Result struct {
	Published, Aborted, Live  int
	Deliveries, Withdrawals   int
	Restarts, Cuts, Flaps     int
	Messages, Lost            int
	Duplicates, Reordered     int
	ByzantineUpdates          int
	RefusedStale, RefusedOver int
	RefusedInvalid, Mismatch  int
	BadResponses              int
	SettledAfter              time.Duration
	VirtualTime               time.Duration
	Events                    int
	// PeakPending is the most events that were waiting at once, and
	// PeakTimers the most timer events one node had waiting (superseded
	// ones included: the heap does not remove them).
	PeakPending, PeakTimers int
}

const (
	detectDelay    = 3 * time.Second // keep-alive / idle timeout
	reconnectDelay = 500 * time.Millisecond
	restartDown    = 2 * time.Second
)

// Sim is one simulation. Use New and Run.
type Sim struct {
	cfg    Config
	rng    *rand.Rand
	now    time.Time
	start  time.Time
	events eventHeap
	seq    uint64
	nodes  []*node
	links  [][]*link // links[a][b] for a < b
	reg    map[broadcast.ArtifactID]*record
	order  map[[2]int]*linkOrder
	pubSeq int
	res    Result
	err    error
	ending bool
}

type record struct {
	owner     int
	payload   []byte
	aborted   bool
	abortedAt time.Time
}

type node struct {
	idx      int
	id       broadcast.PeerID
	byz      bool
	alive    bool
	inc      int
	s        *broadcast.Sender
	r        *broadcast.Receiver
	connSeq  map[int]broadcast.ConnID
	sends    map[broadcast.Token]*sendRec
	attempts map[broadcast.Token]*attemptRec
	fetching map[broadcast.ArtifactID]bool
	timerAt  time.Time // the node's one timer (both cores), zero if unset
	timerGen uint64
	timers   int // timer events pending, superseded ones included
	// fetchedBytes counts the chunk bytes each id's fetch received in this
	// incarnation; lateBytes those of requests made after the artifact was
	// aborted (a request that left before the abort may be answered in
	// full: that transfer raced the abort, it did not follow it).
	fetchedBytes, lateBytes map[broadcast.ArtifactID]int
	delivered               map[broadcast.ArtifactID]bool
	times                   map[broadcast.ArtifactID]int // deliveries in this incarnation
	owned                   []broadcast.ArtifactID       // live artifacts it published, in order
	byzSent                 []sentUpdate                 // Byzantine: what it sent, to replay
	byzCommit               broadcast.CommitID
	dirty                   bool // a core changed since its invariants were checked
}

type sentUpdate struct {
	to int
	u  broadcast.SlotUpdate
}

type conn struct {
	a, b     int
	idA, idB broadcast.ConnID
	alive    bool
}

func (c *conn) localID(n int) broadcast.ConnID {
	if n == c.a {
		return c.idA
	}
	return c.idB
}

type link struct {
	cut  bool
	conn *conn
}

type sendRec struct {
	to        int
	c         *conn
	cancelled bool
}

// attemptRec is one fetch attempt the node's receiver asked for; it is
// reported once, unless CancelFetch came first.
type attemptRec struct {
	id        broadcast.ArtifactID
	peer      int
	done      bool
	cancelled bool
	abort     func() // reports the attempt failed: its connection closed
}

// New builds a simulation; it does not run yet.
func New(cfg Config) (*Sim, error) {
	if cfg.Nodes < 2 || cfg.Byzantine < 0 || cfg.Byzantine >= cfg.Nodes {
		return nil, fmt.Errorf("broadcasttest: need at least 2 nodes and one honest one, got %d with %d Byzantine", cfg.Nodes, cfg.Byzantine)
	}
	if cfg.MaxDelay < cfg.MinDelay {
		return nil, fmt.Errorf("broadcasttest: MaxDelay %v below MinDelay %v", cfg.MaxDelay, cfg.MinDelay)
	}
	if cfg.OpGap <= 0 {
		cfg.OpGap = 40 * time.Millisecond
	}
	if cfg.Settle <= 0 {
		cfg.Settle = 10 * time.Minute
	}
	if cfg.MaxEvents <= 0 {
		cfg.MaxEvents = DefaultMaxEvents
	}
	cfg.Receiver.Verify = verifyPayload
	s := &Sim{
		cfg:   cfg,
		rng:   rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		now:   time.Unix(1_000_000, 0),
		reg:   make(map[broadcast.ArtifactID]*record),
		order: make(map[[2]int]*linkOrder),
		links: make([][]*link, cfg.Nodes),
	}
	s.start = s.now
	for i := range cfg.Nodes {
		s.links[i] = make([]*link, cfg.Nodes)
		for j := i + 1; j < cfg.Nodes; j++ {
			s.links[i][j] = &link{}
		}
	}
	for i := range cfg.Nodes {
		n := &node{idx: i, id: broadcast.PeerID(fmt.Sprintf("node%02d", i)), byz: i >= cfg.Nodes-cfg.Byzantine}
		s.nodes = append(s.nodes, n)
	}
	for _, n := range s.nodes {
		if err := s.boot(n); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Run executes the workload, heals everything, waits for delivery and
// checks the guarantees. The error names the seed.
func (s *Sim) Run() (Result, error) {
	for a := range s.nodes {
		for b := a + 1; b < len(s.nodes); b++ {
			s.connect(a, b)
		}
	}
	at := s.now
	for range s.cfg.Ops {
		at = at.Add(time.Duration(s.rng.Int64N(int64(2*s.cfg.OpGap) + 1)))
		s.schedule(at, s.randomOp)
	}
	for _, n := range s.nodes {
		if n.byz {
			for t := s.now; t.Before(at); t = t.Add(s.cfg.OpGap * 3) {
				s.schedule(t, func() { s.byzantineOp(n) })
			}
		}
	}
	s.runUntil(at)
	s.heal()
	deadline := s.now.Add(s.cfg.Settle)
	settleStart := s.now
	for s.err == nil && s.now.Before(deadline) {
		s.runUntil(s.now.Add(time.Second))
		if s.err == nil && s.converged() == nil {
			break
		}
	}
	if s.err == nil {
		if err := s.converged(); err != nil {
			s.fail("no convergence %v after healing: %v", s.cfg.Settle, err)
		}
	}
	if s.err == nil {
		s.res.SettledAfter = s.now.Sub(settleStart)
		// Keep running a while: nothing may be delivered twice or
		// withdrawn wrongly once converged.
		s.runUntil(s.now.Add(30 * time.Second))
		if s.err == nil {
			if err := s.converged(); err != nil {
				s.fail("diverged after converging: %v", err)
			}
		}
	}
	if s.err == nil {
		s.checkBounds()
	}
	s.res.VirtualTime = s.now.Sub(s.start)
	s.collectStats()
	for id, r := range s.reg {
		_ = id
		s.res.Published++
		if r.aborted {
			s.res.Aborted++
		}
	}
	s.res.Live = s.res.Published - s.res.Aborted
	if s.err != nil {
		return s.res, fmt.Errorf("seed %d (nodes %d, byzantine %d): %w", s.cfg.Seed, s.cfg.Nodes, s.cfg.Byzantine, s.err)
	}
	return s.res, nil
}

func (s *Sim) fail(format string, args ...any) {
	if s.err == nil {
		s.err = fmt.Errorf("at %v: %s", s.now.Sub(s.start), fmt.Sprintf(format, args...))
	}
}

// ---- event loop

type event struct {
	at  time.Time
	seq uint64
	fn  func()
}

type eventHeap []event

func (h eventHeap) Len() int { return len(h) }
func (h eventHeap) Less(i, j int) bool {
	if !h[i].at.Equal(h[j].at) {
		return h[i].at.Before(h[j].at)
	}
	return h[i].seq < h[j].seq
}
func (h eventHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *eventHeap) Push(x any)   { *h = append(*h, x.(event)) }
func (h *eventHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

func (s *Sim) schedule(at time.Time, fn func()) {
	s.seq++
	heap.Push(&s.events, event{at: at, seq: s.seq, fn: fn})
}

func (s *Sim) after(d time.Duration, fn func()) { s.schedule(s.now.Add(d), fn) }

func (s *Sim) runUntil(t time.Time) {
	for s.err == nil && s.events.Len() > 0 && !s.events[0].at.After(t) {
		ev := heap.Pop(&s.events).(event)
		s.now = ev.at
		ev.fn()
		s.res.Events++
		s.res.PeakPending = max(s.res.PeakPending, s.events.Len())
		if s.res.Events > s.cfg.MaxEvents || s.events.Len() > s.cfg.MaxEvents {
			s.fail("event budget of %d exceeded: %d processed, %d pending (a timer storm or a livelock)", s.cfg.MaxEvents, s.res.Events, s.events.Len())
			return
		}
		if s.cfg.Check && s.err == nil {
			s.checkAll()
		}
	}
	if s.now.Before(t) {
		s.now = t
	}
}

func (s *Sim) delay() time.Duration {
	return s.cfg.MinDelay + time.Duration(s.rng.Int64N(int64(s.cfg.MaxDelay-s.cfg.MinDelay)+1))
}

func (s *Sim) checkAll() {
	for _, n := range s.nodes {
		if !n.alive || n.byz || !n.dirty {
			continue
		}
		n.dirty = false
		if err := n.s.CheckInvariants(); err != nil {
			s.fail("%s sender: %v", n.id, err)
			return
		}
		if err := n.r.CheckInvariants(); err != nil {
			s.fail("%s receiver: %v", n.id, err)
			return
		}
	}
}

// ---- node lifecycle

func (s *Sim) boot(n *node) error {
	n.alive = true
	n.inc++
	n.connSeq = make(map[int]broadcast.ConnID)
	n.sends = make(map[broadcast.Token]*sendRec)
	n.attempts = make(map[broadcast.Token]*attemptRec)
	n.fetchedBytes = make(map[broadcast.ArtifactID]int)
	n.lateBytes = make(map[broadcast.ArtifactID]int)
	n.fetching = make(map[broadcast.ArtifactID]bool)
	n.timerAt = time.Time{}
	n.delivered = make(map[broadcast.ArtifactID]bool)
	n.times = make(map[broadcast.ArtifactID]int)
	if n.byz {
		return nil
	}
	var err error
	if n.s, err = broadcast.NewSender(s.cfg.Sender); err != nil {
		return err
	}
	rc := s.cfg.Receiver
	rc.Seed = s.cfg.Seed*1000003 + uint64(n.idx)*7919 + uint64(n.inc)
	if n.r, err = broadcast.NewReceiver(rc); err != nil {
		return err
	}
	for _, m := range s.nodes {
		if m != n {
			n.r.AddPeer(m.id)
		}
	}
	// The application's pool survives the restart: publish again what is
	// still live.
	owned := n.owned
	n.owned = nil
	for _, id := range owned {
		r := s.reg[id]
		if r.aborted {
			continue
		}
		eff, err := n.s.Publish(broadcast.Artifact{ID: id, Payload: r.payload})
		if err != nil {
			s.fail("%s republish %s: %v", n.id, id, err)
			return nil
		}
		n.owned = append(n.owned, id)
		s.exec(n, eff)
	}
	return nil
}

func (s *Sim) linkOf(a, b int) *link {
	if a > b {
		a, b = b, a
	}
	return s.links[a][b]
}

func (s *Sim) connect(a, b int) {
	l := s.linkOf(a, b)
	na, nb := s.nodes[a], s.nodes[b]
	if l.cut || l.conn != nil || !na.alive || !nb.alive {
		return
	}
	if a > b {
		a, b = b, a
		na, nb = nb, na
	}
	na.connSeq[b]++
	nb.connSeq[a]++
	c := &conn{a: a, b: b, idA: na.connSeq[b], idB: nb.connSeq[a], alive: true}
	l.conn = c
	s.peerUp(na, nb, c.idA)
	s.peerUp(nb, na, c.idB)
}

func (s *Sim) peerUp(n, peer *node, id broadcast.ConnID) {
	if n.byz {
		return
	}
	s.exec(n, n.s.PeerUp(peer.id, id))
}

func (s *Sim) disconnect(a, b int) {
	l := s.linkOf(a, b)
	if l.conn == nil {
		return
	}
	l.conn.alive = false
	l.conn = nil
	for _, pair := range [][2]int{{a, b}, {b, a}} {
		n, peer := s.nodes[pair[0]], s.nodes[pair[1]]
		if !n.alive || n.byz {
			continue
		}
		for tok, rec := range n.sends {
			if rec.to == peer.idx {
				delete(n.sends, tok)
			}
		}
		// Calls on the closed connection fail at once, in token order.
		for _, tok := range slices.Sorted(maps.Keys(n.attempts)) {
			if rec := n.attempts[tok]; rec.peer == peer.idx {
				s.after(0, rec.abort)
			}
		}
		s.exec(n, n.s.PeerDown(peer.id))
	}
}

func (s *Sim) restart(n *node) {
	s.res.Restarts++
	for _, m := range s.nodes {
		if m != n {
			s.disconnect(n.idx, m.idx)
		}
	}
	n.alive = false
	inc := n.inc
	s.after(restartDown, func() {
		if n.alive || n.inc != inc {
			return
		}
		if err := s.boot(n); err != nil {
			s.fail("boot %s: %v", n.id, err)
			return
		}
		for _, m := range s.nodes {
			if m != n {
				s.connect(n.idx, m.idx)
			}
		}
	})
}

func (s *Sim) heal() {
	s.ending = true
	for _, n := range s.nodes {
		if !n.alive {
			if err := s.boot(n); err != nil {
				s.fail("boot %s: %v", n.id, err)
			}
		}
	}
	for a := range s.nodes {
		for b := a + 1; b < len(s.nodes); b++ {
			s.links[a][b].cut = false
			s.connect(a, b)
		}
	}
}

// ---- workload

func (s *Sim) honestAlive() []*node {
	var out []*node
	for _, n := range s.nodes {
		if n.alive && !n.byz {
			out = append(out, n)
		}
	}
	return out
}

func (s *Sim) randomOp() {
	if s.ending {
		return
	}
	p := s.rng.Float64()
	switch {
	case p < 0.50:
		s.publish()
	case p < 0.78:
		s.abort()
	case !s.cfg.Faults:
		s.publish()
	case p < 0.86:
		a, b := s.randomPair()
		l := s.linkOf(a, b)
		if !l.cut {
			s.res.Cuts++
			l.cut = true
			s.after(detectDelay, func() {
				if l.cut {
					s.disconnect(a, b)
				}
			})
			// heal later
			s.after(time.Duration(s.rng.Int64N(int64(8*time.Second))), func() {
				if !s.ending && l.cut {
					l.cut = false
					s.after(reconnectDelay, func() { s.connect(a, b) })
				}
			})
		}
	case p < 0.94:
		a, b := s.randomPair()
		s.res.Flaps++
		s.disconnect(a, b)
		s.after(reconnectDelay, func() { s.connect(a, b) })
	default:
		nodes := s.honestAlive()
		if len(nodes) > 1 {
			s.restart(nodes[s.rng.IntN(len(nodes))])
		}
	}
}

func (s *Sim) randomPair() (int, int) {
	a := s.rng.IntN(len(s.nodes))
	b := s.rng.IntN(len(s.nodes) - 1)
	if b >= a {
		b++
	}
	return a, b
}

func (s *Sim) publish() {
	nodes := s.honestAlive()
	if len(nodes) == 0 {
		return
	}
	n := nodes[s.rng.IntN(len(nodes))]
	var size int
	ls := false
	switch s.rng.IntN(4) {
	case 0, 1:
		size = 50 + s.rng.IntN(600) // pushed
	case 2:
		size = 2000 + s.rng.IntN(6000) // advertised
	default:
		size = 2000 + s.rng.IntN(3000)
		ls = true // pushed although large
	}
	s.publishSized(n, size, ls)
}

// PublishAt makes honest node publish an artifact of size random bytes at
// virtual time at after the start, besides the random workload: a test can
// place the artifact its scenario needs. Call it before Run.
func (s *Sim) PublishAt(at time.Duration, node, size int) {
	s.schedule(s.start.Add(at), func() {
		if n := s.nodes[node]; n.alive && !n.byz {
			s.publishSized(n, size, false)
		}
	})
}

// AbortAt makes honest node abort the last artifact it published (if it
// is still live) at virtual time at after the start. Call it before Run.
func (s *Sim) AbortAt(at time.Duration, node int) {
	s.schedule(s.start.Add(at), func() {
		if n := s.nodes[node]; n.alive && !n.byz && len(n.owned) > 0 {
			s.abortOwned(n, len(n.owned)-1)
		}
	})
}

func (s *Sim) publishSized(n *node, size int, ls bool) {
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte(s.rng.Uint32())
	}
	s.pubSeq++
	id := MakeID(fmt.Sprintf("n%d-%d", n.idx, s.pubSeq), payload)
	eff, err := n.s.Publish(broadcast.Artifact{ID: id, Attribute: []byte{byte(size)}, Payload: payload, LatencySensitive: ls})
	if errors.Is(err, broadcast.ErrSlotsExhausted) {
		return
	}
	if err != nil {
		s.fail("%s publish: %v", n.id, err)
		return
	}
	s.reg[id] = &record{owner: n.idx, payload: payload}
	n.owned = append(n.owned, id)
	s.exec(n, eff)
}

func (s *Sim) abort() {
	var candidates []*node
	for _, n := range s.honestAlive() {
		if len(n.owned) > 0 {
			candidates = append(candidates, n)
		}
	}
	if len(candidates) == 0 {
		return
	}
	n := candidates[s.rng.IntN(len(candidates))]
	s.abortOwned(n, s.rng.IntN(len(n.owned)))
}

// abortOwned aborts the i-th live artifact n published.
func (s *Sim) abortOwned(n *node, i int) {
	id := n.owned[i]
	n.owned = slices.Delete(n.owned, i, i+1)
	s.reg[id].aborted, s.reg[id].abortedAt = true, s.now
	eff, err := n.s.Abort(id)
	if err != nil {
		s.fail("%s abort %s: %v", n.id, id, err)
		return
	}
	s.exec(n, eff)
}

// MakeID builds an artifact id that commits to the payload, so that the
// verifier can tell wrong bytes for an id.
func MakeID(prefix string, payload []byte) broadcast.ArtifactID {
	h := fnv.New64a()
	h.Write(payload)
	var sum [8]byte
	binary.BigEndian.PutUint64(sum[:], h.Sum64())
	return broadcast.ArtifactID(fmt.Sprintf("%s#%x", prefix, sum))
}

func verifyPayload(a broadcast.Artifact) error {
	i := strings.LastIndexByte(string(a.ID), '#')
	if i < 0 {
		return errors.New("id carries no payload hash")
	}
	if MakeID(string(a.ID[:i]), a.Payload) != a.ID {
		return errors.New("payload does not hash to the id")
	}
	return nil
}

// ---- effects of honest nodes

func (s *Sim) exec(n *node, eff []broadcast.Effect) {
	n.dirty = true // every call into a core ends here
	for _, e := range eff {
		if s.err != nil {
			return
		}
		switch e := e.(type) {
		case broadcast.SendUpdate:
			s.sendUpdate(n, e)
		case broadcast.CancelSend:
			if rec, ok := n.sends[e.Token]; ok {
				rec.cancelled = true
				delete(n.sends, e.Token)
			}
		case broadcast.RetryAt:
			s.setTimer(n, e.At)
		case broadcast.FetchAttempt:
			if n.delivered[e.ID] {
				s.fail("%s: fetch attempt for %s which is delivered", n.id, e.ID)
			}
			n.fetching[e.ID] = true
			s.fetchAttempt(n, e)
		case broadcast.CancelFetch:
			if !n.fetching[e.ID] {
				s.fail("%s: cancel of %s which is not fetching", n.id, e.ID)
			}
			delete(n.fetching, e.ID)
			for _, a := range n.attempts {
				if a.id == e.ID {
					a.cancelled = true
				}
			}
		case broadcast.CancelAttempt:
			if a, ok := n.attempts[e.Token]; ok {
				a.cancelled = true
			}
		case broadcast.Deliver:
			s.deliver(n, e)
		case broadcast.Withdraw:
			if !n.delivered[e.ID] {
				s.fail("%s: withdraw of %s which was not delivered", n.id, e.ID)
			}
			delete(n.delivered, e.ID)
			s.res.Withdrawals++
		default:
			s.fail("unknown effect %T", e)
		}
	}
}

// setTimer keeps the node's one timer at the earliest deadline either
// core announced, as the cores' time contract (broadcast.RetryAt) asks:
// when it fires both cores Tick, and each announces its next deadline.
func (s *Sim) setTimer(n *node, at time.Time) {
	if !n.timerAt.IsZero() && !at.Before(n.timerAt) {
		return
	}
	n.timerAt = at
	n.timerGen++
	gen, inc := n.timerGen, n.inc
	n.timers++
	s.res.PeakTimers = max(s.res.PeakTimers, n.timers)
	s.schedule(at, func() {
		n.timers--
		if !n.alive || n.inc != inc || n.timerGen != gen {
			return
		}
		n.timerAt = time.Time{}
		s.exec(n, n.s.Tick(s.now))
		s.exec(n, n.r.Tick(s.now))
	})
}

func (s *Sim) deliver(n *node, d broadcast.Deliver) {
	id := d.Artifact.ID
	delete(n.fetching, id)
	if n.delivered[id] {
		s.fail("G2: %s delivered %s twice while advertised", n.id, id)
		return
	}
	if err := verifyPayload(d.Artifact); err != nil {
		s.fail("G2: %s delivered %s with a payload not published under it: %v", n.id, id, err)
		return
	}
	if r, ok := s.reg[id]; ok {
		if string(r.payload) != string(d.Artifact.Payload) {
			s.fail("G2: %s delivered wrong bytes for %s", n.id, id)
			return
		}
		if r.owner == n.idx {
			s.fail("%s delivered its own artifact %s", n.id, id)
			return
		}
	}
	n.delivered[id] = true
	n.times[id]++
	s.res.Deliveries++
	inc := n.inc
	wait := time.Duration(0)
	if s.cfg.SlowConsumer > 0 {
		wait = time.Duration(s.rng.Int64N(int64(s.cfg.SlowConsumer)))
	}
	s.after(wait, func() {
		if n.alive && n.inc == inc {
			s.exec(n, n.r.Consumed())
		}
	})
}

// sendUpdate models one update stream: request, handling, response, with
// loss, duplication, delay, cancellation races and a caller timeout.
func (s *Sim) sendUpdate(n *node, e broadcast.SendUpdate) {
	peer := s.nodeByID(e.Peer)
	l := s.linkOf(n.idx, peer.idx)
	c := l.conn
	if c == nil || c.localID(n.idx) != e.Conn {
		s.fail("%s sent on connection %d to %s which is not current", n.id, e.Conn, e.Peer)
		return
	}
	rec := &sendRec{to: peer.idx, c: c}
	n.sends[e.Token] = rec
	inc := n.inc
	s.after(e.Timeout, func() {
		if n.alive && n.inc == inc && n.sends[e.Token] == rec {
			delete(n.sends, e.Token)
			s.exec(n, n.s.Failed(peer.id, e.Token, s.now))
		}
	})
	copies := 1
	if s.rng.Float64() < s.cfg.Duplicate {
		copies = 2
		s.res.Duplicates++
	}
	size := broadcast.EncodedSize(e.Update.Artifact) + 24
	for range copies {
		s.transmit(n, peer, size, func() {
			if !c.alive || l.cut || !peer.alive {
				return
			}
			// A reset stream may still have delivered its data.
			if rec.cancelled && s.rng.IntN(2) == 0 {
				return
			}
			ok := s.handleUpdate(peer, n, c, e.Update)
			s.transmit(peer, n, 16, func() {
				if !c.alive || l.cut || !n.alive || n.inc != inc || n.sends[e.Token] != rec {
					return
				}
				delete(n.sends, e.Token)
				if ok {
					s.exec(n, n.s.Acked(peer.id, e.Token))
				} else {
					s.exec(n, n.s.Failed(peer.id, e.Token, s.now))
				}
			})
		})
	}
}

// transmit sends a message of size bytes from a to b: it is lost with
// probability Loss, or arrives after it has had its turn on the link (with
// a Bandwidth) and a random delay, perhaps overtaking earlier ones (counted
// as reordered when it does).
func (s *Sim) transmit(a, b *node, size int, arrive func()) {
	s.res.Messages++
	ord := s.order[[2]int{a.idx, b.idx}]
	if ord == nil {
		ord = &linkOrder{}
		s.order[[2]int{a.idx, b.idx}] = ord
	}
	wait := time.Duration(0)
	if s.cfg.Bandwidth > 0 {
		start := s.now
		if ord.busyUntil.After(start) {
			start = ord.busyUntil
		}
		ord.busyUntil = start.Add(time.Duration(int64(size) * int64(time.Second) / int64(s.cfg.Bandwidth)))
		wait = ord.busyUntil.Sub(s.now)
	}
	if s.rng.Float64() < s.cfg.Loss {
		s.res.Lost++
		return
	}
	ord.sent++
	seq := ord.sent
	s.after(wait+s.delay(), func() {
		if seq < ord.arrived {
			s.res.Reordered++
		}
		ord.arrived = max(ord.arrived, seq)
		arrive()
	})
}

// linkOrder numbers the messages sent one way over a link, to notice those
// that overtake others, and says until when the link is busy.
type linkOrder struct {
	sent, arrived uint64
	busyUntil     time.Time
}

// handleUpdate runs at the receiving node and says whether the response is
// a success. Stale updates are acknowledged: a newer state is already there.
func (s *Sim) handleUpdate(to, from *node, c *conn, u broadcast.SlotUpdate) bool {
	if to.byz {
		return true
	}
	eff, err := to.r.HandleUpdate(from.id, c.localID(to.idx), u)
	s.exec(to, eff)
	if err != nil && !from.byz {
		switch {
		case errors.Is(err, broadcast.ErrStale):
		default:
			s.fail("%s refused an honest update from %s: %v", to.id, from.id, err)
		}
	}
	return err == nil || errors.Is(err, broadcast.ErrStale)
}

func (s *Sim) nodeByID(id broadcast.PeerID) *node {
	for _, n := range s.nodes {
		if n.id == id {
			return n
		}
	}
	s.fail("unknown peer %s", id)
	return s.nodes[0]
}

// fetchAttempt performs one attempt the receiver asked for: a request to
// the peer and its response, each subject to loss and delay, and the
// attempt's timeout. The peer and the timeout are the core's choice; the
// simulator only reports what happened.
func (s *Sim) fetchAttempt(n *node, e broadcast.FetchAttempt) {
	peer := s.nodeByID(e.Peer)
	rec := &attemptRec{id: e.ID, peer: peer.idx}
	n.attempts[e.Token] = rec
	inc := n.inc
	// report delivers an outcome to the receiver once, unless the fetch was
	// cancelled (the actor shell cancels the call and drops its result).
	report := func(outcome func() ([]broadcast.Effect, error)) {
		if !n.alive || n.inc != inc || rec.done {
			return
		}
		rec.done = true
		delete(n.attempts, e.Token)
		if rec.cancelled {
			return
		}
		eff, err := outcome()
		s.exec(n, eff)
		if err != nil && !s.nodeByID(e.Peer).byz {
			s.fail("%s: honest %s served bad bytes for %s: %v", n.id, e.Peer, e.ID, err)
		}
	}
	failed := func() ([]broadcast.Effect, error) { return n.r.FetchFailed(e.Token, s.now), nil }
	rec.abort = func() { report(failed) }
	l := s.linkOf(n.idx, peer.idx)
	c := l.conn
	if c == nil {
		// Not connected: the transport refuses the call at once.
		s.after(0, func() { report(failed) })
		return
	}
	s.after(e.Timeout, func() { report(failed) })
	asked := s.now
	s.transmit(n, peer, 64, func() {
		if !c.alive || l.cut || !peer.alive {
			return
		}
		resp := s.serve(peer, e)
		if resp.silent {
			return // never answers
		}
		size := len(resp.got.Data) + 16
		if m := resp.got.Manifest; m != nil {
			size += len(m.Hashes) + 16
		}
		s.transmit(peer, n, size, func() {
			if !c.alive || l.cut {
				return
			}
			switch {
			case resp.garbage:
				report(func() ([]broadcast.Effect, error) { return n.r.FetchInvalid(e.Token, s.now), nil })
			case !resp.found:
				report(failed)
			default:
				report(func() ([]broadcast.Effect, error) {
					eff, err := n.r.FetchDone(e.Token, resp.got, s.now.Sub(asked), s.now)
					if err == nil {
						n.fetchedBytes[e.ID] += len(resp.got.Data)
						if r := s.reg[e.ID]; r != nil && r.aborted && asked.After(r.abortedAt) {
							n.lateBytes[e.ID] += len(resp.got.Data)
						}
					}
					return eff, err
				})
			}
		})
	})
}

// response is what a peer answers to a fetch.
type response struct {
	got     broadcast.Fetched
	found   bool
	silent  bool // no answer at all
	garbage bool // bytes that do not decode
}

// serve answers a fetch request at peer. An honest peer answers for the
// artifact it holds under the id if its digest is the one asked for (or
// none is named); a Byzantine one stays silent, sends bytes that do not
// decode, or answers with its forged version of the artifact.
func (s *Sim) serve(peer *node, e broadcast.FetchAttempt) response {
	var payload []byte
	if peer.byz {
		switch s.rng.IntN(4) {
		case 0, 1:
			return response{silent: true}
		case 2:
			return response{garbage: true}
		}
		payload = forgedPayload(e.ID)
		if e.Digest != s.manifest(forgedPayload(e.ID)).Digest() && s.rng.IntN(2) == 0 {
			// Lie under the honest digest: its manifest, chunks of nothing.
			if r, ok := s.reg[e.ID]; ok {
				m := s.manifest(r.payload)
				if e.Chunk == broadcast.ManifestPart {
					return response{got: broadcast.Fetched{Manifest: &m, Data: []byte("forged")}, found: true}
				}
				return response{got: broadcast.Fetched{Data: make([]byte, m.ChunkLen(min(e.Chunk, m.Chunks()-1)))}, found: true}
			}
		}
	} else {
		a, ok := peer.s.Lookup(e.ID)
		if !ok {
			return response{}
		}
		payload = a.Payload
	}
	m := s.manifest(payload)
	if e.Digest != (broadcast.Digest{}) && e.Digest != m.Digest() && !peer.byz {
		return response{} // another artifact under this id
	}
	if e.Chunk == broadcast.ManifestPart {
		got := broadcast.Fetched{Manifest: &m}
		if m.Chunks() == 1 {
			got.Data = payload
		}
		return response{got: got, found: true}
	}
	if e.Chunk >= m.Chunks() {
		return response{}
	}
	return response{got: broadcast.Fetched{Data: m.Chunk(payload, e.Chunk)}, found: true}
}

// manifest describes payload with the senders' chunk size.
func (s *Sim) manifest(payload []byte) broadcast.Manifest {
	return broadcast.Describe(payload, s.cfg.Sender.ChunkSize)
}

// forgedPayload is what Byzantine nodes serve under an id.
func forgedPayload(id broadcast.ArtifactID) []byte { return []byte("forged " + string(id)) }

// ---- Byzantine behaviour

func (s *Sim) byzantineOp(b *node) {
	if s.ending || !b.alive {
		return
	}
	var targets []*node
	for _, n := range s.honestAlive() {
		if s.linkOf(b.idx, n.idx).conn != nil {
			targets = append(targets, n)
		}
	}
	if len(targets) == 0 {
		return
	}
	to := targets[s.rng.IntN(len(targets))]
	limit := s.cfg.Receiver.SlotLimit
	var batch []broadcast.SlotUpdate
	switch s.rng.IntN(5) {
	case 0: // flood far beyond the slot limit
		for i := range 2 * limit {
			b.byzCommit++
			batch = append(batch, broadcast.SlotUpdate{Commit: b.byzCommit, Slot: broadcast.Slot(i), Kind: broadcast.KindAdvert,
				Artifact: broadcast.Artifact{ID: broadcast.ArtifactID(fmt.Sprintf("junk-%d-%d", b.idx, b.byzCommit))}})
		}
	case 1: // replay old updates
		for i := 0; i < 20 && len(b.byzSent) > 0; i++ {
			old := b.byzSent[s.rng.IntN(len(b.byzSent))]
			if old.to == to.idx {
				batch = append(batch, old.u)
			}
		}
	case 2: // cleared for slots never filled
		for range 10 {
			b.byzCommit++
			batch = append(batch, broadcast.SlotUpdate{Commit: b.byzCommit, Slot: broadcast.Slot(s.rng.IntN(10 * limit)), Kind: broadcast.KindCleared})
		}
	case 3: // advertise honest ids it will serve wrongly, under their digest or its own
		for id, r := range s.sortedRecords() {
			if s.rng.IntN(3) == 0 && !r.aborted {
				b.byzCommit++
				digest := s.manifest(r.payload).Digest()
				if s.rng.IntN(2) == 0 {
					digest = s.manifest(forgedPayload(id)).Digest()
				}
				batch = append(batch, broadcast.SlotUpdate{Commit: b.byzCommit, Slot: broadcast.Slot(s.rng.IntN(limit)), Kind: broadcast.KindAdvert,
					Artifact: broadcast.Artifact{ID: id}, Digest: digest})
			}
		}
	default: // garbage: invalid kinds, oversized ids, pushes beyond MaxPushSize
		b.byzCommit++
		batch = append(batch,
			broadcast.SlotUpdate{Commit: b.byzCommit, Slot: 1, Kind: broadcast.UpdateKind(77)},
			broadcast.SlotUpdate{Commit: b.byzCommit, Slot: 2, Kind: broadcast.KindPush, Artifact: broadcast.Artifact{ID: broadcast.ArtifactID(strings.Repeat("x", 10_000))}},
			broadcast.SlotUpdate{Commit: b.byzCommit, Slot: 3, Kind: broadcast.KindPush,
				Artifact: broadcast.Artifact{ID: broadcast.ArtifactID(fmt.Sprintf("big-%d-%d", b.idx, b.byzCommit)), Payload: make([]byte, s.cfg.Receiver.MaxPushSize+1)}})
	}
	c := s.linkOf(b.idx, to.idx).conn
	for _, u := range batch {
		b.byzSent = append(b.byzSent, sentUpdate{to: to.idx, u: u})
		s.res.ByzantineUpdates++
		s.handleUpdate(to, b, c, u)
	}
	if len(b.byzSent) > 1000 {
		b.byzSent = b.byzSent[len(b.byzSent)-1000:]
	}
}

// sortedRecords yields registry entries in id order, for determinism.
func (s *Sim) sortedRecords() func(func(broadcast.ArtifactID, *record) bool) {
	ids := make([]broadcast.ArtifactID, 0, len(s.reg))
	for id := range s.reg {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return func(yield func(broadcast.ArtifactID, *record) bool) {
		for _, id := range ids {
			if !yield(id, s.reg[id]) {
				return
			}
		}
	}
}

// ---- checks

// converged reports why G1 does not hold yet: every honest node must hold
// exactly the live artifacts that other honest nodes published.
func (s *Sim) converged() error {
	for _, n := range s.nodes {
		if n.byz || !n.alive {
			continue
		}
		for id, r := range s.sortedRecords() {
			if r.owner == n.idx {
				continue
			}
			if !r.aborted && n.delivered[id] && n.times[id] != 1 {
				return fmt.Errorf("G2: %s delivered live %s %d times (withdrawn in between)", n.id, id, n.times[id])
			}
			if !r.aborted && !n.delivered[id] {
				owner := s.nodes[r.owner]
				return fmt.Errorf("G1: %s has not delivered %s (published by node%02d, live there: %v); receiver: %s; sim fetch: %v",
					n.id, id, r.owner, owner.s.Live() > 0 && has(owner.s, id), n.r.DescribeID(id), n.fetching[id])
			}
			if r.aborted && n.delivered[id] && !s.byzantineAdvertises(n, id) {
				return fmt.Errorf("G3: %s still holds aborted %s", n.id, id)
			}
		}
	}
	return nil
}

func has(s *broadcast.Sender, id broadcast.ArtifactID) bool {
	_, ok := s.Lookup(id)
	return ok
}

// byzantineAdvertises reports whether a Byzantine peer keeps id advertised
// at n: nothing can stop a faulty peer from advertising an aborted id.
func (s *Sim) byzantineAdvertises(n *node, id broadcast.ArtifactID) bool {
	for _, p := range n.r.Advertisers(id) {
		if s.nodeByID(p).byz {
			return true
		}
	}
	return false
}

func (s *Sim) checkBounds() {
	for _, n := range s.nodes {
		if n.byz {
			continue
		}
		// G3: an artifact aborted before a node delivered it is never
		// fetched in full by that node after the abort.
		for id, r := range s.sortedRecords() {
			if r.aborted && n.times[id] == 0 && len(r.payload) > 0 && n.lateBytes[id] >= len(r.payload) {
				s.fail("G3: %s fetched all %d bytes of aborted %s without delivering it", n.id, len(r.payload), id)
			}
		}
		for _, m := range s.nodes {
			if m == n {
				continue
			}
			if e := n.r.Entries(m.id); e > s.cfg.Receiver.SlotLimit {
				s.fail("G4: %s holds %d entries for %s, limit %d", n.id, e, m.id, s.cfg.Receiver.SlotLimit)
			}
		}
		if n.r.Fetching() > s.cfg.Receiver.MaxActiveFetches+len(s.nodes)-1 {
			s.fail("G4: %s runs %d fetches", n.id, n.r.Fetching())
		}
	}
}

func (s *Sim) collectStats() {
	for _, n := range s.nodes {
		if n.byz || n.r == nil {
			continue
		}
		for _, m := range s.nodes {
			st := n.r.PeerStats(m.id)
			s.res.RefusedStale += int(st.Stale)
			s.res.RefusedOver += int(st.OverLimit)
			s.res.RefusedInvalid += int(st.Invalid)
			s.res.Mismatch += int(st.Mismatch)
			s.res.BadResponses += int(st.BadResponses)
		}
	}
}
