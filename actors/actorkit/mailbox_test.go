package actorkit

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/rs/zerolog"

	"github.com/abcast/abcast/internal/poll"
)

const waitDeadline = 10 * time.Second

func newTestSystem(t testing.TB) *actor.ActorSystem {
	t.Helper()
	sys := NewActorSystem(zerolog.Nop(), t.Name(), actor.WithDeadLetterThrottleInterval(10*time.Millisecond))
	t.Cleanup(sys.Shutdown)
	return sys
}

// gatedActor records int messages. The first int it sees blocks until gate
// is closed, which lets a test fill the mailbox behind it.
type gatedActor struct {
	gate      chan struct{}
	blocking  chan struct{} // closed once the first int is being held
	once      sync.Once
	mu        sync.Mutex
	received  []int
	stopped   chan struct{}
	restarted atomic.Int32
}

func newGatedActor() *gatedActor {
	return &gatedActor{gate: make(chan struct{}), blocking: make(chan struct{}), stopped: make(chan struct{})}
}

func (a *gatedActor) Receive(c actor.Context) {
	switch m := c.Message().(type) {
	case int:
		a.once.Do(func() {
			close(a.blocking)
			<-a.gate
		})
		if m < 0 {
			panic(fmt.Sprintf("asked to fail on %d", m))
		}
		a.mu.Lock()
		a.received = append(a.received, m)
		a.mu.Unlock()
	case *actor.Restarting:
		a.restarted.Add(1)
	case *actor.Stopped:
		close(a.stopped)
	}
}

func (a *gatedActor) got() []int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]int(nil), a.received...)
}

// countDeadLetters counts dead letters addressed to pid.
func countDeadLetters(sys *actor.ActorSystem, pid func() *actor.PID) *atomic.Uint64 {
	var n atomic.Uint64
	sys.EventStream.Subscribe(func(evt interface{}) {
		if dl, ok := evt.(*actor.DeadLetterEvent); ok {
			if p := pid(); p != nil && dl.PID.Equal(p) {
				n.Add(1)
			}
		}
	})
	return &n
}

// Property: under many concurrent senders a full mailbox refuses instead of
// blocking, and every message is accounted for exactly once: accepted +
// refused == sent, every accepted message is processed, and every refusal is
// a dead letter.
func TestBoundedMailboxRefusesWhenFullExactAccounting(t *testing.T) {
	const capacity, senders, perSender = 32, 16, 500
	sys := newTestSystem(t)
	var metrics MailboxMetrics
	var hooked atomic.Uint64
	a := newGatedActor()
	props := actor.PropsFromProducer(func() actor.Actor { return a },
		actor.WithMailbox(BoundedMailbox(capacity, WithMailboxMetrics(&metrics),
			WithOnRefused(func(*actor.PID, interface{}) { hooked.Add(1) }))))
	var pidp atomic.Pointer[actor.PID]
	dead := countDeadLetters(sys, pidp.Load)
	pid := sys.Root.Spawn(props)
	pidp.Store(pid)

	sys.Root.Send(pid, 0)
	<-a.blocking // the actor is now stuck on message 0; the queue can fill

	var wg sync.WaitGroup
	for s := range senders {
		wg.Go(func() {
			for i := range perSender {
				sys.Root.Send(pid, 1+s*perSender+i)
			}
		})
	}
	wg.Wait() // would hang here if a full mailbox blocked its senders
	st := metrics.Stats()
	if st.Len != capacity {
		t.Errorf("while blocked: Len = %d, want %d (full)", st.Len, capacity)
	}
	if st.Capacity != capacity {
		t.Errorf("Capacity = %d, want %d", st.Capacity, capacity)
	}
	close(a.gate)

	const sent = 1 + senders*perSender
	poll.Until(t, waitDeadline, "accepted messages to be processed", func() bool {
		s := metrics.Stats()
		return s.Processed == s.Accepted && s.Len == 0
	})
	st = metrics.Stats()
	if st.Accepted+st.Refused != sent {
		t.Errorf("accepted %d + refused %d != sent %d", st.Accepted, st.Refused, sent)
	}
	if st.Accepted != capacity+1 {
		t.Errorf("accepted %d, want capacity+1 = %d (the held message and a full queue)", st.Accepted, capacity+1)
	}
	if got := uint64(len(a.got())); got != st.Processed {
		t.Errorf("actor saw %d messages, metrics say %d processed", got, st.Processed)
	}
	if d, h := dead.Load(), hooked.Load(); d != st.Refused || h != st.Refused {
		t.Errorf("refused %d, dead letters %d, hook calls %d: want all equal", st.Refused, d, h)
	}
}

