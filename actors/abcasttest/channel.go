package abcasttest

import (
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/internal/poll"
	"github.com/abcast/abcast/membership"
	"github.com/asynkron/protoactor-go/actor"
)

// ChannelOptions open a channel on every node of a subnet.
type ChannelOptions struct {
	// Admit and Verify are passed to actors.ChannelConfig on every node.
	Admit  broadcast.AdmissionFunc
	Verify broadcast.VerifyFunc
	// Consume, if set, returns node i's own consumer (your replica's
	// code); every event reaches the subnet's Recorder first, then it.
	// A panic in it is not a confirmation: the event comes again.
	Consume func(node int) func(actors.Event)
	// ConsumerProps, if set, returns the props of node i's consumer actor
	// (your replica's actor, which confirms each event with
	// actors.Confirm): the kit spawns it on the node's actor system, named
	// "consumer-<channel>", under a guardian that restarts it whenever it
	// crashes (as a supervisor of yours would), again after every restart
	// of the node, and opens the channel with its PID. The Recorder then
	// sees what that actor confirmed, not what was handed to it. Set at
	// most one of Consume and ConsumerProps.
	ConsumerProps func(node int) *actor.Props
}

// Channel is one channel opened on every node of a subnet. Publish and
// Abort through it, so it knows which artifacts should be live, and
// assert with WaitDelivered.
type Channel struct {
	s    *Subnet
	name string
	opt  ChannelOptions

	mu      sync.Mutex
	chans   []*actors.Channel
	recs    []*Recorder
	opened  []bool                                        // per node: opened at least once (later opens are new lives)
	pools   []map[broadcast.ArtifactID]broadcast.Artifact // per node: what its application has live
	aborted []broadcast.ArtifactID
}

// OpenChannel opens name on every running node, and on every node started
// later.
func (s *Subnet) OpenChannel(name string, opt ChannelOptions) *Channel {
	s.t.Helper()
	c := &Channel{s: s, name: name, opt: opt, chans: make([]*actors.Channel, s.N()), recs: make([]*Recorder, s.N()), opened: make([]bool, s.N()),
		pools: make([]map[broadcast.ArtifactID]broadcast.Artifact, s.N())}
	for i := range c.pools {
		c.pools[i] = map[broadcast.ArtifactID]broadcast.Artifact{}
		c.recs[i] = NewRecorder()
	}
	s.mu.Lock()
	s.chans = append(s.chans, c)
	s.mu.Unlock()
	for i := range s.ids {
		if s.Node(i) != nil {
			c.open(i)
		}
	}
	return c
}

// open opens the channel on (re)started node i and republishes its pool.
// The recorder survives: a restarted node may deliver again what its
// previous incarnation delivered (that is not a duplicate).
func (c *Channel) open(i int) {
	c.s.t.Helper()
	rec := c.recs[i]
	c.mu.Lock()
	again := c.opened[i]
	c.opened[i] = true
	c.mu.Unlock()
	if again {
		rec.reset() // a new life of the node
	}
	cfg := actors.ChannelConfig{Name: c.name, Admit: c.opt.Admit, Verify: c.opt.Verify, Consume: rec.Consume}
	switch {
	case c.opt.ConsumerProps != nil:
		cfg.Consume, cfg.ConsumerPID = nil, c.SpawnConsumer(i)
	case c.opt.Consume != nil:
		user := c.opt.Consume(i)
		cfg.Consume = func(ev actors.Event) {
			user(ev) // a panic here is not a confirmation: record nothing
			rec.Consume(ev)
		}
	}
	ch, err := c.s.Node(i).OpenChannel(cfg)
	if err != nil {
		c.s.t.Fatalf("abcasttest: open %s on node %d: %v", c.name, i, err)
	}
	c.mu.Lock()
	c.chans[i] = ch
	pool := make([]broadcast.Artifact, 0, len(c.pools[i]))
	for _, a := range c.pools[i] {
		pool = append(pool, a)
	}
	c.mu.Unlock()
	slices.SortFunc(pool, func(a, b broadcast.Artifact) int { return compare(a.ID, b.ID) })
	for _, a := range pool {
		if err := ch.Publish(a); err != nil {
			c.s.t.Fatalf("abcasttest: republish %x on node %d: %v", []byte(a.ID), i, err)
		}
	}
}

