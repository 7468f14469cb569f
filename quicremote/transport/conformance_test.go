package transport

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/abcast/abcast/membership"
)

// The conformance suite: every test runs against the in-memory transport
// and against real QUIC over quic-go's simulated network, both inside a
// synctest bubble (virtual time; the bubble also fails the test if any
// goroutine outlives Close, which is our leak check).

type conformanceCase struct {
	name string
	n    int
	cfg  func(*Config)
	run  func(t *testing.T, c *cluster)
}

var conformanceCases = []conformanceCase{
	{"PingBothWays", 2, nil, testPingBothWays},
	{"ConnIDsAndPeers", 3, nil, testConnIDsAndPeers},
	{"Errors", 2, func(c *Config) { c.MaxFrameSize = 1 << 10 }, testErrors},
	{"CancelReachesHandler", 2, nil, testCancelReachesHandler},
	{"ProtocolLimitRefusesAndOthersFlow", 2, nil, testProtocolLimit},
	{"StreamCreditPushback", 2, func(c *Config) { c.MaxIncomingStreams = 4; c.DefaultProtocolLimit = 4 }, testStreamCreditPushback},
	{"PartitionsHealWithNewConnIDs", 3, nil, testPartitionsHeal},
	{"MembershipAddAndRemove", 3, nil, testMembershipChange},
	{"PartitionPlusRemovalKeepsNodeOut", 3, nil, testPartitionPlusRemoval},
	{"GracefulClose", 2, nil, testGracefulClose},
	{"PushOrderFromOneSender", 2, nil, testPushOrder},
	{"HandlerKnowsItsConnection", 2, nil, testHandlerConnID},
	{"ProtocolLimitIsPerPeer", 3, nil, testProtocolLimitPerPeer},
	{"RequestBytesBudgetPerPeer", 3, func(c *Config) { c.MaxFrameSize = 64 << 10; c.MaxBytesPerPeer = 128 << 10 }, testRequestBudget},
	{"CallResponseLimit", 2, nil, testCallResponseLimit},
	{"ResponsesChargedToBothBudgets", 2, func(c *Config) { c.MaxFrameSize = 64 << 10; c.MaxBytesPerPeer = 128 << 10 }, testResponseBudget},
	{"RequestReleasedBeforeResponseCharged", 2, func(c *Config) { c.MaxFrameSize = 64 << 10; c.MaxBytesPerPeer = 64 << 10 }, testEchoOfBudgetSize},
}

// testCallResponseLimit: a response above the call's MaxResponse fails the
// Call with ErrTooLarge and is counted against the peer; one within it is
// returned; MaxResponse(0) (or below) admits only empty responses; the
// connection survives.
func testCallResponseLimit(t *testing.T, c *cluster) {
	idx := startAll(c)
	a, b := c.nodes[0], c.nodes[1]
	mustHandle(t, b.rpc, "two-k", func(context.Context, membership.NodeID, []byte) ([]byte, error) {
		return make([]byte, 2<<10), nil
	}, 0)
	mustHandle(t, b.rpc, "empty", func(context.Context, membership.NodeID, []byte) ([]byte, error) { return nil, nil }, 0)
	mustHandle(t, b.rpc, "echo", echo, 0)
	c.waitMesh(idx...)
	ctx := t.Context()
	_, err := a.rpc.Call(ctx, b.id.ID, "two-k", nil, MaxResponse(2<<10-1))
	wantKind(t, "response one byte above MaxResponse", err, ErrTooLarge)
	_, err = a.rpc.Call(ctx, b.id.ID, "two-k", nil, MaxResponse(0))
	wantKind(t, "response with MaxResponse(0)", err, ErrTooLarge)
	if resp, err := a.rpc.Call(ctx, b.id.ID, "two-k", nil, MaxResponse(2<<10)); err != nil || len(resp) != 2<<10 {
		t.Fatalf("response of exactly MaxResponse: %d bytes, %v", len(resp), err)
	}
	for _, n := range []int{0, -1} {
		if resp, err := a.rpc.Call(ctx, b.id.ID, "empty", nil, MaxResponse(n)); err != nil || len(resp) != 0 {
			t.Fatalf("empty response with MaxResponse(%d): %d bytes, %v", n, len(resp), err)
		}
	}
	if got := statsOf(a.rpc, b.id.ID).OversizedFrames; got != 2 {
		t.Fatalf("oversized responses counted %d, want 2", got)
	}
	if resp, err := a.rpc.Call(ctx, b.id.ID, "echo", []byte("still"), MaxResponse(5)); err != nil || string(resp) != "still" {
		t.Fatalf("echo after refused responses: %q %v", resp, err)
	}
}

