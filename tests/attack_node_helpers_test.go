package tests

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/actors/abcasttest"
	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/membership"
	"github.com/abcast/abcast/quicremote/transport"
	"github.com/quic-go/quic-go"
)

// Attacks of issue 16 against whole nodes: three members on the kit's
// simulated network inside testing/synctest, node 0 the victim and node 1
// an honest peer (both real actors.Node over QUIC), member 2 the
// compromised one, with its real key, speaking the protocol by hand (a bare
// transport from abcasttest.Subnet.Raw, or quic-go itself). Every attack
// runs while the victim and the honest node publish to each other, and
// checks that the victim's heap growth stays within the memory bound
// (actors.Config.MemoryBound) of the test's configuration and that honest
// delivery goes on; it logs the peak, the bound and the honest throughput
// (RELIABILITY.md §8 collects them).
//
// Sizes: reduced by default and under the race detector, so the suite fits
// CI; ABCAST_ATTACK_FULL=1 runs the sizes (128 MiB frames, 32 MiB
// pushes, the default limits).

// attackFull reports whether the attacks run at the sizes.
func attackFull() bool { return os.Getenv("ABCAST_ATTACK_FULL") != "" }

// attackFor is how long (virtual time) an attack that lasts d lasts in
// this run: a third of it under the race detector, which makes every byte
// moved several times dearer in real time; long enough still for each
// limit to be reached and each timeout to pass.
func attackFor(d time.Duration) time.Duration {
	if raceBuild && !attackFull() {
		return d / 3
	}
	return d
}

// attackConfig is the configuration attacks run against: the defaults at
// full size; otherwise every limit that bounds what a peer can make us
// hold is scaled down (so an attack can reach it quickly and the bound
// means something against the heap of a test process).
func attackConfig() (actors.Config, transport.Config) {
	cfg := actors.DefaultConfig()
	tcfg := transport.DefaultConfig()
	if attackFull() {
		return cfg, tcfg
	}
	tcfg.MaxFrameSize = 4 << 20
	tcfg.MaxBytesPerPeer = 16 << 20
	tcfg.InitialConnectionWindow, tcfg.MaxConnectionWindow = 1536<<10, 3<<20
	tcfg.InitialStreamWindow, tcfg.MaxStreamWindow = 512<<10, 1<<20
	cfg.Wire.MaxPayloadLen = 4 << 20
	cfg.Receiver.SlotLimit = 2000
	cfg.Sender.MaxSlots = 2000
	cfg.Receiver.MaxFetchSize = 4 << 20
	cfg.Receiver.MaxFetchBytesPerPeer = 4 << 20
	cfg.Receiver.MaxPushSize = 256 << 10
	cfg.Sender.MaxPushSize = 256 << 10
	cfg.Receiver.DeliveryCredits = 16
	cfg.Remote.MaxWatchesPerPeer = 1024
	cfg.Remote.MaxBatchBytes = 256 << 10
	return cfg, tcfg
}

// nodeAttack is a running attack set-up. The roles go by NodeID: the
// hostile member is the lowest of the three, so it is the one that dials
// (a hostile member speaking QUIC itself needs no listener), and the
// victim and the honest node are the other two.
type nodeAttack struct {
	victim, honest, hostile int

	t     *testing.T
	s     *abcasttest.Subnet
	ch    *abcasttest.Channel
	cfg   actors.Config
	tcfg  transport.Config
	bound actors.MemoryBound
	raw   transport.RPC // the hostile member's bare transport, if any

	base uint64
	peak peakTracker
	stop chan struct{}
	wg   sync.WaitGroup
	// stoppers end the loads still running when the test ends early.
	stoppers []func()
}

// newNodeAttack starts the victim and the honest node with cfg and tcfg,
// opens the test channel on both (payloads checked by verifyPayload), and,
// if rawCfg is set, starts the hostile member as a bare transport that has
// announced the channel to both. onStart, if set, runs as the kit's
// OnStart with the roles known.
func newNodeAttack(t *testing.T, cfg actors.Config, tcfg transport.Config, rawCfg *transport.Config, onStart func(a *nodeAttack, i int, node *actors.Node)) *nodeAttack {
	t.Helper()
	cfg.Transport = tcfg
	a := &nodeAttack{t: t, cfg: cfg, tcfg: tcfg, bound: cfg.MemoryBound(3, 1), stop: make(chan struct{})}
	opt := abcasttest.Options{Config: cfg, Transport: tcfg, Latency: 5 * time.Millisecond}
	if onStart != nil {
		opt.OnStart = func(i int, node *actors.Node) { onStart(a, i, node) }
	}
	a.bound.Terms = slices.Clone(a.bound.Terms)
	a.s = abcasttest.NewSubnet(t, 3, opt)
	order := []int{0, 1, 2}
	slices.SortFunc(order, func(i, j int) int { return a.s.ID(i).Compare(a.s.ID(j)) })
	a.hostile, a.victim, a.honest = order[0], order[1], order[2]
	a.s.Start(a.victim)
	a.s.Start(a.honest)
	a.ch = a.s.OpenChannel(hostileChannel, abcasttest.ChannelOptions{Verify: verifyPayload})
	if rawCfg != nil {
		a.raw = a.s.Raw(a.hostile, *rawCfg)
		waitRawUp(t, a.raw, a.s.ID(a.victim), a.s.ID(a.honest))
		for _, i := range []int{a.victim, a.honest} {
			must(t, abcasttest.Announce(context.Background(), a.raw, a.s.ID(i), hostileChannel))
		}
	}
	t.Cleanup(a.end)
	return a
}