// SpawnConsumer spawns node i's consumer actor from ChannelOptions
// .ConsumerProps (see there) and returns its PID; after the running one
// was stopped, this is "respawned under the same name", which the channel
// finds again by itself.
func (c *Channel) SpawnConsumer(i int) *actor.PID {
	c.s.t.Helper()
	props := c.opt.ConsumerProps(i).Configure(recordConfirmed(c.recs[i])...)
	root := c.s.Node(i).System().Root.WithGuardian(actor.NewRestartingStrategy())
	pid, err := root.SpawnNamed(props, "consumer-"+c.name)
	if err != nil {
		c.s.t.Fatalf("abcasttest: spawn consumer of %s on node %d: %v", c.name, i, err)
	}
	return pid
}

func compare(a, b broadcast.ArtifactID) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// On returns the channel as opened on node i (nil if it never ran).
func (c *Channel) On(i int) *actors.Channel {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.chans[i]
}

// Recorder returns what node i's consumer saw.
func (c *Channel) Recorder(i int) *Recorder { return c.recs[i] }

// Publish publishes a on node i and remembers it as live.
func (c *Channel) Publish(i int, a broadcast.Artifact) error {
	if err := c.On(i).Publish(a); err != nil {
		return err
	}
	c.mu.Lock()
	c.pools[i][a.ID] = a
	c.mu.Unlock()
	return nil
}

// Abort aborts id on node i and remembers it as aborted.
func (c *Channel) Abort(i int, id broadcast.ArtifactID) error {
	if err := c.On(i).Abort(id); err != nil {
		return err
	}
	c.mu.Lock()
	delete(c.pools[i], id)
	c.aborted = append(c.aborted, id)
	c.mu.Unlock()
	return nil
}

// Aborted returns the ids aborted through Abort, in order.
func (c *Channel) Aborted() []broadcast.ArtifactID {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.aborted)
}

// Live returns the live artifacts' ids and their publishers.
func (c *Channel) Live() map[broadcast.ArtifactID]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[broadcast.ArtifactID]int{}
	for i, p := range c.pools {
		for id := range p {
			out[id] = i
		}
	}
	return out
}

// CheckDelivered reports whether the channel has converged right now:
// every running member holds every live artifact of every other running
// member (G1), with the published payload (G2), and holds nothing that no
// node has live (G3); no node ever delivered an id twice while it stayed
// advertised, nor withdrew one it did not hold. Artifacts of a stopped
// node are neither required nor forbidden until it runs again (receivers
// keep them until they learn otherwise); removed members are ignored.
func (c *Channel) CheckDelivered() error {
	c.mu.Lock()
	pools := make([]map[broadcast.ArtifactID]broadcast.Artifact, len(c.pools))
	anywhere := map[broadcast.ArtifactID]bool{}
	for i, p := range c.pools {
		pools[i] = make(map[broadcast.ArtifactID]broadcast.Artifact, len(p))
		for id, a := range p {
			pools[i][id] = a
			anywhere[id] = true
		}
	}
	c.mu.Unlock()
	active := make([]bool, len(pools))
	for i := range active {
		active[i] = c.s.active(i)
	}
	var errs []error
	for i, rec := range c.recs {
		if p := rec.Problems(); len(p) > 0 {
			errs = append(errs, fmt.Errorf("G2: node %d: %v", i, p))
		}
		if !active[i] {
			continue
		}
		held := rec.heldSet()
		missing := 0
		for owner, pool := range pools {
			if owner == i || !active[owner] {
				continue
			}
			for id, a := range pool {
				p, ok := held[id]
				switch {
				case !ok:
					if missing++; missing <= 3 {
						errs = append(errs, fmt.Errorf("G1: node %d lacks %q published by node %d", i, id, owner))
					}
				case string(p) != string(a.Payload):
					errs = append(errs, fmt.Errorf("G2: node %d holds %q with a payload other than the published one", i, id))
				}
			}
		}
		if missing > 3 {
			errs = append(errs, fmt.Errorf("G1: node %d lacks %d artifacts in all", i, missing))
		}
		for id := range held {
			if !anywhere[id] {
				errs = append(errs, fmt.Errorf("G3: node %d still holds %q, which no node has live", i, id))
			}
		}
	}
	return errors.Join(errs...)
}