// funcInvoker is a MessageInvoker for driving a mailbox without an actor.
type funcInvoker struct {
	user func(interface{})
	sys  func(interface{})
	fail func(reason, msg interface{})
}

func (f *funcInvoker) InvokeUserMessage(m interface{})   { f.user(m) }
func (f *funcInvoker) InvokeSystemMessage(m interface{}) { f.sys(m) }
func (f *funcInvoker) EscalateFailure(r, m interface{}) {
	if f.fail != nil {
		f.fail(r, m)
	}
}

type probeSystemMessage struct{}

// Property: a full mailbox still takes system messages, and they are handled
// before the user messages queued ahead of them.
func TestBoundedMailboxAcceptsSystemMessagesWhenFull(t *testing.T) {
	const capacity = 4
	var metrics MailboxMetrics
	mb := BoundedMailbox(capacity, WithMailboxMetrics(&metrics))()

	gate, holding := make(chan struct{}), make(chan struct{})
	var mu sync.Mutex
	var order []string
	record := func(s string) {
		mu.Lock()
		order = append(order, s)
		mu.Unlock()
	}
	mb.RegisterHandlers(&funcInvoker{
		user: func(m interface{}) {
			if m.(int) == 0 {
				close(holding)
				<-gate
			}
			record(fmt.Sprint("user", m))
		},
		sys: func(m interface{}) {
			if _, ok := m.(probeSystemMessage); ok {
				record("sys")
			}
		},
	}, actor.NewDefaultDispatcher(300))
	mb.Start()

	mb.PostUserMessage(0)
	<-holding
	for i := 1; i <= capacity+3; i++ {
		mb.PostUserMessage(i)
	}
	if st := metrics.Stats(); st.Refused != 3 || st.Len != capacity {
		t.Fatalf("before the system message: %+v, want 3 refused and a full queue", st)
	}
	mb.PostSystemMessage(probeSystemMessage{})
	close(gate)

	poll.Until(t, waitDeadline, "everything to run", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(order) == capacity+2
	})
	want := []string{"user0", "sys", "user1", "user2", "user3", "user4"}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(order) != fmt.Sprint(want) {
		t.Errorf("order = %v, want %v", order, want)
	}
}

// Property: one sender's accepted messages arrive in the order sent, and the
// refused ones are exactly the ones that did not arrive.
func TestBoundedMailboxPreservesOrderForOneSender(t *testing.T) {
	const capacity, n = 16, 20000
	sys := newTestSystem(t)
	var metrics MailboxMetrics
	var refusedMu sync.Mutex
	refused := map[int]bool{}
	a := newGatedActor()
	close(a.gate)
	pid := sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return a },
		actor.WithMailbox(BoundedMailbox(capacity, WithMailboxMetrics(&metrics),
			WithOnRefused(func(_ *actor.PID, m interface{}) {
				refusedMu.Lock()
				refused[actor.UnwrapEnvelopeMessage(m).(int)] = true
				refusedMu.Unlock()
			})))))
	for i := range n {
		sys.Root.Send(pid, i)
	}
	poll.Until(t, waitDeadline, "accepted messages to be processed", func() bool {
		s := metrics.Stats()
		return s.Processed == s.Accepted && s.Len == 0
	})
	got := a.got()
	for i := 1; i < len(got); i++ {
		if got[i] <= got[i-1] {
			t.Fatalf("out of order: %d after %d", got[i], got[i-1])
		}
	}
	if len(got)+len(refused) != n {
		t.Fatalf("received %d + refused %d != sent %d", len(got), len(refused), n)
	}
	for _, m := range got {
		if refused[m] {
			t.Fatalf("message %d both refused and received", m)
		}
	}
	t.Logf("one sender, capacity %d: %d delivered, %d refused", capacity, len(got), len(refused))
}

// Property: with room for everything, a spawned actor processes every
// message from concurrent senders, and nothing is refused.
func TestBoundedMailboxActorProcessesEverything(t *testing.T) {
	const senders, perSender = 8, 1000
	sys := newTestSystem(t)
	var metrics MailboxMetrics
	var count atomic.Int64
	props := actor.PropsFromFunc(func(c actor.Context) {
		if _, ok := c.Message().(int); ok {
			count.Add(1)
		}
	}, actor.WithMailbox(BoundedMailbox(senders*perSender, WithMailboxMetrics(&metrics))))
	pid := sys.Root.Spawn(props)

	var wg sync.WaitGroup
	for range senders {
		wg.Go(func() {
			for i := range perSender {
				sys.Root.Send(pid, i)
			}
		})
	}
	wg.Wait()
	poll.Until(t, waitDeadline, "all messages", func() bool { return count.Load() == senders*perSender })
	if st := metrics.Stats(); st.Refused != 0 || st.Processed != senders*perSender {
		t.Errorf("stats %+v: want no refusals and %d processed", st, senders*perSender)
	}
}

