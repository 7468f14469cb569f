package demo

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/actors/abcasttest/faultnet"
	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/membership"
)

// The two channels of the consensus-like workload.
const (
	chBlocks = "blocks"
	chSigs   = "signatures"
)

var channelNames = []string{chBlocks, chSigs}

// key names one artifact in the subnet.
type key struct {
	ch string
	id broadcast.ArtifactID
}

func (k key) String() string { return k.ch + "/" + string(k.id) }

// member is one node of the demo subnet.
type member struct {
	idx   int
	ident *membership.Identity
	addr  string
	conn  net.PacketConn // its socket behind the demo's network, until the node owns it
	node  *actors.Node
	chans map[string]*actors.Channel
	sink  *sink

	published, aborted, publishErrors atomic.Uint64
}

func (m *member) name() string { return fmt.Sprintf("n%d", m.idx) }

// record is what the ledger knows of one published artifact.
type record struct {
	publisher int
	at        time.Time // when it was published
	aborted   bool
}

// run is one demo run.
type run struct {
	o       Options
	start   time.Time
	members []*member

	outMu sync.Mutex

	ledgerMu sync.Mutex
	ledger   map[key]*record

	cutMu sync.Mutex
	cuts  map[[2]int]bool
	// net carries every node's packets, so links can be cut. Wrapping a
	// socket hides the *net.UDPConn from quic-go, which then cannot use
	// segmentation offload: fine for a demo, not for production.
	net *faultnet.Network

	watchers   sync.WaitGroup // recovery watchers
	recMu      sync.Mutex
	recoveries []string
	done       chan struct{} // closed when the run ends
}

// Run starts the subnet, runs the workload for o.Duration (or until ctx
// ends or a "quit" command), heals every link, waits for the subnet to
// converge and returns the verdict. An error means the subnet could not
// be set up; a failed guarantee is a Verdict with OK false.
func Run(ctx context.Context, o Options) (*Verdict, error) {
	if err := o.fill(); err != nil {
		return nil, err
	}
	r := &run{o: o, ledger: map[key]*record{}, cuts: map[[2]int]bool{}, done: make(chan struct{}), net: faultnet.New(0, 0, 0)}
	defer close(r.done)
	if err := r.startNodes(); err != nil {
		r.closeNodes()
		return nil, err
	}
	defer r.closeNodes()
	r.start = time.Now()
	if err := r.waitConnected(30 * time.Second); err != nil {
		return nil, err
	}
	r.printf("subnet of %d nodes up (full mesh of QUIC connections with mutual TLS) in %v\n", o.Nodes, time.Since(r.start).Round(time.Millisecond))
	r.printf("workload: %g heights/s per node, blocks %s..%s on %q, signatures %s on %q, %d heights kept live, every %s\n",
		o.Rate, FormatBytes(uint64(o.MinSize)), FormatBytes(uint64(o.MaxSize)), chBlocks, FormatBytes(uint64(o.MinSize)), chSigs, o.Keep, reproposeText(o.ReproposeEvery))
	r.start = time.Now()

	cmds := make(chan string)
	if o.Commands != nil {
		go readCommands(o.Commands, cmds, r.done)
	}

	pubCtx, stopPublishing := context.WithCancel(ctx)
	var pubs sync.WaitGroup
	for _, m := range r.members {
		pubs.Add(1)
		go func() {
			defer pubs.Done()
			r.publish(pubCtx, m)
		}()
	}

	faults := slices.Clone(o.Faults)
	slices.SortStableFunc(faults, func(a, b FaultStep) int { return int(a.At - b.At) })
	table := time.NewTicker(o.Interval)
	defer table.Stop()
	end := time.NewTimer(o.Duration)
	defer end.Stop()
	r.printHeader()
workload:
	for {
		var nextFault <-chan time.Time
		if len(faults) > 0 {
			nextFault = time.After(time.Until(r.start.Add(faults[0].At)))
		}
		select {
		case <-ctx.Done():
			r.event("interrupted: ending the workload")
			break workload
		case <-end.C:
			break workload
		case <-nextFault:
			r.setLink(faults[0].A, faults[0].B, faults[0].Cut, "schedule")
			faults = faults[1:]
		case cmd := <-cmds:
			if r.command(cmd) {
				r.event("quit: ending the workload")
				break workload
			}
		case <-table.C:
			r.printTable()
		}
	}
	stopPublishing()
	pubs.Wait()
	if o.KeepCuts {
		r.event("workload over; waiting up to %v for the subnet to converge (cut links stay cut)", o.Settle)
	} else {
		r.event("workload over; healing every link and waiting up to %v for the subnet to converge", o.Settle)
		r.healAll("end of workload")
	}

	settleStart := time.Now()
	settle := time.NewTimer(o.Settle)
	defer settle.Stop()
	poll := time.NewTicker(50 * time.Millisecond)
	defer poll.Stop()
	converged := false
settling:
	for {
		select {
		case <-poll.C:
			if p := r.pending(); p.missing == 0 && p.stillHeld == 0 {
				converged = true
				break settling
			}
		case <-table.C:
			r.printTable()
		case cmd := <-cmds:
			r.command(cmd)
		case <-settle.C:
			break settling
		}
	}
	r.printTable()
	if converged {
		r.event("converged %v after the workload", time.Since(settleStart).Round(time.Millisecond))
	} else {
		r.event("did not converge within %v", o.Settle)
	}
	v := r.verdict()
	r.printSummary(v)
	return v, nil
}