// WaitDelivered polls CheckDelivered until it passes or within elapses
// (virtual time inside a bubble) and returns its last error.
func (c *Channel) WaitDelivered(within time.Duration) error {
	return Eventually(within, c.CheckDelivered)
}

// AssertDelivered fails the test unless the channel converges within the
// given time (see CheckDelivered).
func (c *Channel) AssertDelivered(t TB, within time.Duration) {
	t.Helper()
	if err := c.WaitDelivered(within); err != nil {
		t.Fatalf("abcasttest: channel %s not delivered everywhere: %v", c.name, err)
	}
}

// TB is the part of testing.TB the assertions use.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
}

// Eventually calls cond every 10 ms until it returns nil or within has
// passed, and returns its last error, saying it timed out. Inside a
// synctest bubble the polling and the deadline are in virtual time. It is
// the repository's one polling loop (internal/poll), for tests that wait
// for a condition instead of sleeping.
func Eventually(within time.Duration, cond func() error) error {
	return poll.Eventually(within, cond)
}

// Bounds are the limits CheckBounds holds a subnet to. Zero fields are not
// checked.
type Bounds struct {
	// HeapInUse bounds the process's heap in use after a GC, in bytes (all
	// nodes of a subnet share one process).
	HeapInUse uint64
	// Goroutines bounds the process's goroutine count.
	Goroutines int
}

// CheckBounds checks every running node's channels against their
// configured bounds (G4: at most SlotLimit advertised ids per peer, no more
// active fetches than advertised ids, no more live artifacts than
// MaxSlots) and the process against b.
func (s *Subnet) CheckBounds(b Bounds) error {
	var errs []error
	s.mu.Lock()
	chans := append([]*Channel(nil), s.chans...)
	s.mu.Unlock()
	peers := s.N() - 1
	for _, c := range chans {
		for i := range s.ids {
			ch := c.On(i)
			if s.Node(i) == nil || ch == nil {
				continue
			}
			st := ch.Stats()
			if lim := s.cfg.Receiver.SlotLimit * peers; st.AdvertisedIDs > lim {
				errs = append(errs, fmt.Errorf("G4: node %d channel %s: %d advertised ids, bound %d", i, c.name, st.AdvertisedIDs, lim))
			}
			if st.ActiveFetches > st.AdvertisedIDs {
				errs = append(errs, fmt.Errorf("G4: node %d channel %s: %d active fetches for %d advertised ids", i, c.name, st.ActiveFetches, st.AdvertisedIDs))
			}
			if st.Live > s.cfg.Sender.MaxSlots {
				errs = append(errs, fmt.Errorf("G4: node %d channel %s: %d live artifacts, bound %d", i, c.name, st.Live, s.cfg.Sender.MaxSlots))
			}
		}
	}
	if b.HeapInUse > 0 {
		if h := HeapInUse(); h > b.HeapInUse {
			errs = append(errs, fmt.Errorf("G4: heap in use %d KiB, bound %d KiB", h>>10, b.HeapInUse>>10))
		}
	}
	if b.Goroutines > 0 {
		if g := runtime.NumGoroutine(); g > b.Goroutines {
			errs = append(errs, fmt.Errorf("%d goroutines, bound %d", g, b.Goroutines))
		}
	}
	return errors.Join(errs...)
}

// AssertBounds fails the test if CheckBounds reports anything.
func (s *Subnet) AssertBounds(t TB, b Bounds) {
	t.Helper()
	if err := s.CheckBounds(b); err != nil {
		t.Fatalf("abcasttest: %v", err)
	}
}