// Property: a panic in the actor is escalated like protoactor's own mailbox
// does it, so the default supervisor restarts the actor and the messages
// behind the failing one are still processed.
func TestBoundedMailboxEscalatesPanics(t *testing.T) {
	sys := newTestSystem(t)
	a := newGatedActor()
	close(a.gate)
	pid := sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return a },
		actor.WithMailbox(BoundedMailbox(8))))
	sys.Root.Send(pid, 1)
	sys.Root.Send(pid, -1)
	sys.Root.Send(pid, 2)
	poll.Until(t, waitDeadline, "message after the panic", func() bool { return len(a.got()) == 2 })
	if a.restarted.Load() != 1 {
		t.Errorf("restarted %d times, want 1", a.restarted.Load())
	}
	if got := a.got(); got[0] != 1 || got[1] != 2 {
		t.Errorf("got %v, want [1 2]", got)
	}
}

// Property: stopping an actor whose mailbox is full stops it, and no
// goroutine is left behind.
func TestBoundedMailboxStopWhileFull(t *testing.T) {
	sys := newTestSystem(t)
	base := runtime.NumGoroutine()
	var metrics MailboxMetrics
	a := newGatedActor()
	pid := sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return a },
		actor.WithMailbox(BoundedMailbox(8, WithMailboxMetrics(&metrics)))))
	sys.Root.Send(pid, 0)
	<-a.blocking
	for i := 1; i <= 20; i++ {
		sys.Root.Send(pid, i)
	}
	if st := metrics.Stats(); st.Len != 8 || st.Refused != 12 {
		t.Fatalf("stats %+v: want a full queue of 8 and 12 refused", st)
	}

	stopped := sys.Root.StopFuture(pid)
	close(a.gate)
	if err := stopped.Wait(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	select {
	case <-a.stopped:
	default:
		t.Fatal("actor did not see Stopped")
	}
	// Stop goes ahead of the queued user messages, so at most the held
	// message was handled.
	if got := a.got(); len(got) > 1 {
		t.Errorf("actor handled %v after being stopped", got)
	}
	if err := poll.Eventually(waitDeadline, func() error {
		if n := runtime.NumGoroutine(); n > base {
			buf := make([]byte, 1<<16)
			return fmt.Errorf("goroutines: %d, baseline %d\n%s", n, base, buf[:runtime.Stack(buf, true)])
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func cpuTime(t testing.TB) time.Duration {
	t.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatalf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Property: after being full and refusing, an idle mailbox costs no CPU (no
// sender spinning, no actor polling). protoactor's Bounded and
// BoundedDropping each burn a core in this state.
func TestBoundedMailboxNoCPUBurnWhenIdle(t *testing.T) {
	sys := newTestSystem(t)
	var metrics MailboxMetrics
	a := newGatedActor()
	pid := sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return a },
		actor.WithMailbox(BoundedMailbox(8, WithMailboxMetrics(&metrics)))))
	sys.Root.Send(pid, 0)
	<-a.blocking
	for i := 1; i <= 100; i++ {
		sys.Root.Send(pid, i)
	}
	close(a.gate)
	poll.Until(t, waitDeadline, "the mailbox to drain", func() bool {
		s := metrics.Stats()
		return s.Refused > 0 && s.Len == 0 && s.Processed == s.Accepted
	})

	// This is the one real wait in these tests: it measures the absence of
	// work, so there is no event to wait for. 200ms is long enough that a
	// spinning goroutine would show up as ~200ms of CPU, and short enough
	// to keep the test quick. The runtime's own background work (sysmon,
	// timers) is far below the limit.
	const window = 200 * time.Millisecond
	runtime.GC() // so a pending GC cycle is not counted against us
	before := cpuTime(t)
	start := time.Now()
	time.Sleep(window)
	used := cpuTime(t) - before
	elapsed := time.Since(start)
	t.Logf("idle window %v: process CPU %v (%.1f%%)", elapsed, used, 100*float64(used)/float64(elapsed))
	if used > elapsed/10 {
		t.Errorf("idle mailbox used %v of CPU in %v", used, elapsed)
	}
}

// benchInvoker counts user messages and signals when target is reached.
type benchInvoker struct {
	n      atomic.Int64
	target int64
	done   chan struct{}
}

func (b *benchInvoker) InvokeUserMessage(interface{}) {
	if b.n.Add(1) == b.target {
		b.done <- struct{}{}
	}
}
func (b *benchInvoker) InvokeSystemMessage(interface{})  {}
func (b *benchInvoker) EscalateFailure(_, _ interface{}) {}

// BenchmarkMailboxPostProcess posts batches the size of the bounded
// capacity and waits for each to be processed, so nothing is refused and
// both mailboxes do the same work: post, schedule, process.
func BenchmarkMailboxPostProcess(b *testing.B) {
	const batch = 1024
	for _, c := range []struct {
		name string
		mb   actor.MailboxProducer
	}{
		{"bounded", BoundedMailbox(batch)},
		{"protoactor-unbounded", actor.Unbounded()},
	} {
		b.Run(c.name, func(b *testing.B) {
			inv := &benchInvoker{done: make(chan struct{}, 1)}
			mb := c.mb()
			mb.RegisterHandlers(inv, actor.NewDefaultDispatcher(300))
			mb.Start()
			msg := interface{}(struct{}{})
			b.ReportAllocs()
			b.ResetTimer()
			for sent := 0; sent < b.N; {
				k := min(batch, b.N-sent)
				inv.target = inv.n.Load() + int64(k)
				for range k {
					mb.PostUserMessage(msg)
				}
				sent += k
				<-inv.done
			}
		})
	}
}

// BenchmarkMailboxParallelSenders lets GOMAXPROCS senders post to one
// mailbox at full speed; the bounded one refuses what does not fit
// (reported as refused/op), the unbounded one grows.
func BenchmarkMailboxParallelSenders(b *testing.B) {
	for _, c := range []struct {
		name    string
		bounded bool
	}{{"bounded-1024", true}, {"protoactor-unbounded", false}} {
		b.Run(c.name, func(b *testing.B) {
			var metrics MailboxMetrics
			var mb actor.Mailbox
			if c.bounded {
				mb = BoundedMailbox(1024, WithMailboxMetrics(&metrics))()
			} else {
				mb = actor.Unbounded()()
			}
			var processed atomic.Int64
			mb.RegisterHandlers(&funcInvoker{
				user: func(interface{}) { processed.Add(1) },
				sys:  func(interface{}) {},
			}, actor.NewDefaultDispatcher(300))
			mb.Start()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					mb.PostUserMessage(1)
				}
			})
			want := int64(b.N) - int64(metrics.Stats().Refused)
			for processed.Load() != want {
				runtime.Gosched()
			}
			b.StopTimer()
			b.ReportMetric(float64(metrics.Stats().Refused)/float64(b.N), "refused/op")
		})
	}
}