func reproposeText(n int) string {
	switch n {
	case 0:
		return "block final when published"
	case 1:
		return "height re-proposed (first block aborted at once)"
	}
	return strconv.Itoa(n) + "th height re-proposed (first block aborted at once)"
}

func (r *run) startNodes() error {
	o := r.o
	var ms []membership.Member
	for i := range o.Nodes {
		ident, err := membership.GenerateIdentity(rand.Reader)
		if err != nil {
			return err
		}
		pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return fmt.Errorf("node %d: %w", i, err)
		}
		m := &member{idx: i, ident: ident, addr: pc.LocalAddr().String(), conn: r.net.Wrap(pc), chans: map[string]*actors.Channel{}, sink: newSink()}
		r.members = append(r.members, m)
		ms = append(ms, ident.Member(m.addr))
	}
	snap, err := membership.NewSnapshot(1, ms...)
	if err != nil {
		return err
	}
	registry, err := membership.NewStaticSource(snap)
	if err != nil {
		return err
	}
	cfg := actors.DefaultConfig()
	cfg.Transport = o.Transport
	for _, m := range r.members {
		conn := m.conn
		m.node, err = actors.Start(cfg, m.ident, registry, conn, o.Log.With().Int("idx", m.idx).Logger())
		if err != nil {
			m.conn = nil // Start closed it
			return fmt.Errorf("node %d: %w", m.idx, err)
		}
		for _, name := range channelNames {
			ch, err := m.node.OpenChannel(actors.ChannelConfig{Name: name, Admit: broadcast.AdmitAll, Consume: m.sink.consumer(name)})
			if err != nil {
				return fmt.Errorf("node %d: %w", m.idx, err)
			}
			m.chans[name] = ch
		}
	}
	return nil
}

func (r *run) closeNodes() {
	var wg sync.WaitGroup
	for _, m := range r.members {
		switch {
		case m.node != nil:
			wg.Add(1)
			go func() {
				defer wg.Done()
				m.node.Close()
			}()
		case m.conn != nil:
			m.conn.Close()
		}
	}
	wg.Wait()
	r.watchers.Wait()
}

// waitConnected polls until every node has a connection to every other.
func (r *run) waitConnected(within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		ok := true
		for _, m := range r.members {
			if len(m.node.Transport().Peers()) != len(r.members)-1 {
				ok = false
			}
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the subnet did not connect within %v", within)
		}
		time.Sleep(20 * time.Millisecond) // polling for connectivity, with a deadline
	}
}