// testResponseBudget: a response is charged to the peer's memory budget
// on the side that writes it (the callee) and on the side that reads it
// (the caller); when either cannot take it the Call fails with ErrRefused
// (the handler ran) and the refusal is counted there. Budget given back,
// the same call succeeds. A Push carries no response and is never refused
// for one.
func testResponseBudget(t *testing.T, c *cluster) {
	idx := startAll(c)
	a, b := c.nodes[0], c.nodes[1]
	var ran atomic.Int32
	mustHandle(t, b.rpc, "big", func(context.Context, membership.NodeID, []byte) ([]byte, error) {
		ran.Add(1)
		return make([]byte, 64<<10), nil
	}, 0)
	c.waitMesh(idx...)
	ctx := t.Context()
	const taken = 100 << 10 // leaves 28 KiB of the 128 KiB budget
	for _, side := range []struct {
		name        string
		holder      *tnode
		peer        membership.NodeID
		refusedHere RPC
	}{
		{"callee (writing)", b, a.id.ID, b.rpc},
		{"caller (reading)", a, b.id.ID, a.rpc},
	} {
		if !side.holder.rpc.Reserve(side.peer, taken) {
			t.Fatalf("%s: Reserve of %d bytes refused", side.name, taken)
		}
		before := ran.Load()
		_, err := a.rpc.Call(ctx, b.id.ID, "big", nil)
		wantKind(t, side.name+": response beyond the budget", err, ErrRefused)
		if ran.Load() != before+1 {
			t.Fatalf("%s: handler did not run", side.name)
		}
		if got := statsOf(side.refusedHere, side.peer).RefusedStreams; got != 1 {
			t.Fatalf("%s: refusals counted %d, want 1", side.name, got)
		}
		if err := a.rpc.Push(ctx, b.id.ID, "big", nil); err != nil {
			t.Fatalf("%s: push whose handler returns a payload: %v", side.name, err)
		}
		side.holder.rpc.Release(side.peer, taken)
		if resp, err := a.rpc.Call(ctx, b.id.ID, "big", nil); err != nil || len(resp) != 64<<10 {
			t.Fatalf("%s: after Release: %d bytes, %v", side.name, len(resp), err)
		}
	}
}

// testEchoOfBudgetSize: with the budget exactly MaxFrameSize, an echo of a
// MaxFrameSize request is served: the request is released when its
// handler returns, before the response is charged.
func testEchoOfBudgetSize(t *testing.T, c *cluster) {
	idx := startAll(c)
	a, b := c.nodes[0], c.nodes[1]
	mustHandle(t, b.rpc, "echo", echo, 0)
	c.waitMesh(idx...)
	req := bytes.Repeat([]byte{7}, 64<<10)
	if resp, err := a.rpc.Call(t.Context(), b.id.ID, "echo", req); err != nil || !bytes.Equal(resp, req) {
		t.Fatalf("echo of MaxFrameSize under a budget of MaxFrameSize: %d bytes, %v", len(resp), err)
	}
}

