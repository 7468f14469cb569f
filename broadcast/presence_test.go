package broadcast

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"
)

// presenceNode is one node of a hand-stepped pair: its core and what its
// receivers accept (the AcceptPeer/DropPeer effects applied).
type presenceNode struct {
	id       PeerID
	core     *Presence
	accepts  map[string]ConnID // channel -> the connection on which it accepts the other node (0: none)
	sessions map[string]uint64
}

type helloMsg struct {
	from, to PeerID
	conn     ConnID
	version  uint64
	channels []string
}

func (n *presenceNode) apply(t *testing.T, eff []Effect, out *[]helloMsg, other *presenceNode) {
	t.Helper()
	for _, e := range eff {
		switch e := e.(type) {
		case SendHello:
			*out = append(*out, helloMsg{from: n.id, to: e.Peer, conn: e.Conn, version: e.Version, channels: e.Channels})
		case StartSession:
			// The safety property: if the peer has the channel open, its
			// receiver accepts us before our first update can leave. (If it
			// closed the channel and we have not heard yet, our updates are
			// refused until its hello arrives and ends the session.)
			if slices.Contains(other.core.Channels(), e.Channel) && other.accepts[e.Channel] != other.core.peers[n.id].conn {
				t.Fatalf("%s starts a session on %s while %s does not accept it", n.id, e.Channel, other.id)
			}
			if n.sessions[e.Channel] != 0 {
				t.Fatalf("%s starts a second session on %s", n.id, e.Channel)
			}
			n.sessions[e.Channel] = e.Session
		case EndSession:
			delete(n.sessions, e.Channel)
		case AcceptPeer:
			n.accepts[e.Channel] = e.Conn
		case DropPeer:
			n.accepts[e.Channel] = 0
		}
	}
	if err := n.core.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
}

func newPresenceNode(id PeerID) *presenceNode {
	return &presenceNode{id: id, core: NewPresence(time.Second), accepts: map[string]ConnID{}, sessions: map[string]uint64{}}
}

// A channel runs a session with a peer exactly when both have it open,
// whatever the order of opens, closes, hellos and their acknowledgements;
// a node never starts one before the peer accepts it (checked on every
// step), and a connection change restarts the sessions. Randomized; the
// seed is printed.
func TestPresenceSessionsFollowBothSides(t *testing.T) {
	seed := testSeed(t)
	for round := range 200 {
		rng := rand.New(rand.NewPCG(seed, uint64(round)))
		a, b := newPresenceNode("a"), newPresenceNode("b")
		nodes := map[PeerID]*presenceNode{"a": a, "b": b}
		other := func(n *presenceNode) *presenceNode {
			if n == a {
				return b
			}
			return a
		}
		var wire []helloMsg
		type ack struct {
			to      PeerID
			conn    ConnID
			version uint64
		}
		var acks []ack
		conn := ConnID(1)
		a.apply(t, a.core.PeerUp("b", conn), &wire, b)
		b.apply(t, b.core.PeerUp("a", conn), &wire, a)
		channels := []string{"x", "y"}
		for step := 0; step < 60; step++ {
			n := a
			if rng.IntN(2) == 1 {
				n = b
			}
			if os.Getenv("PRESENCE_TRACE") != "" {
				t.Logf("round %d step %d: a sessions %v acked %v; b sessions %v acked %v; wire %v acks %v", round, step, a.sessions, a.core.peers["b"].acked, b.sessions, b.core.peers["a"].acked, wire, acks)
			}
			switch k := rng.IntN(10); {
			case k < 2:
				c := channels[rng.IntN(len(channels))]
				if rng.IntN(2) == 0 {
					n.apply(t, n.core.Open(c), &wire, other(n))
				} else {
					n.apply(t, n.core.Close(c), &wire, other(n))
					n.accepts[c] = 0 // a closed channel's receiver is gone
				}
			case k < 6 && len(wire) > 0:
				i := rng.IntN(len(wire)) // any order
				m := wire[i]
				wire = slices.Delete(wire, i, i+1)
				to := nodes[m.to]
				eff, err := to.core.HelloReceived(m.from, m.conn, m.version, m.channels)
				if err != nil && !errors.Is(err, ErrStale) {
					t.Fatalf("seed %d round %d: %v", seed, round, err)
				}
				to.apply(t, eff, &wire, nodes[m.from])
				if err == nil {
					acks = append(acks, ack{to: m.from, conn: m.conn, version: m.version})
				}
			case k < 9 && len(acks) > 0:
				i := rng.IntN(len(acks))
				m := acks[i]
				acks = slices.Delete(acks, i, i+1)
				to := nodes[m.to]
				to.apply(t, to.core.HelloAcked(other(to).id, m.conn, m.version), &wire, other(to))
			case k == 9 && rng.IntN(4) == 0:
				// The connection is replaced: what was in flight is lost.
				for _, n := range []*presenceNode{a, b} {
					n.apply(t, n.core.PeerDown(other(n).id, conn), &wire, other(n))
				}
				wire, acks = nil, nil
				conn++
				a.apply(t, a.core.PeerUp("b", conn), &wire, b)
				b.apply(t, b.core.PeerUp("a", conn), &wire, a)
			}
		}
		// Deliver everything left, in order, until quiet.
		for len(wire) > 0 || len(acks) > 0 {
			for len(wire) > 0 {
				m := wire[0]
				wire = wire[1:]
				to := nodes[m.to]
				eff, err := to.core.HelloReceived(m.from, m.conn, m.version, m.channels)
				to.apply(t, eff, &wire, nodes[m.from])
				if err == nil {
					acks = append(acks, ack{to: m.from, conn: m.conn, version: m.version})
				}
			}
			for len(acks) > 0 {
				m := acks[0]
				acks = acks[1:]
				to := nodes[m.to]
				to.apply(t, to.core.HelloAcked(other(to).id, m.conn, m.version), &wire, other(to))
			}
		}
		for _, c := range channels {
			both := slices.Contains(a.core.Channels(), c) && slices.Contains(b.core.Channels(), c)
			for _, n := range []*presenceNode{a, b} {
				if got := n.sessions[c] != 0; got != both {
					t.Fatalf("seed %d round %d: %s session on %s = %v, want %v (open: a %v, b %v)",
						seed, round, n.id, c, got, both, a.core.Channels(), b.core.Channels())
				}
				if got := n.accepts[c] == conn; got != both {
					t.Fatalf("seed %d round %d: %s accepts on %s = %v, want %v", seed, round, n.id, c, got, both)
				}
			}
		}
	}
}