// NodeMemory is what a subnet can honestly attribute to one node. Every
// node of a subnet shares one Go process, and the runtime cannot say which
// node a heap object belongs to, so there is no per-node heap figure: these
// are the payload bytes the node is known to hold, summed over the
// subnet's channels, and the process heap for scale. For a node's own
// heap, run it alone in a process (examples/replica reports the Go
// runtime's memory on /metrics; tests/reliability_procs_test.go runs
// replicas as processes).
type NodeMemory struct {
	// Published is the payload bytes of the artifacts the node's
	// application has live (published and not aborted, republished after
	// a restart): the node's sender pool holds each once.
	Published uint64
	// Held is the payload bytes of the artifacts the node's consumers
	// hold now (delivered or confirmed, not withdrawn), from the kit's
	// recorders: the application's copy.
	Held uint64
	// Unconfirmed counts events the node's channels hold for their
	// consumers (handed out and not confirmed, or waiting), each with its
	// payload, from actors.ChannelStats.
	Unconfirmed int
	// Live counts the artifacts the node's senders hold (ChannelStats.Live).
	Live int
	// ProcessHeap is the heap in use of the whole process after a GC,
	// shared by every node of the subnet and the test itself.
	ProcessHeap uint64
}

// Memory returns node i's figures (see NodeMemory); zero counts from the
// channels while the node is not running.
func (s *Subnet) Memory(i int) NodeMemory {
	m := NodeMemory{ProcessHeap: HeapInUse()}
	s.mu.Lock()
	chans := append([]*Channel(nil), s.chans...)
	s.mu.Unlock()
	running := s.Node(i) != nil
	for _, c := range chans {
		c.mu.Lock()
		for _, a := range c.pools[i] {
			m.Published += uint64(len(a.Payload))
		}
		c.mu.Unlock()
		m.Held += c.recs[i].heldBytes()
		if ch := c.On(i); running && ch != nil {
			st := ch.Stats()
			m.Unconfirmed += st.Unconfirmed
			m.Live += st.Live
		}
	}
	return m
}

// HeapInUse collects garbage and returns the heap in use, in bytes.
func HeapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// Recorder is a consumer that remembers what it saw and flags what G2
// forbids: a second delivery of an id it still holds, a withdrawal of an
// id it does not hold.
type Recorder struct {
	mu         sync.Mutex
	held       map[broadcast.ArtifactID][]byte
	from       map[broadcast.ArtifactID]membership.NodeID
	deliveries map[broadcast.ArtifactID]int
	problems   []string
	// seqs are the event numbers recorded in this life of the node: a
	// redelivered event (same Seq) is counted, not recorded again.
	seqs        map[uint64]bool
	redelivered int
	at          map[broadcast.ArtifactID]time.Time // first delivery, this life
	lifeCount   map[broadcast.ArtifactID]int       // deliveries, this life
	lives       int
	perLife     []int // deliveries recorded in each life
}

// NewRecorder returns an empty recorder.
func NewRecorder() *Recorder {
	r := &Recorder{}
	r.reset()
	return r
}

// reset forgets what is held (a restarted node starts empty) but keeps
// the delivery counts and problems.
func (r *Recorder) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.held = map[broadcast.ArtifactID][]byte{}
	r.from = map[broadcast.ArtifactID]membership.NodeID{}
	r.seqs = map[uint64]bool{}
	r.at = map[broadcast.ArtifactID]time.Time{}
	r.lifeCount = map[broadcast.ArtifactID]int{}
	if r.deliveries == nil {
		r.deliveries = map[broadcast.ArtifactID]int{}
	}
	r.lives++
	r.perLife = append(r.perLife, 0)
}

