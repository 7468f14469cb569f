// Command gossipbench runs the workloads of examples/bench on libp2p
// GossipSub, for comparison: N libp2p hosts in one process, each on its
// own loopback UDP socket speaking go-libp2p's QUIC transport, fully
// connected, all subscribed to one topic with flood publishing and a
// maximum message size above the payload. It prints the same JSON line as
// examples/bench.
//
//	cd examples/gossipbench && go run . -nodes 4 -size 102400 -count 500 -publishers all -abort-fraction 0.5
//
// GossipSub cannot withdraw a message: an "aborted" artifact is published
// like any other and its receivers discard it, so every byte sent for it
// is wasted. This module has its own go.mod so that the abcast module
// does not depend on libp2p.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/quicreuse"
	"google.golang.org/protobuf/proto"
)

type options struct {
	nodes         int
	size          int
	count         int
	publishers    string
	abortFraction float64
	rate          float64
	timeout       time.Duration
	seed          uint64
	sign          bool
}

func main() {
	var o options
	flag.IntVar(&o.nodes, "nodes", 4, "subnet size")
	flag.IntVar(&o.size, "size", 100<<10, "payload bytes per message")
	flag.IntVar(&o.count, "count", 500, "messages in total, split over the publishers")
	flag.StringVar(&o.publishers, "publishers", "all", "who publishes: one (node 0) or all")
	flag.Float64Var(&o.abortFraction, "abort-fraction", 0, "share of messages the application treats as aborted")
	flag.Float64Var(&o.rate, "rate", 0, "messages per second per publisher (0: unlimited)")
	flag.DurationVar(&o.timeout, "timeout", 120*time.Second, "give up waiting for deliveries after this long")
	flag.Uint64Var(&o.seed, "seed", 1, "seed choosing the aborted messages (same choice as examples/bench)")
	flag.BoolVar(&o.sign, "sign", true, "sign messages (GossipSub's default StrictSign); false: StrictNoSign")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile to this file")
	flag.Parse()
	if o.nodes < 2 || o.size < 8 || o.count < 1 || (o.publishers != "one" && o.publishers != "all") ||
		o.abortFraction < 0 || o.abortFraction > 1 || o.rate < 0 {
		fmt.Fprintln(os.Stderr, "gossipbench: need -nodes >= 2, -size >= 8, -count >= 1, -publishers one|all, -abort-fraction in [0,1], -rate >= 0")
		os.Exit(2)
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	r, err := run(o)
	if err != nil {
		fatal(err)
	}
	r.print()
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "gossipbench:", err)
	os.Exit(1)
}

// warmIndex marks the warm-up messages, which are not measured.
const warmIndex = 1 << 62

type gnode struct {
	h     host.Host
	ps    *pubsub.PubSub
	topic *pubsub.Topic
	sub   *pubsub.Subscription
	sent  *atomic.Uint64
}