// Property: the ring is allocated on demand and grows up to the capacity,
// keeping FIFO order across wrap-arounds and growths, refusing only at the
// capacity, and is released once drained; an idle mailbox holds no ring.
// (Before the ring grew on demand, a mailbox of capacity 1024 held 16 KiB
// from its spawn: the first check failed.)
func TestBoundedMailboxRingGrowsOnDemand(t *testing.T) {
	const capacity = 100
	var metrics MailboxMetrics
	mb := BoundedMailbox(capacity, WithMailboxMetrics(&metrics))().(*boundedMailbox)
	if len(mb.userBuf) != 0 {
		t.Fatalf("a new mailbox holds a ring of %d slots, want none until a message comes", len(mb.userBuf))
	}
	next, want := 0, 0
	post := func(k int) {
		for range k {
			mb.PostUserMessage(next)
			next++
		}
	}
	pop := func(k int) {
		t.Helper()
		for range k {
			got, ok := mb.popUser()
			if !ok || got.(int) != want {
				t.Fatalf("popped %v (%v), want %d", got, ok, want)
			}
			want++
		}
	}
	// The mailbox is never started, so nothing runs: the test pops by hand.
	post(6)
	pop(4) // head in the middle of the first ring
	post(5)
	if len(mb.userBuf) != mailboxInitialSlots {
		t.Fatalf("ring of %d slots holding 7 messages, want the initial %d (wrapped, not grown)", len(mb.userBuf), mailboxInitialSlots)
	}
	post(20) // grows twice while wrapped
	pop(10)
	post(capacity - mb.userN + 3) // fill to the capacity, 3 refused
	if st := metrics.Stats(); st.Refused != 3 || mb.userN != capacity || len(mb.userBuf) != capacity {
		t.Fatalf("at the capacity: %+v, ring %d, want 3 refused and a full ring of %d", st, len(mb.userBuf), capacity)
	}
	next -= 3 // the refused ones never arrive
	pop(capacity)
	if _, ok := mb.popUser(); ok {
		t.Fatal("a message left after draining")
	}
	if len(mb.userBuf) != 0 {
		t.Fatalf("a drained mailbox keeps a ring of %d slots, want it released", len(mb.userBuf))
	}
	post(1)
	pop(1)
}