// victimID and friends name the members.
func (a *nodeAttack) victimID() membership.NodeID  { return a.s.ID(a.victim) }
func (a *nodeAttack) hostileID() membership.NodeID { return a.s.ID(a.hostile) }

// startSampling records the baseline heap and samples the retained heap
// every interval of virtual time until end.
func (a *nodeAttack) startSampling(interval time.Duration) {
	a.base = retainedHeap()
	a.peak.see(a.base)
	a.wg.Go(func() {
		for {
			select {
			case <-a.stop:
				return
			case <-time.After(interval):
				a.peak.see(retainedHeap())
			}
		}
	})
}

func (a *nodeAttack) end() {
	for _, stop := range a.stoppers {
		stop()
	}
	select {
	case <-a.stop:
	default:
		close(a.stop)
	}
	a.wg.Wait()
}

// checkHeap logs the retained heap's growth against limit (the memory
// bound's terms the attack can fill, plus slack for what else lives in the
// test process: the honest node, the attacker's own side, the recorders)
// and fails the test beyond it. It returns the growth.
func (a *nodeAttack) checkHeap(what string, limit uint64) uint64 {
	a.t.Helper()
	a.peak.see(retainedHeap())
	growth := uint64(0)
	if p := a.peak.get(); p > a.base {
		growth = p - a.base
	}
	a.t.Logf("%s: retained heap base %.1f MiB, peak %.1f MiB, growth %.1f MiB; limit %.1f MiB (memory bound per peer %.1f MiB)",
		what, mib(a.base), mib(a.peak.get()), mib(growth), mib(limit), mib(uint64(a.bound.PerPeer)))
	if growth > limit {
		a.t.Errorf("%s: the victim's heap grew %.1f MiB, above %.1f MiB", what, mib(growth), mib(limit))
	}
	return growth
}

// attackSlack is what the test process may hold besides the victim's
// charges: the honest node and its connection, the attacker's side, the
// recorders, the simulated network's queues.
const attackSlack = 12 << 20

// perPeerLimit is the check most attacks make: the whole per-peer bound of
// the hostile member, plus slack.
func (a *nodeAttack) perPeerLimit() uint64 { return uint64(a.bound.PerPeer) + attackSlack }

// honestLoad publishes from the victim and the honest node to each other
// at a steady rate while an attack runs, aborts what was delivered (as a
// replica prunes old heights, so the recorders do not grow), and measures
// what got through.
type honestLoad struct {
	a        *nodeAttack
	interval time.Duration
	sizes    []int

	mu        sync.Mutex
	published map[broadcast.ArtifactID]honestPub
	latencies []time.Duration
	bytes     int
	start     time.Time
	stopped   time.Time
	stop      chan struct{}
	once      sync.Once
	done      chan struct{}
}

type honestPub struct {
	from, to int
	at       time.Time
	size     int
}

// startHonest publishes one artifact from each honest side every interval,
// cycling through sizes (pushed ones below the push threshold, fetched
// ones above).
func (a *nodeAttack) startHonest(interval time.Duration, sizes ...int) *honestLoad {
	h := &honestLoad{a: a, interval: interval, sizes: sizes, published: map[broadcast.ArtifactID]honestPub{},
		start: time.Now(), stop: make(chan struct{}), done: make(chan struct{})}
	go h.run()
	a.stoppers = append(a.stoppers, h.halt)
	return h
}

// halt stops publishing (once) and waits for the publisher to end.
func (h *honestLoad) halt() {
	h.once.Do(func() { close(h.stop) })
	<-h.done
}

func (h *honestLoad) run() {
	defer close(h.done)
	seq := 0
	tick := time.NewTicker(h.interval)
	defer tick.Stop()
	for {
		h.collect()
		select {
		case <-h.stop:
			return
		case <-tick.C:
		}
		for _, from := range []int{h.a.victim, h.a.honest} {
			seq++
			id := broadcast.ArtifactID(fmt.Sprintf("honest-%d-%d", from, seq))
			size := h.sizes[seq%len(h.sizes)]
			if err := h.a.ch.Publish(from, broadcast.Artifact{ID: id, Payload: payloadFor(id, size)}); err != nil {
				select {
				case <-h.stop: // the test is ending
				default:
					h.a.t.Errorf("honest publish: %v", err)
				}
				return
			}
			h.mu.Lock()
			to := h.a.victim
			if from == to {
				to = h.a.honest
			}
			h.published[id] = honestPub{from: from, to: to, at: time.Now(), size: size}
			h.mu.Unlock()
		}
	}
}