// testRequestBudget: node 1 has two 64 KiB requests held by a handler that
// does not return; a third large request from it is refused before its
// payload is read (the peer's byte budget is spent), node 2 is unaffected,
// and node 1 is served again once its handlers returned.
func testRequestBudget(t *testing.T, c *cluster) {
	release := make(chan struct{})
	held := make(chan struct{}, 4)
	for i := range c.nodes {
		c.start(i)
	}
	mustHandle(t, c.nodes[0].rpc, "hold", func(ctx context.Context, from membership.NodeID, req []byte) ([]byte, error) {
		if from == c.nodes[1].id.ID && len(req) > 1000 {
			held <- struct{}{}
			select {
			case <-release:
			case <-ctx.Done():
			}
		}
		return []byte("ok"), nil
	}, 0)
	c.waitMesh(0, 1, 2)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	big := make([]byte, 64<<10)
	done := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := c.nodes[1].rpc.Call(ctx, c.nodes[0].id.ID, "hold", big)
			done <- err
		}()
	}
	<-held
	<-held
	if _, err := c.nodes[1].rpc.Call(ctx, c.nodes[0].id.ID, "hold", big); !errors.Is(err, ErrRefused) {
		t.Fatalf("request beyond the peer's byte budget: %v, want ErrRefused", err)
	}
	if resp, err := c.nodes[2].rpc.Call(ctx, c.nodes[0].id.ID, "hold", big); err != nil || string(resp) != "ok" {
		t.Fatalf("other peer's large request: %q %v", resp, err)
	}
	close(release)
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if resp, err := c.nodes[1].rpc.Call(ctx, c.nodes[0].id.ID, "hold", big); err != nil || string(resp) != "ok" {
		t.Fatalf("after the handlers returned: %q %v", resp, err)
	}
}

// testProtocolLimitPerPeer: node 1 fills node 0's limit for a protocol
// with requests that never finish; node 2's requests on that protocol are
// still served.
func testProtocolLimitPerPeer(t *testing.T, c *cluster) {
	release := make(chan struct{})
	started := make(chan struct{}, 8)
	for i := range c.nodes {
		c.start(i)
	}
	mustHandle(t, c.nodes[0].rpc, "slow", func(ctx context.Context, from membership.NodeID, _ []byte) ([]byte, error) {
		if from == c.nodes[1].id.ID {
			started <- struct{}{}
			select {
			case <-release:
			case <-ctx.Done():
			}
		}
		return []byte("ok"), nil
	}, 2)
	c.waitMesh(0, 1, 2)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 3)
	for range 2 {
		go func() {
			_, err := c.nodes[1].rpc.Call(ctx, c.nodes[0].id.ID, "slow", nil)
			done <- err
		}()
	}
	<-started
	<-started
	// Node 1 is at its limit: a third request of its own is refused...
	if _, err := c.nodes[1].rpc.Call(ctx, c.nodes[0].id.ID, "slow", nil); !errors.Is(err, ErrRefused) {
		t.Fatalf("third request from the saturating peer: %v, want ErrRefused", err)
	}
	// ...but node 2 is served.
	if resp, err := c.nodes[2].rpc.Call(ctx, c.nodes[0].id.ID, "slow", nil); err != nil || string(resp) != "ok" {
		t.Fatalf("other peer refused: %q %v", resp, err)
	}
	close(release)
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

// testHandlerConnID: a handler learns the local id of the connection its
// request arrived on, and it matches ConnID for that peer.
func testHandlerConnID(t *testing.T, c *cluster) {
	seen := make(chan uint64, 1)
	for i := range c.nodes {
		c.start(i)
		mustHandle(t, c.nodes[i].rpc, "conn", func(ctx context.Context, _ membership.NodeID, _ []byte) ([]byte, error) {
			id, ok := ConnIDFromContext(ctx)
			if !ok {
				return nil, errors.New("no connection id in the handler context")
			}
			seen <- id
			return nil, nil
		}, 0)
	}
	c.waitMesh(0, 1)
	if err := c.nodes[0].rpc.Push(t.Context(), c.nodes[1].id.ID, "conn", nil); err != nil {
		t.Fatal(err)
	}
	got := <-seen
	want, up := c.nodes[1].rpc.ConnID(c.nodes[0].id.ID)
	if !up || got != want {
		t.Fatalf("handler saw connection %d, node 1's connection to node 0 is %d (up %v)", got, want, up)
	}
}

func TestConformance(t *testing.T) { runConformance(t, conformanceCases) }

// runConformance runs every case on every backend, each in its own bubble.
func runConformance(t *testing.T, cases []conformanceCase) {
	for _, b := range backends {
		for _, tc := range cases {
			t.Run(b.name+"/"+tc.name, func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					cfg := DefaultConfig()
					if tc.cfg != nil {
						tc.cfg(&cfg)
					}
					c := b.new(t, cfg, tc.n)
					defer c.close()
					tc.run(t, c)
				})
			})
		}
	}
}

func startAll(c *cluster) []int {
	idx := make([]int, len(c.nodes))
	for i := range c.nodes {
		idx[i] = i
		c.start(i)
	}
	return idx
}