// A hello from an older connection or version changes nothing.
func TestPresenceStaleHelloIgnored(t *testing.T) {
	p := NewPresence(time.Second)
	p.Open("x")
	p.PeerUp("b", 2)
	if _, err := p.HelloReceived("b", 2, 5, []string{"x"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		conn    ConnID
		version uint64
	}{{1, 9}, {2, 5}, {2, 4}} {
		eff, err := p.HelloReceived("b", tc.conn, tc.version, nil)
		if !errors.Is(err, ErrStale) || len(eff) != 0 {
			t.Fatalf("hello conn %d v%d: eff %v err %v, want stale and nothing", tc.conn, tc.version, eff, err)
		}
	}
	if got := p.PeerChannels("b"); !slices.Equal(got, []string{"x"}) {
		t.Fatalf("peer channels %v after stale hellos", got)
	}
}

// A failed hello is resent after the retry delay, not before.
func TestPresenceFailedHelloRetried(t *testing.T) {
	p := NewPresence(time.Second)
	eff := p.PeerUp("b", 1)
	if len(eff) != 1 {
		t.Fatalf("PeerUp: %v", eff)
	}
	h := eff[0].(SendHello)
	t0 := time.Unix(100, 0)
	eff = p.HelloFailed("b", 1, h.Version, t0)
	if len(eff) != 1 || eff[0].(RetryHelloAt).At != t0.Add(time.Second) {
		t.Fatalf("HelloFailed: %v", eff)
	}
	if eff := p.Tick(t0.Add(999 * time.Millisecond)); len(eff) != 0 {
		t.Fatalf("resent early: %v", eff)
	}
	eff = p.Tick(t0.Add(time.Second))
	if len(eff) != 1 {
		t.Fatalf("not resent: %v", eff)
	}
	if _, ok := eff[0].(SendHello); !ok {
		t.Fatalf("resent %v", eff)
	}
}

// Each CheckInvariants rule reports a state broken on purpose.
func TestPresenceInvariantsCatchBrokenState(t *testing.T) {
	mk := func() *Presence {
		p := NewPresence(time.Second)
		p.Open("x")
		p.PeerUp("b", 1)
		p.HelloReceived("b", 1, 1, []string{"x"})
		p.HelloAcked("b", 1, p.Version())
		if p.Session("x", "b") == 0 {
			panic("setup: no session")
		}
		return p
	}
	if err := mk().CheckInvariants(); err != nil {
		t.Fatal(err)
	}
	breaks := map[string]func(*Presence){
		"session of a closed channel":    func(p *Presence) { delete(p.open, "x") },
		"session without announcement":   func(p *Presence) { p.peers["b"].theirs = nil },
		"session on an older hello":      func(p *Presence) { p.peers["b"].theirsConn = 0 },
		"session without acknowledgment": func(p *Presence) { p.peers["b"].acked = nil },
		"session number never issued":    func(p *Presence) { p.peers["b"].sessions["x"] = p.nextSession + 1 },
		"hello beyond our version":       func(p *Presence) { p.peers["b"].inflight = p.version + 1 },
		"down peer with sessions":        func(p *Presence) { p.peers["b"].up = false },
		"duplicate session numbers": func(p *Presence) {
			p.open["y"] = true
			p.peers["b"].theirs["y"], p.peers["b"].acked["y"] = true, true
			p.peers["b"].sessions["y"] = p.peers["b"].sessions["x"]
		},
	}
	for name, brk := range breaks {
		p := mk()
		brk(p)
		if err := p.CheckInvariants(); err == nil {
			t.Errorf("%s: not reported", name)
		} else {
			t.Logf("%s: %v", name, fmt.Sprint(err))
		}
	}
}

// testSeed returns ABCAST_SEED if set, else a seed from the clock; it is
// logged either way so a failure can be replayed.
func testSeed(t *testing.T) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("ABCAST_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("ABCAST_SEED=%q: %v", v, err)
		}
		seed = n
	}
	t.Logf("seed %d (replay with ABCAST_SEED=%d)", seed, seed)
	return seed
}