func run(o options) (Result, error) {
	aborted, abortN := chooseAborted(o)
	want := int64(o.count-abortN) * int64(o.nodes-1)
	t := newTally(o.nodes, o.count, aborted, want)
	tr := &wasteTracer{aborted: aborted}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var nodes []*gnode
	defer func() {
		for _, n := range nodes {
			n.sub.Cancel()
			_ = n.topic.Close()
			_ = n.h.Close()
		}
	}()
	for range o.nodes {
		n, err := newNode(ctx, o, tr)
		if err != nil {
			return Result{}, err
		}
		nodes = append(nodes, n)
	}
	for i, a := range nodes {
		for _, b := range nodes[i+1:] {
			if err := a.h.Connect(ctx, peer.AddrInfo{ID: b.h.ID(), Addrs: b.h.Addrs()}); err != nil {
				return Result{}, fmt.Errorf("connect: %w", err)
			}
		}
	}
	// Receivers: every message from a peer is noted once per node.
	warm := make(chan struct{}, o.nodes*o.nodes)
	var rx sync.WaitGroup
	for i, n := range nodes {
		rx.Go(func() {
			for {
				m, err := n.sub.Next(ctx)
				if err != nil {
					return
				}
				if m.ReceivedFrom == n.h.ID() && m.GetFrom() == n.h.ID() {
					continue // our own publication
				}
				idx, ok := getIndex(m.Data)
				switch {
				case !ok:
				case idx == warmIndex:
					warm <- struct{}{}
				case idx < o.count:
					t.deliver(i, idx)
				}
			}
		})
	}
	// Wait until every node sees every other in the topic, then until one
	// warm-up message from each node reached all others.
	deadline := time.Now().Add(30 * time.Second)
	for _, n := range nodes {
		for len(n.topic.ListPeers()) < o.nodes-1 {
			if time.Now().After(deadline) {
				return Result{}, errors.New("topic peers did not appear within 30 s")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	for _, n := range nodes {
		if err := n.topic.Publish(ctx, payload(warmIndex, 8)); err != nil {
			return Result{}, err
		}
	}
	for range o.nodes * (o.nodes - 1) {
		select {
		case <-warm:
		case <-time.After(time.Until(deadline)):
			return Result{}, errors.New("warm-up messages did not arrive within 30 s")
		}
	}

	runtime.GC()
	wire := func() uint64 {
		var s uint64
		for _, n := range nodes {
			s += n.sent.Load()
		}
		return s
	}
	wire0 := wire()
	tr.measuring.Store(true)
	heap := startHeapPeak()
	start := time.Now()
	var pubErr atomic.Pointer[error]
	var wg sync.WaitGroup
	for p, n := range nodes {
		if o.publishers == "one" && p > 0 {
			break
		}
		wg.Go(func() {
			k := 0
			for idx := range o.count {
				if publisher(o, idx) != p {
					continue
				}
				if o.rate > 0 {
					time.Sleep(time.Until(start.Add(time.Duration(float64(k) / o.rate * float64(time.Second)))))
				}
				k++
				t.published[idx].Store(time.Now().UnixNano())
				if err := n.topic.Publish(ctx, payload(idx, o.size)); err != nil {
					pubErr.Store(&err)
					return
				}
			}
		})
	}
	wg.Wait()
	if e := pubErr.Load(); e != nil {
		return Result{}, *e
	}
	select {
	case <-t.done:
	case <-time.After(o.timeout):
		fmt.Fprintf(os.Stderr, "gossipbench: timed out with %d of %d deliveries\n", t.useful.Load(), t.want)
	}
	// Let forwarding of the last messages finish so the byte counts
	// include it (GossipSub keeps relaying after the first delivery).
	time.Sleep(300 * time.Millisecond)

	r := Result{System: "gossipsub", Nodes: o.nodes, Size: o.size, Count: o.count, Publishers: o.publishers, AbortFraction: o.abortFraction}
	t.summary(&r, start, o.size, func(idx int) []int { return receivers(o, idx) })
	r.PeakHeapMB = heap.MB()
	r.WireMB = float64(wire()-wire0) / 1e6
	r.WastedMB = float64(tr.wasted.Load()) / 1e6
	if d := tr.dropped.Load(); d > 0 {
		fmt.Fprintf(os.Stderr, "gossipsub dropped %d outbound RPCs (queue full)\n", d)
	}
	cancel()
	return r, nil
}

func newNode(ctx context.Context, o options, tr *wasteTracer) (*gnode, error) {
	priv, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		return nil, err
	}
	sent := new(atomic.Uint64)
	h, err := libp2p.New(
		libp2p.Identity(priv),
		libp2p.ListenAddrStrings("/ip4/127.0.0.1/udp/0/quic-v1"),
		libp2p.Transport(libp2pquic.NewTransport),
		// Our sockets, so that the bytes sent are counted; the wrapper
		// keeps quic-go's segmentation offload (see udpcount.go).
		libp2p.QUICReuse(quicreuse.NewConnManager, quicreuse.OverrideListenUDP(func(network string, laddr *net.UDPAddr) (net.PacketConn, error) {
			pc, err := net.ListenUDP(network, laddr)
			if err != nil {
				return nil, err
			}
			return countingConn{UDPConn: pc, sent: sent}, nil
		})),
		libp2p.ResourceManager(&network.NullResourceManager{}),
		libp2p.DisableMetrics(),
		libp2p.DisableRelay(),
	)
	if err != nil {
		return nil, err
	}
	policy := pubsub.StrictSign
	if !o.sign {
		policy = pubsub.StrictNoSign
	}
	// Queues large enough that nothing is dropped for being early: the
	// driver publishes as fast as Publish returns.
	queue := max(32, 2*o.count)
	ps, err := pubsub.NewGossipSub(ctx, h,
		pubsub.WithFloodPublish(true),
		pubsub.WithMaxMessageSize(o.size+64<<10),
		pubsub.WithPeerOutboundQueueSize(queue),
		pubsub.WithValidateQueueSize(queue),
		pubsub.WithMessageSignaturePolicy(policy),
		pubsub.WithRawTracer(tr),
	)
	if err != nil {
		h.Close()
		return nil, err
	}
	topic, err := ps.Join("bench")
	if err != nil {
		h.Close()
		return nil, err
	}
	sub, err := topic.Subscribe(pubsub.WithBufferSize(queue))
	if err != nil {
		h.Close()
		return nil, err
	}
	return &gnode{h: h, ps: ps, topic: topic, sub: sub, sent: sent}, nil
}

// chooseAborted picks the aborted messages exactly as examples/bench does.
func chooseAborted(o options) ([]bool, int) {
	aborted := make([]bool, o.count)
	n := 0
	rng := rand.New(rand.NewPCG(o.seed, 0x6a62))
	for i := range aborted {
		if rng.Float64() < o.abortFraction {
			aborted[i] = true
			n++
		}
	}
	return aborted, n
}

func publisher(o options, idx int) int {
	if o.publishers == "one" {
		return 0
	}
	return idx % o.nodes
}

func receivers(o options, idx int) []int {
	out := make([]int, 0, o.nodes-1)
	for n := range o.nodes {
		if n != publisher(o, idx) {
			out = append(out, n)
		}
	}
	return out
}

func payload(idx, size int) []byte {
	p := make([]byte, size)
	for i := 8; i < size; i += 64 {
		p[i] = byte(i >> 6)
	}
	for i := range 8 {
		p[i] = byte(uint64(idx) >> (56 - 8*i))
	}
	return p
}

func getIndex(b []byte) (int, bool) {
	if len(b) < 8 {
		return 0, false
	}
	var v uint64
	for i := range 8 {
		v = v<<8 | uint64(b[i])
	}
	return int(v), true
}

// wasteTracer sums the encoded size of aborted messages in every RPC a
// node wrote to a peer (publish, forward, answers to IWANT). Control messages (IHAVE/IWANT) naming aborted
// ids are small and not counted.
type wasteTracer struct {
	aborted   []bool
	measuring atomic.Bool
	wasted    atomic.Int64
	dropped   atomic.Int64
}

func (w *wasteTracer) abortedBytes(rpc *pubsub.RPC) int64 {
	var n int64
	for _, m := range rpc.GetPublish() {
		if idx, ok := getIndex(m.GetData()); ok && idx < len(w.aborted) && w.aborted[idx] {
			n += int64(proto.Size(m))
		}
	}
	return n
}

// SendRPCCompleted runs once an RPC was written to the peer's stream, so
// RPCs dropped from full queues or thinned by IDONTWANT are not counted.
func (w *wasteTracer) SendRPCCompleted(rpc *pubsub.RPC, _ peer.ID, _ time.Duration) {
	if w.measuring.Load() {
		w.wasted.Add(w.abortedBytes(rpc))
	}
}

func (w *wasteTracer) DropRPC(*pubsub.RPC, peer.ID) { w.dropped.Add(1) }

func (*wasteTracer) OnNewOutboundStream(peer.ID, protocol.ID) {}
func (*wasteTracer) OnClosedOutboundStream(peer.ID)           {}
func (*wasteTracer) AddPeer(peer.ID, protocol.ID)             {}
func (*wasteTracer) RemovePeer(peer.ID)                       {}
func (*wasteTracer) Join(string)                              {}
func (*wasteTracer) Leave(string)                             {}
func (*wasteTracer) Graft(peer.ID, string)                    {}
func (*wasteTracer) Prune(peer.ID, string)                    {}
func (*wasteTracer) ValidateMessage(*pubsub.Message)          {}
func (*wasteTracer) DeliverMessage(*pubsub.Message)           {}
func (*wasteTracer) RejectMessage(*pubsub.Message, string)    {}
func (*wasteTracer) DuplicateMessage(*pubsub.Message)         {}
func (*wasteTracer) ThrottlePeer(peer.ID)                     {}
func (*wasteTracer) RecvRPC(*pubsub.RPC)                      {}
func (*wasteTracer) SendRPC(*pubsub.RPC, peer.ID)             {}
func (*wasteTracer) UndeliverableMessage(*pubsub.Message)     {}