func testPingBothWays(t *testing.T, c *cluster) {
	pushed := make(chan string, 2)
	for i := range c.nodes {
		c.start(i)
		mustHandle(t, c.nodes[i].rpc, "echo", echo, 0)
		mustHandle(t, c.nodes[i].rpc, "note", func(_ context.Context, from membership.NodeID, m []byte) ([]byte, error) {
			pushed <- from.Short() + ":" + string(m)
			return []byte("ignored"), nil
		}, 0)
	}
	c.waitMesh(0, 1)
	ctx := t.Context()
	for i, j := range []int{1, 0} {
		a, b := c.nodes[i], c.nodes[j]
		resp, err := a.rpc.Call(ctx, b.id.ID, "echo", []byte("ping"))
		if err != nil || string(resp) != "ping" {
			t.Fatalf("call %d->%d: %q %v", i, j, resp, err)
		}
		resp, err = a.rpc.Call(ctx, b.id.ID, "echo", nil)
		if err != nil || len(resp) != 0 {
			t.Fatalf("empty call %d->%d: %q %v", i, j, resp, err)
		}
		if err := a.rpc.Push(ctx, b.id.ID, "note", []byte("hi")); err != nil {
			t.Fatalf("push %d->%d: %v", i, j, err)
		}
		if got, want := <-pushed, a.id.ID.Short()+":hi"; got != want {
			t.Fatalf("push delivered %q, want %q", got, want)
		}
	}
}

func testConnIDsAndPeers(t *testing.T, c *cluster) {
	idx := startAll(c)
	c.waitMesh(idx...)
	for i, n := range c.nodes {
		var want []membership.NodeID
		for j, m := range c.nodes {
			if i == j {
				continue
			}
			want = append(want, m.id.ID)
			id, ok := n.rpc.ConnID(m.id.ID)
			evID, up := lastUp(n.events.all(), m.id.ID)
			if !ok || !up || id != evID || id == 0 {
				t.Fatalf("node %d: ConnID(%d) = %d,%v; event says %d,%v", i, j, id, ok, evID, up)
			}
		}
		if got := n.rpc.Peers(); !equalIDs(got, want) {
			t.Fatalf("node %d: Peers() = %v, want %v", i, got, want)
		}
	}
	// Connection ids are local: strictly increasing per node.
	for i, n := range c.nodes {
		var last uint64
		for _, e := range n.events.all() {
			if up, ok := e.(PeerUp); ok {
				if up.ConnID <= last {
					t.Fatalf("node %d: conn ids not increasing: %v", i, n.events.all())
				}
				last = up.ConnID
			}
		}
	}
}

func equalIDs(a, b []membership.NodeID) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func testErrors(t *testing.T, c *cluster) {
	idx := startAll(c)
	a, b := c.nodes[0], c.nodes[1]
	mustHandle(t, b.rpc, "echo", echo, 0)
	mustHandle(t, b.rpc, "fail", func(context.Context, membership.NodeID, []byte) ([]byte, error) {
		return nil, errors.New("disk on fire")
	}, 0)
	mustHandle(t, b.rpc, "big", func(context.Context, membership.NodeID, []byte) ([]byte, error) {
		return make([]byte, 2<<10), nil
	}, 0)
	mustHandle(t, b.rpc, "panic", func(context.Context, membership.NodeID, []byte) ([]byte, error) {
		panic("handler bug")
	}, 0)
	if err := b.rpc.Handle("echo", echo, 0); err == nil {
		t.Fatal("duplicate Handle accepted")
	}
	if err := b.rpc.Handle("", echo, 0); err == nil {
		t.Fatal("empty protocol accepted")
	}
	c.waitMesh(idx...)
	ctx := t.Context()
	stranger := newIdentities(t, 1)[0].ID

	check := func(name string, err error, kind error, inMsg string) {
		t.Helper()
		if !errors.Is(err, kind) {
			t.Fatalf("%s: got %v, want %v", name, err, kind)
		}
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("%s: %T is not *Error", name, err)
		}
		if !strings.Contains(err.Error(), e.Peer.Short()) || !strings.Contains(err.Error(), inMsg) {
			t.Fatalf("%s: message %q lacks peer or %q", name, err, inMsg)
		}
	}
	_, err := a.rpc.Call(ctx, stranger, "echo", nil)
	check("unknown peer", err, ErrUnknownPeer, "")
	_, err = a.rpc.Call(ctx, b.id.ID, "nope", nil)
	check("no handler", err, ErrRefused, "no handler")
	_, err = a.rpc.Call(ctx, b.id.ID, "echo", make([]byte, 2<<10))
	check("request too large", err, ErrTooLarge, "")
	_, err = a.rpc.Call(ctx, b.id.ID, "fail", nil)
	check("remote error", err, ErrRemote, "disk on fire")
	_, err = a.rpc.Call(ctx, b.id.ID, "big", nil)
	check("response too large", err, ErrTooLarge, "")
	_, err = a.rpc.Call(ctx, b.id.ID, "panic", nil)
	check("handler panic", err, ErrRemote, "handler bug")
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = a.rpc.Call(cctx, b.id.ID, "echo", nil)
	check("cancelled ctx", err, ErrCancelled, "")
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled call does not unwrap to context.Canceled: %v", err)
	}
	// The connection survives all of the above.
	if resp, err := a.rpc.Call(ctx, b.id.ID, "echo", []byte("ok")); err != nil || string(resp) != "ok" {
		t.Fatalf("echo after errors: %q %v", resp, err)
	}
}