// publish is one node's consensus-like workload: at every height a block
// and a signature; heights older than Keep are obsolete and aborted.
func (r *run) publish(ctx context.Context, m *member) {
	rng := mrand.New(mrand.NewPCG(r.o.Seed, uint64(m.idx)))
	interval := time.Duration(float64(time.Second) / r.o.Rate)
	// Stagger the nodes so they do not all publish in the same instant.
	stagger := time.NewTimer(interval * time.Duration(m.idx) / time.Duration(len(r.members)))
	select {
	case <-ctx.Done():
		stagger.Stop()
		return
	case <-stagger.C:
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	live := map[uint64][]key{}
	for h := uint64(1); ; h++ {
		block := fmt.Sprintf("n%d/h%d", m.idx, h)
		if k, ok := r.publishOne(m, chBlocks, block, h, r.blockSize(rng.Float64()), rng); ok {
			live[h] = append(live[h], k)
		}
		if n := r.o.ReproposeEvery; n > 0 && h%uint64(n) == 0 {
			// A better proposal for the same height makes the first
			// one obsolete at once, possibly while peers fetch it.
			if r.abortOne(m, key{chBlocks, broadcast.ArtifactID(block)}) {
				live[h] = slices.DeleteFunc(live[h], func(k key) bool { return k.id == broadcast.ArtifactID(block) })
			}
			if k, ok := r.publishOne(m, chBlocks, block+"/r1", h, r.blockSize(rng.Float64()), rng); ok {
				live[h] = append(live[h], k)
			}
		}
		if k, ok := r.publishOne(m, chSigs, fmt.Sprintf("n%d/h%d/sig", m.idx, h), h, r.o.MinSize, rng); ok {
			live[h] = append(live[h], k)
		}
		if old := h - uint64(r.o.Keep); h > uint64(r.o.Keep) {
			for _, k := range live[old] {
				r.abortOne(m, k)
			}
			delete(live, old)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// blockSize draws log-uniformly from [MinSize, MaxSize] given u in [0,1).
func (r *run) blockSize(u float64) int {
	lo, hi := float64(r.o.MinSize), float64(r.o.MaxSize)
	if hi <= lo {
		return r.o.MinSize
	}
	return int(lo * math.Pow(hi/lo, u))
}

func (r *run) publishOne(m *member, ch, id string, height uint64, size int, rng *mrand.Rand) (key, bool) {
	k := key{ch, broadcast.ArtifactID(id)}
	a := makeArtifact(id, height, size, rng, time.Now())
	a.LatencySensitive = ch == chSigs
	// The ledger learns of it first, so no delivery can come before it.
	r.ledgerMu.Lock()
	r.ledger[k] = &record{publisher: m.idx, at: time.Now()}
	r.ledgerMu.Unlock()
	if err := m.chans[ch].Publish(a); err != nil {
		r.ledgerMu.Lock()
		delete(r.ledger, k)
		r.ledgerMu.Unlock()
		m.publishErrors.Add(1)
		if errors.Is(err, actors.ErrClosed) {
			return k, false
		}
		r.event("%s: publish %s: %v", m.name(), k, err)
		return k, false
	}
	m.published.Add(1)
	return k, true
}

func (r *run) abortOne(m *member, k key) bool {
	if err := m.chans[k.ch].Abort(k.id); err != nil {
		if !errors.Is(err, actors.ErrClosed) {
			r.event("%s: abort %s: %v", m.name(), k, err)
		}
		return false
	}
	r.ledgerMu.Lock()
	r.ledger[k].aborted = true
	r.ledgerMu.Unlock()
	m.aborted.Add(1)
	return true
}

// command applies one interactive command; it reports whether to quit.
func (r *run) command(line string) bool {
	fs := strings.Fields(line)
	if len(fs) == 0 {
		return false
	}
	verb := fs[0][:1]
	if verb == "q" {
		return true
	}
	if verb == "h" && len(fs) == 1 {
		r.healAll("command")
		return false
	}
	if (verb == "c" || verb == "h") && len(fs) == 3 {
		a, errA := strconv.Atoi(fs[1])
		b, errB := strconv.Atoi(fs[2])
		if errA == nil && errB == nil && a != b && a >= 0 && b >= 0 && a < len(r.members) && b < len(r.members) {
			r.setLink(a, b, verb == "c", "command")
			return false
		}
	}
	r.event("unknown command %q: try \"cut 0 1\", \"heal 0 1\", \"heal\" or \"quit\"", line)
	return false
}

func readCommands(in io.Reader, out chan<- string, done <-chan struct{}) {
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		select {
		case out <- sc.Text():
		case <-done:
			return
		}
	}
}

// setLink cuts or heals the link between nodes a and b, on both ends.
func (r *run) setLink(a, b int, cut bool, why string) {
	if a > b {
		a, b = b, a
	}
	link := [2]int{a, b}
	r.cutMu.Lock()
	was := r.cuts[link]
	if cut {
		r.cuts[link] = true
	} else {
		delete(r.cuts, link)
	}
	r.cutMu.Unlock()
	ma, mb := r.members[a], r.members[b]
	if cut {
		r.net.Cut(ma.addr, mb.addr)
	} else {
		r.net.Heal(ma.addr, mb.addr)
	}
	switch {
	case cut && !was:
		r.event("cut link %d-%d (%s): every packet between n%d and n%d is dropped", a, b, why, a, b)
	case !cut && was:
		r.event("healed link %d-%d (%s)", a, b, why)
		r.watchRecovery(a, b)
	}
}

func (r *run) healAll(why string) {
	r.cutMu.Lock()
	var links [][2]int
	for l := range r.cuts {
		links = append(links, l)
	}
	r.cutMu.Unlock()
	slices.SortFunc(links, func(x, y [2]int) int { return x[0]*1000 + x[1] - y[0]*1000 - y[1] })
	for _, l := range links {
		r.setLink(l[0], l[1], false, why)
	}
}

// watchRecovery reports when a healed link's nodes are connected again,
// and then when each holds every artifact the other published before the
// reconnection and has not aborted since.
func (r *run) watchRecovery(a, b int) {
	healed := time.Now()
	r.watchers.Add(1)
	go func() {
		defer r.watchers.Done()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		var connectedAt time.Time
		for {
			select {
			case <-r.done:
				return
			case <-tick.C:
			}
			if connectedAt.IsZero() {
				if !r.linked(a, b) {
					continue
				}
				connectedAt = time.Now()
				r.event("link %d-%d: connected again %v after the heal", a, b, connectedAt.Sub(healed).Round(time.Millisecond))
			}
			if r.lacking(a, b, connectedAt) == 0 && r.lacking(b, a, connectedAt) == 0 {
				took := time.Since(healed).Round(time.Millisecond)
				r.event("link %d-%d: both sides caught up %v after the heal", a, b, took)
				r.recMu.Lock()
				r.recoveries = append(r.recoveries, fmt.Sprintf("link %d-%d reconnected after %v, caught up after %v", a, b, connectedAt.Sub(healed).Round(time.Millisecond), took))
				r.recMu.Unlock()
				return
			}
		}
	}()
}

// lacking counts artifacts that from published before t, has not aborted,
// and to does not hold.
func (r *run) lacking(from, to int, t time.Time) int {
	r.ledgerMu.Lock()
	defer r.ledgerMu.Unlock()
	n := 0
	for k, rec := range r.ledger {
		if rec.publisher == from && !rec.aborted && rec.at.Before(t) && !r.members[to].sink.holds(k) {
			n++
		}
	}
	return n
}

func (r *run) linked(a, b int) bool {
	up := func(m, peer *member) bool {
		return slices.Contains(m.node.Transport().Peers(), peer.ident.ID)
	}
	return up(r.members[a], r.members[b]) && up(r.members[b], r.members[a])
}

// pending counts (artifact, node) pairs the subnet still owes: live
// artifacts a node lacks, and aborted ones a node still holds.
type pendingCount struct {
	missing   int
	stillHeld int
	perNode   []int // missing per node
}

func (r *run) pending() pendingCount {
	p := pendingCount{perNode: make([]int, len(r.members))}
	r.ledgerMu.Lock()
	defer r.ledgerMu.Unlock()
	for k, rec := range r.ledger {
		for _, m := range r.members {
			if m.idx == rec.publisher {
				continue
			}
			held := m.sink.holds(k)
			switch {
			case !rec.aborted && !held:
				p.missing++
				p.perNode[m.idx]++
			case rec.aborted && held:
				p.stillHeld++
			}
		}
	}
	return p
}