// collect records the deliveries since the last call and aborts what was
// delivered.
func (h *honestLoad) collect() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for id, p := range h.published {
		at, ok := h.a.ch.Recorder(p.to).DeliveredAt(id)
		if !ok {
			continue
		}
		h.latencies = append(h.latencies, at.Sub(p.at))
		h.bytes += p.size
		delete(h.published, id)
		if err := h.a.ch.Abort(p.from, id); err != nil {
			h.a.t.Errorf("honest abort: %v", err)
		}
	}
}

// finish stops publishing, waits (virtual time) for everything published
// to be delivered, and returns what was measured.
func (h *honestLoad) finish(within time.Duration) honestResult {
	h.a.t.Helper()
	h.halt()
	h.stopped = time.Now()
	err := abcasttest.Eventually(within, func() error {
		h.collect()
		h.mu.Lock()
		defer h.mu.Unlock()
		if n := len(h.published); n > 0 {
			return fmt.Errorf("%d honest artifacts not delivered", n)
		}
		return nil
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	r := honestResult{delivered: len(h.latencies), missing: len(h.published), bytes: h.bytes, window: h.stopped.Sub(h.start)}
	lat := slices.Clone(h.latencies)
	slices.Sort(lat)
	if len(lat) > 0 {
		r.p50, r.p99 = lat[len(lat)/2], lat[len(lat)*99/100]
	}
	if err != nil {
		h.a.t.Errorf("honest delivery during the attack: %v", err)
	}
	return r
}

// honestResult is what the honest load measured, in virtual time.
type honestResult struct {
	delivered, missing int
	bytes              int
	window             time.Duration
	p50, p99           time.Duration
}

func (r honestResult) String() string {
	return fmt.Sprintf("honest: %d delivered in %.1f s (%.1f/s, %.1f KB/s), %d missing, latency p50 %v p99 %v",
		r.delivered, r.window.Seconds(), float64(r.delivered)/r.window.Seconds(), float64(r.bytes)/1e3/r.window.Seconds(), r.missing, r.p50, r.p99)
}

// dialRaw connects the hostile member to the victim by hand, over quic-go
// with the member's real key, and performs the welcome exchange (the
// victim then counts it up): a member that speaks the wire protocol
// itself, free to leave answers unread or frames unfinished. The hostile
// member must not also run as Raw.
func (a *nodeAttack) dialRaw() *quic.Conn {
	a.t.Helper()
	udp, err := net.ResolveUDPAddr("udp", a.s.Addr(a.hostile))
	must(a.t, err)
	qt := &quic.Transport{Conn: a.s.Network().Listen(udp)}
	a.t.Cleanup(func() { qt.Close() })
	to, err := net.ResolveUDPAddr("udp", a.s.Addr(a.victim))
	must(a.t, err)
	id := a.s.Identity(a.hostile)
	tlsConf := membership.ClientTLSConfig(id, membership.LatestMembers(a.s.Registry()), a.victimID(), []string{transport.ALPN})
	conn, err := qt.Dial(context.Background(), to, tlsConf, &quic.Config{MaxIdleTimeout: a.tcfg.IdleTimeout, KeepAlivePeriod: a.tcfg.KeepAlive})
	must(a.t, err)
	a.t.Cleanup(func() { conn.CloseWithError(0, "") })
	str, err := conn.OpenStreamSync(context.Background())
	must(a.t, err)
	_, err = str.Write(rawWelcome(id.ID))
	must(a.t, err)
	must(a.t, str.Close())
	got, err := io.ReadAll(str)
	must(a.t, err)
	if want := rawWelcome(a.victimID()); string(got) != string(want) {
		a.t.Fatalf("victim's welcome %q, want %q", got, want)
	}
	must(a.t, abcasttest.Eventually(time.Minute, func() error {
		if _, up := a.victimTransport().ConnID(a.hostileID()); !up {
			return fmt.Errorf("the victim does not count the hostile member up")
		}
		return nil
	}))
	return conn
}

// victimTransport is the victim node's QUIC transport.
func (a *nodeAttack) victimTransport() *transport.Transport {
	return a.s.Node(a.victim).Transport().(*transport.Transport)
}

// waitRawUp waits until the raw member has a connection to every one of
// peers.
func waitRawUp(t *testing.T, raw transport.RPC, peers ...membership.NodeID) {
	t.Helper()
	must(t, abcasttest.Eventually(time.Minute, func() error {
		for _, p := range peers {
			if _, up := raw.ConnID(p); !up {
				return fmt.Errorf("raw member not connected to %s", p.Short())
			}
		}
		return nil
	}))
}
