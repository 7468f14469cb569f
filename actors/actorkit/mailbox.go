package actorkit

import (
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/asynkron/protoactor-go/actor"
)

// MailboxStats is a snapshot of a [MailboxMetrics].
type MailboxStats struct {
	// Capacity is the number of user messages one mailbox holds.
	Capacity int
	// Len is the number of user messages queued right now, summed over
	// every mailbox that reports to the same metrics.
	Len int64
	// Accepted counts user messages that were queued.
	Accepted uint64
	// Refused counts user messages turned away because the mailbox was full.
	Refused uint64
	// Processed counts user messages taken off the queue and handed to the
	// actor (including ones the actor panicked on, or ignored because it had
	// already stopped).
	Processed uint64
}

// MailboxMetrics collects the counters of the bounded mailboxes that were
// given it through [WithMailboxMetrics]. The caller owns it and may read it
// at any time from any goroutine; the zero value is ready to use.
//
// A producer is called once per spawn, so props reused for several actors
// make all of their mailboxes report here: Len and the counters are then
// totals. Give each actor its own producer to watch one actor.
type MailboxMetrics struct {
	capacity  atomic.Int64
	length    atomic.Int64
	accepted  atomic.Uint64
	refused   atomic.Uint64
	processed atomic.Uint64
}

// Stats returns the current counters. The fields are read one by one, so
// while messages flow they need not add up exactly; once the mailboxes are
// quiet, Accepted == Processed + Len.
func (m *MailboxMetrics) Stats() MailboxStats {
	l := m.length.Load()
	if l < 0 {
		// A consumer can briefly run ahead of a producer's increment.
		l = 0
	}
	return MailboxStats{
		Capacity:  int(m.capacity.Load()),
		Len:       l,
		Accepted:  m.accepted.Load(),
		Refused:   m.refused.Load(),
		Processed: m.processed.Load(),
	}
}

// MailboxOption configures [BoundedMailbox].
type MailboxOption func(*mailboxConfig)

type mailboxConfig struct {
	metrics   *MailboxMetrics
	onRefused func(self *actor.PID, message interface{})
}

// WithMailboxMetrics makes the mailboxes report their length and counters to
// m.
func WithMailboxMetrics(m *MailboxMetrics) MailboxOption {
	return func(c *mailboxConfig) { c.metrics = m }
}

// WithOnRefused registers fn to be told about every refused user message, in
// addition to the dead letter. self is the owning actor (nil if the mailbox
// was never attached to one) and message is what the sender posted, envelope
// included. fn runs on the sender's goroutine while it is inside Send, so it
// must be quick and must not send to the same actor.
func WithOnRefused(fn func(self *actor.PID, message interface{})) MailboxOption {
	return func(c *mailboxConfig) { c.onRefused = fn }
}

// BoundedMailbox returns a MailboxProducer whose mailboxes hold at most
// capacity user messages (a capacity below 1 is treated as 1). The queue
// grows on demand, doubling from a few slots up to capacity (16 bytes per
// slot), and goes back to its initial size once drained, so an actor that
// is mostly idle — one per peer, say — costs a few hundred bytes however
// large its bound.
//
// At the limit the message is refused: PostUserMessage returns at once, the
// message is published on the owning actor system's EventStream as an
// *actor.DeadLetterEvent with the actor's PID, the unwrapped message and the
// sender, and it is counted in [MailboxMetrics] and passed to the
// [WithOnRefused] hook. The sender never blocks, never spins, and nothing
// already queued is evicted: under overload the oldest work is kept and the
// newest is shed, which is what the broadcast cores want because they
// re-derive the newest state anyway. The standard dead-letter event is used
// (rather than a type of our own carrying a reason) so protoactor's own
// machinery keeps working: a Request to a full actor gets a
// DeadLetterResponse and its future fails fast instead of timing out, and the
// system's throttled dead-letter log shows it. The event does not say why
// the letter is dead; code that needs to tell a refusal from a send to a
// stopped actor uses WithOnRefused.
//
// System messages (start, stop, watch, failure, suspend/resume) are never
// refused; their queue is unbounded but only ever holds a handful.
//
// Scheduling follows protoactor's default mailbox: one run at a time through
// the props' Dispatcher, system messages before user messages, user messages
// held back while suspended, a yield after Dispatcher.Throughput() messages,
// and a panic in the actor escalated through MessageInvoker.EscalateFailure.
// An idle mailbox has no goroutine. A message posted as an
// actor.MessageBatch is queued as one message and not expanded.
func BoundedMailbox(capacity int, opts ...MailboxOption) actor.MailboxProducer {
	if capacity < 1 {
		capacity = 1
	}
	var cfg mailboxConfig
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.metrics != nil {
		cfg.metrics.capacity.Store(int64(capacity))
	}
	return func() actor.Mailbox {
		return &boundedMailbox{cfg: cfg, userCap: capacity}
	}
}