// Consume is a channel consumer function. An event whose Seq it already
// recorded in this life of the node (a redelivery of one it took) is
// counted in Redelivered and otherwise ignored, as the consumer contract
// tells consumers to do.
func (r *Recorder) Consume(ev actors.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if seq := ev.Sequence(); seq != 0 {
		if r.seqs[seq] {
			r.redelivered++
			return
		}
		r.seqs[seq] = true
	}
	switch e := ev.(type) {
	case *actors.Delivered:
		if _, ok := r.held[e.Artifact.ID]; ok {
			r.problems = append(r.problems, fmt.Sprintf("%q delivered twice while advertised", e.Artifact.ID))
		}
		r.held[e.Artifact.ID] = e.Artifact.Payload
		r.from[e.Artifact.ID] = e.From
		r.deliveries[e.Artifact.ID]++
		r.lifeCount[e.Artifact.ID]++
		if _, ok := r.at[e.Artifact.ID]; !ok {
			r.at[e.Artifact.ID] = time.Now()
		}
		r.perLife[len(r.perLife)-1]++
	case *actors.Withdrawn:
		if _, ok := r.held[e.ID]; !ok {
			r.problems = append(r.problems, fmt.Sprintf("%q withdrawn but not held", e.ID))
		}
		delete(r.held, e.ID)
		delete(r.from, e.ID)
	}
}

// Held returns the ids currently delivered and not withdrawn, sorted.
func (r *Recorder) Held() []broadcast.ArtifactID {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]broadcast.ArtifactID, 0, len(r.held))
	for id := range r.held {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

func (r *Recorder) heldSet() map[broadcast.ArtifactID][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[broadcast.ArtifactID][]byte, len(r.held))
	for id, p := range r.held {
		out[id] = p
	}
	return out
}

func (r *Recorder) heldBytes() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var n uint64
	for _, p := range r.held {
		n += uint64(len(p))
	}
	return n
}

// Holds returns id's payload if it is currently delivered.
func (r *Recorder) Holds(id broadcast.ArtifactID) ([]byte, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, ok := r.held[id]
	return p, ok
}

// Deliveries counts every delivery of id, across restarts of the node.
func (r *Recorder) Deliveries(id broadcast.ArtifactID) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.deliveries[id]
}

// LifeDeliveries counts the deliveries of id in the node's current life
// (since its last start): exactly-once is a property of one life, since a
// restarted node starts empty and receives everything again.
func (r *Recorder) LifeDeliveries(id broadcast.ArtifactID) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lifeCount[id]
}

// TotalDeliveries counts every delivery of any id.
func (r *Recorder) TotalDeliveries() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, d := range r.deliveries {
		n += d
	}
	return n
}

// Redelivered counts events handed over again after the consumer had
// taken them (same Seq): the at-least-once side of the consumer contract.
func (r *Recorder) Redelivered() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.redelivered
}

// DeliveredAt returns when id was first recorded in the node's current
// life (time.Now, so virtual inside a synctest bubble).
func (r *Recorder) DeliveredAt(id broadcast.ArtifactID) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t, ok := r.at[id]
	return t, ok
}

// PerLife returns the deliveries recorded in each life of the node (one
// entry per start).
func (r *Recorder) PerLife() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.perLife)
}

// Problems returns the G2 violations seen.
func (r *Recorder) Problems() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.problems)
}

// recordConfirmed returns props options that make rec record each event a
// consumer actor confirms, when it confirms it: a receiver middleware
// remembers the events handed to the actor by Seq, a sender middleware
// sees the actor's Consumed replies go out.
func recordConfirmed(rec *Recorder) []actor.PropsOption {
	var mu sync.Mutex
	handed := map[uint64]actors.Event{}
	recv := func(next actor.ReceiverFunc) actor.ReceiverFunc {
		return func(ctx actor.ReceiverContext, env *actor.MessageEnvelope) {
			if ev, ok := env.Message.(actors.Event); ok {
				mu.Lock()
				handed[ev.Sequence()] = ev
				mu.Unlock()
			}
			next(ctx, env)
		}
	}
	send := func(next actor.SenderFunc) actor.SenderFunc {
		return func(ctx actor.SenderContext, target *actor.PID, env *actor.MessageEnvelope) {
			var seq uint64
			switch m := env.Message.(type) {
			case *actors.Consumed:
				seq = m.Seq
			case actors.Consumed:
				seq = m.Seq
			}
			if seq != 0 {
				mu.Lock()
				ev := handed[seq]
				delete(handed, seq)
				mu.Unlock()
				if ev != nil {
					rec.Consume(ev)
				}
			}
			next(ctx, target, env)
		}
	}
	return []actor.PropsOption{actor.WithReceiverMiddleware(recv), actor.WithSenderMiddleware(send)}
}