func testCancelReachesHandler(t *testing.T, c *cluster) {
	idx := startAll(c)
	a, b := c.nodes[0], c.nodes[1]
	started := make(chan struct{})
	ended := make(chan error, 1)
	mustHandle(t, b.rpc, "wait", func(ctx context.Context, _ membership.NodeID, _ []byte) ([]byte, error) {
		close(started)
		<-ctx.Done()
		ended <- ctx.Err()
		return nil, ctx.Err()
	}, 0)
	c.waitMesh(idx...)
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() {
		_, err := a.rpc.Call(ctx, b.id.ID, "wait", []byte("x"))
		errc <- err
	}()
	<-started
	cancel()
	if err := <-errc; !errors.Is(err, ErrCancelled) {
		t.Fatalf("caller got %v, want ErrCancelled", err)
	}
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("handler context did not end after the caller cancelled")
	}

	// A deadline behaves the same and unwraps to DeadlineExceeded.
	started = make(chan struct{})
	dctx, dcancel := context.WithTimeout(t.Context(), time.Second)
	defer dcancel()
	_, err := a.rpc.Call(dctx, b.id.ID, "wait", nil)
	if !errors.Is(err, ErrCancelled) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("deadline: got %v", err)
	}
	<-ended
}

func testProtocolLimit(t *testing.T, c *cluster) {
	idx := startAll(c)
	a, b := c.nodes[0], c.nodes[1]
	release := make(chan struct{})
	var running atomic.Int32
	entered := make(chan struct{}, 10)
	mustHandle(t, b.rpc, "slow", func(ctx context.Context, _ membership.NodeID, _ []byte) ([]byte, error) {
		running.Add(1)
		defer running.Add(-1)
		entered <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return []byte("done"), nil
	}, 2)
	mustHandle(t, b.rpc, "echo", echo, 0)
	c.waitMesh(idx...)
	ctx := t.Context()
	results := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := a.rpc.Call(ctx, b.id.ID, "slow", nil)
			results <- err
		}()
	}
	<-entered
	<-entered
	_, err := a.rpc.Call(ctx, b.id.ID, "slow", nil)
	if !errors.Is(err, ErrRefused) {
		t.Fatalf("third slow call: %v, want ErrRefused", err)
	}
	for range 20 {
		if resp, err := a.rpc.Call(ctx, b.id.ID, "echo", []byte("x")); err != nil || string(resp) != "x" {
			t.Fatalf("echo while slow is full: %q %v", resp, err)
		}
	}
	close(release)
	for range 2 {
		if err := <-results; err != nil {
			t.Fatalf("slow call: %v", err)
		}
	}
	if running.Load() != 0 {
		t.Fatal("handlers still running")
	}
	if got := statsOf(b.rpc, a.id.ID).RefusedStreams; got != 1 {
		t.Fatalf("refused streams counted %d, want 1", got)
	}
}