// mailboxInitialSlots is the size of a mailbox's user ring when it first
// needs one and after it drains: enough for the usual trickle without
// growing, small enough that thousands of idle actors cost little.
const mailboxInitialSlots = 8

// Scheduler states of a boundedMailbox.
const (
	mbIdle int32 = iota
	mbRunning
)

// handlers is what RegisterHandlers supplies. It is published atomically
// because a PID is registered, and so reachable by senders, before its
// mailbox gets its handlers.
type handlers struct {
	invoker    actor.MessageInvoker
	dispatcher actor.Dispatcher
	self       *actor.PID
	system     *actor.ActorSystem
}

type boundedMailbox struct {
	cfg mailboxConfig

	// The bounded user queue: a ring buffer guarded by userMu, allocated
	// when first needed and grown by doubling up to userCap. A mutex ring
	// measured about twice as fast as a buffered channel here.
	userMu   sync.Mutex
	userCap  int
	userBuf  []interface{}
	userHead int
	userN    int
	// userLen mirrors userN in an atomic, which together with the atomic
	// status makes the "post, then try to schedule" of senders and the "go
	// idle, then look again" of the run a plain sequentially consistent
	// handshake: one side always sees the other. It is incremented after the
	// push and decremented after the pop, so a positive value means a
	// message is queued (or was just taken by the run that will count it).
	userLen atomic.Int64

	sysMu  sync.Mutex
	sys    []interface{}
	sysLen atomic.Int32

	status    atomic.Int32
	suspended atomic.Bool
	started   atomic.Bool
	h         atomic.Pointer[handlers]
}

var _ actor.Mailbox = (*boundedMailbox)(nil)

// PostUserMessage queues message or, when the mailbox is full, refuses it.
func (m *boundedMailbox) PostUserMessage(message interface{}) {
	m.userMu.Lock()
	if m.userN == len(m.userBuf) {
		if m.userN == m.userCap {
			m.userMu.Unlock()
			m.refuse(message)
			return
		}
		m.grow()
	}
	i := m.userHead + m.userN
	if i >= len(m.userBuf) {
		i -= len(m.userBuf)
	}
	m.userBuf[i] = message
	m.userN++
	m.userMu.Unlock()
	m.userLen.Add(1)
	if mt := m.cfg.metrics; mt != nil {
		mt.accepted.Add(1)
		mt.length.Add(1)
	}
	m.schedule()
}

// grow doubles the ring (up to userCap), keeping the queue in order at the
// front of the new one. Called with userMu held and the ring full.
func (m *boundedMailbox) grow() {
	size := min(max(2*len(m.userBuf), mailboxInitialSlots), m.userCap)
	buf := make([]interface{}, size)
	n := copy(buf, m.userBuf[m.userHead:])
	copy(buf[n:], m.userBuf[:m.userHead])
	m.userBuf, m.userHead = buf, 0
}

func (m *boundedMailbox) refuse(message interface{}) {
	if mt := m.cfg.metrics; mt != nil {
		mt.refused.Add(1)
	}
	h := m.h.Load()
	var self *actor.PID
	if h != nil {
		self = h.self
	}
	if m.cfg.onRefused != nil {
		m.cfg.onRefused(self, message)
	}
	if h == nil || h.system == nil {
		return
	}
	_, msg, sender := actor.UnwrapEnvelope(message)
	h.system.EventStream.Publish(&actor.DeadLetterEvent{PID: self, Message: msg, Sender: sender})
}

// PostSystemMessage queues message; system messages are never refused.
func (m *boundedMailbox) PostSystemMessage(message interface{}) {
	m.sysMu.Lock()
	m.sys = append(m.sys, message)
	m.sysMu.Unlock()
	m.sysLen.Add(1)
	m.schedule()
}

func (m *boundedMailbox) popUser() (interface{}, bool) {
	m.userMu.Lock()
	defer m.userMu.Unlock()
	if m.userN == 0 {
		return nil, false
	}
	msg := m.userBuf[m.userHead]
	m.userBuf[m.userHead] = nil
	m.userHead++
	if m.userHead == len(m.userBuf) {
		m.userHead = 0
	}
	m.userN--
	if m.userN == 0 && len(m.userBuf) > mailboxInitialSlots {
		// A burst is over: give its ring back rather than keep the
		// high-water mark for the actor's life.
		m.userBuf, m.userHead = nil, 0
	}
	return msg, true
}

func (m *boundedMailbox) popSystem() (interface{}, bool) {
	if m.sysLen.Load() == 0 {
		return nil, false
	}
	m.sysMu.Lock()
	defer m.sysMu.Unlock()
	if len(m.sys) == 0 {
		return nil, false
	}
	msg := m.sys[0]
	m.sys[0] = nil
	m.sys = m.sys[1:]
	if len(m.sys) == 0 {
		// Reuse the backing array instead of letting the slice creep forward.
		m.sys = m.sys[:0:cap(m.sys)]
	}
	m.sysLen.Add(-1)
	return msg, true
}

// RegisterHandlers attaches the mailbox to its actor. The actor system and
// PID used for dead letters are taken from the invoker when it is an actor
// context (protoactor's always is).
func (m *boundedMailbox) RegisterHandlers(invoker actor.MessageInvoker, dispatcher actor.Dispatcher) {
	h := &handlers{invoker: invoker, dispatcher: dispatcher}
	if c, ok := invoker.(interface {
		Self() *actor.PID
		ActorSystem() *actor.ActorSystem
	}); ok {
		h.self = c.Self()
		h.system = c.ActorSystem()
	}
	m.h.Store(h)
}

// Start opens the mailbox for processing. The spawner queues Started before
// calling Start, and no run is scheduled before Start, so the actor sees
// Started first even if a sender found its PID early.
func (m *boundedMailbox) Start() {
	m.started.Store(true)
	if m.hasWork() {
		m.schedule()
	}
}

// UserMessageCount reports the queued user messages (protoactor's
// mailbox-length metric reads it).
func (m *boundedMailbox) UserMessageCount() int {
	m.userMu.Lock()
	defer m.userMu.Unlock()
	return m.userN
}

func (m *boundedMailbox) schedule() {
	if !m.started.Load() {
		return
	}
	h := m.h.Load()
	if h == nil {
		return
	}
	if m.status.CompareAndSwap(mbIdle, mbRunning) {
		h.dispatcher.Schedule(m.process)
	}
}

func (m *boundedMailbox) hasWork() bool {
	return m.sysLen.Load() > 0 || (!m.suspended.Load() && m.userLen.Load() > 0)
}

// process is the scheduled run. After draining it goes idle and then looks
// once more: a sender that posted while we were running saw "running" and
// did not schedule, so its message is ours to pick up. If a sender wins the
// CAS instead, it has scheduled a new run and this one ends.
func (m *boundedMailbox) process() {
	h := m.h.Load()
	for {
		m.run(h)
		m.status.Store(mbIdle)
		if !m.hasWork() || !m.status.CompareAndSwap(mbIdle, mbRunning) {
			return
		}
	}
}

func (m *boundedMailbox) run(h *handlers) {
	var msg interface{}
	defer func() {
		if r := recover(); r != nil {
			h.invoker.EscalateFailure(r, msg)
		}
	}()

	budget := h.dispatcher.Throughput()
	if budget < 1 {
		budget = 1
	}
	for n := 0; ; n++ {
		if n >= budget {
			// Let other actors sharing the dispatcher run.
			n = 0
			runtime.Gosched()
		}

		if sm, ok := m.popSystem(); ok {
			msg = sm
			switch sm.(type) {
			case *actor.SuspendMailbox:
				m.suspended.Store(true)
			case *actor.ResumeMailbox:
				m.suspended.Store(false)
			default:
				h.invoker.InvokeSystemMessage(sm)
			}
			continue
		}

		if m.suspended.Load() {
			// Resume arrives as a system message, which schedules a run.
			return
		}

		um, ok := m.popUser()
		if !ok {
			return
		}
		msg = um
		m.userLen.Add(-1)
		if mt := m.cfg.metrics; mt != nil {
			mt.length.Add(-1)
			mt.processed.Add(1)
		}
		h.invoker.InvokeUserMessage(msg)
	}
}