func statsOf(r RPC, peer membership.NodeID) PeerStats {
	switch r := r.(type) {
	case *Transport:
		return r.Stats(peer)
	case *MemTransport:
		return r.Stats(peer)
	}
	return PeerStats{}
}

// With every stream credit held by running handlers, the next call waits
// for a credit and fails by its deadline; once a handler finishes, calls
// flow again.
func testStreamCreditPushback(t *testing.T, c *cluster) {
	idx := startAll(c)
	a, b := c.nodes[0], c.nodes[1]
	release := make(chan struct{})
	entered := make(chan struct{}, 10)
	mustHandle(t, b.rpc, "slow", func(ctx context.Context, _ membership.NodeID, _ []byte) ([]byte, error) {
		entered <- struct{}{}
		<-release
		return nil, nil
	}, 4)
	mustHandle(t, b.rpc, "echo", echo, 4)
	c.waitMesh(idx...)
	results := make(chan error, 4)
	for range 4 {
		go func() { results <- a.rpc.Push(t.Context(), b.id.ID, "slow", nil) }()
	}
	for range 4 {
		<-entered
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	start := time.Now()
	_, err := a.rpc.Call(ctx, b.id.ID, "echo", nil)
	if !errors.Is(err, ErrCancelled) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("call with no credit left: %v, want ErrCancelled by deadline", err)
	}
	if d := time.Since(start); d < 2*time.Second {
		t.Fatalf("call failed after %v, before its deadline", d)
	}
	close(release)
	for range 4 {
		if err := <-results; err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.rpc.Call(t.Context(), b.id.ID, "echo", nil); err != nil {
		t.Fatalf("echo after release: %v", err)
	}
}

func testPartitionsHeal(t *testing.T, c *cluster) {
	idx := startAll(c)
	for _, n := range c.nodes {
		mustHandle(t, n.rpc, "echo", echo, 0)
	}
	c.waitMesh(idx...)
	before := make(map[[2]int]uint64)
	for i := range c.nodes {
		for j := range c.nodes {
			if i != j {
				before[[2]int{i, j}], _ = c.nodes[i].rpc.ConnID(c.nodes[j].id.ID)
			}
		}
	}
	cut := [][2]int{{0, 1}, {1, 2}}
	for _, p := range cut {
		c.partition(p[0], p[1])
	}
	for _, p := range cut {
		c.nodes[p[0]].events.waitDown(t, c.nodes[p[1]].id.ID, c.linkTimeout)
		c.nodes[p[1]].events.waitDown(t, c.nodes[p[0]].id.ID, c.linkTimeout)
	}
	// The uncut pair stays up on its original connection.
	if id, ok := c.nodes[0].rpc.ConnID(c.nodes[2].id.ID); !ok || id != before[[2]int{0, 2}] {
		t.Fatalf("uncut link 0-2 changed: %d %v", id, ok)
	}
	if _, err := c.nodes[0].rpc.Call(t.Context(), c.nodes[1].id.ID, "echo", nil); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("call across partition: %v", err)
	}
	for _, p := range cut {
		c.heal(p[0], p[1])
	}
	for _, p := range cut {
		for _, d := range [][2]int{p, {p[1], p[0]}} {
			id := c.nodes[d[0]].events.waitUp(t, c.nodes[d[1]].id.ID, before[d], 2*time.Minute)
			if id <= before[d] {
				t.Fatalf("conn id %d not newer than %d", id, before[d])
			}
			if resp, err := c.nodes[d[0]].rpc.Call(t.Context(), c.nodes[d[1]].id.ID, "echo", []byte("back")); err != nil || string(resp) != "back" {
				t.Fatalf("call after heal %v: %q %v", d, resp, err)
			}
		}
	}
}

func testMembershipChange(t *testing.T, c *cluster) {
	// v1: only nodes 0 and 1 are members (everyone agrees).
	c.setMembers(2, []int{0, 1}, 0, 1, 2)
	idx := startAll(c)
	for _, n := range c.nodes {
		mustHandle(t, n.rpc, "echo", echo, 0)
	}
	_ = idx
	c.waitMesh(0, 1)
	if _, err := c.nodes[0].rpc.Call(t.Context(), c.nodes[2].id.ID, "echo", nil); !errors.Is(err, ErrUnknownPeer) {
		t.Fatalf("call to non-member: %v", err)
	}
	// v3: node 2 joins.
	c.setMembers(3, []int{0, 1, 2}, 0, 1, 2)
	c.waitMesh(0, 1, 2)
	// v4: node 1 is removed (node 1 itself is told too).
	c.setMembers(4, []int{0, 2}, 0, 1, 2)
	c.nodes[0].events.waitDown(t, c.nodes[1].id.ID, 5*time.Second)
	c.nodes[2].events.waitDown(t, c.nodes[1].id.ID, 5*time.Second)
	if _, err := c.nodes[0].rpc.Call(t.Context(), c.nodes[1].id.ID, "echo", nil); !errors.Is(err, ErrUnknownPeer) {
		t.Fatalf("call to removed member: %v", err)
	}
	if resp, err := c.nodes[0].rpc.Call(t.Context(), c.nodes[2].id.ID, "echo", []byte("still")); err != nil || string(resp) != "still" {
		t.Fatalf("0->2 after removal: %q %v", resp, err)
	}
}

// A node that is partitioned away, removed while partitioned, and then
// healed (without learning of its removal) must stay out.
func testPartitionPlusRemoval(t *testing.T, c *cluster) {
	idx := startAll(c)
	for _, n := range c.nodes {
		mustHandle(t, n.rpc, "echo", echo, 0)
	}
	c.waitMesh(idx...)
	c.partition(0, 1)
	c.partition(1, 2)
	c.nodes[0].events.waitDown(t, c.nodes[1].id.ID, c.linkTimeout)
	c.nodes[2].events.waitDown(t, c.nodes[1].id.ID, c.linkTimeout)
	c.setMembers(2, []int{0, 2}, 0, 2) // node 1 still believes in v1
	c.heal(0, 1)
	c.heal(1, 2)
	// Give node 1 ample (virtual) time to retry.
	time.Sleep(30 * time.Second)
	for _, i := range []int{0, 2} {
		if _, up := lastUp(c.nodes[i].events.all(), c.nodes[1].id.ID); up {
			t.Fatalf("node %d reconnected to removed node 1: %v", i, c.nodes[i].events.all())
		}
	}
	if _, up := lastUp(c.nodes[1].events.all(), c.nodes[0].id.ID); up {
		t.Fatal("removed node 1 believes it is connected to 0")
	}
	if _, err := c.nodes[1].rpc.Call(t.Context(), c.nodes[0].id.ID, "echo", nil); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("removed node's call: %v", err)
	}
}

func testGracefulClose(t *testing.T, c *cluster) {
	idx := startAll(c)
	a, b := c.nodes[0], c.nodes[1]
	inHandler := make(chan struct{})
	mustHandle(t, b.rpc, "wait", func(ctx context.Context, _ membership.NodeID, _ []byte) ([]byte, error) {
		close(inHandler)
		<-ctx.Done()
		return nil, ctx.Err()
	}, 0)
	c.waitMesh(idx...)
	errc := make(chan error, 1)
	go func() {
		_, err := a.rpc.Call(t.Context(), b.id.ID, "wait", nil)
		errc <- err
	}()
	<-inHandler
	if err := b.rpc.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.rpc.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := <-errc; !errors.Is(err, ErrNotConnected) {
		t.Fatalf("call into closing peer: %v, want ErrNotConnected", err)
	}
	a.events.waitDown(t, b.id.ID, 5*time.Second)
	b.events.waitDown(t, a.id.ID, time.Second)
	if _, err := b.rpc.Call(t.Context(), a.id.ID, "wait", nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("call on closed transport: %v", err)
	}
}

func testPushOrder(t *testing.T, c *cluster) {
	idx := startAll(c)
	a, b := c.nodes[0], c.nodes[1]
	var got bytes.Buffer
	mustHandle(t, b.rpc, "seq", func(_ context.Context, _ membership.NodeID, m []byte) ([]byte, error) {
		got.Write(m)
		return nil, nil
	}, 0)
	c.waitMesh(idx...)
	var want bytes.Buffer
	for i := range 50 {
		m := []byte{byte(i)}
		want.Write(m)
		if err := a.rpc.Push(t.Context(), b.id.ID, "seq", m); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got.Bytes(), want.Bytes()) {
		t.Fatalf("pushes out of order: %v", got.Bytes())
	}
}
