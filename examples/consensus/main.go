// Command consensus is what a protoactor user writes to run a replica on
// abcast: four nodes (in one process here, on loopback, over real QUIC and
// mutual TLS), each one actor system whose "consensus" actor — under the
// user's own supervisor — runs the channels "blocks" and "signatures" as
// its children, proposes a block when it leads a height, signs the blocks
// it receives, finalizes a height on a quorum of signatures, aborts what
// finalization made obsolete, and asks the other nodes' consensus actors
// for their height over the remote, on the same connections.
//
//	go run ./examples/consensus              # 4 nodes, 20 heights
//	go run ./examples/consensus -heights 50
//
// It exits 0 once every node finalized every height, 1 otherwise.
package main

import (
	"flag"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/examples/internal/localsubnet"
	"github.com/abcast/abcast/membership"
)

const quorum = 3 // 2f+1 signatures of 4 nodes

// replica is one node's consensus actor.
type replica struct {
	idx, n     int
	ids        []membership.NodeID // every member, by index
	blocks     *actors.Channel
	sigs       *actors.Channel
	blocksPID  *actor.PID
	sigsPID    *actor.PID
	height     uint64                     // the height being decided
	proposed   uint64                     // the last height we proposed
	signatures map[uint64]map[string]bool // height -> signers
	report     func(node int, height uint64, peer string, peerHeight uint64)
}

type tick struct{}

func (r *replica) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		r.height, r.signatures = 1, map[uint64]map[string]bool{}
		r.blocksPID, r.sigsPID = ctx.Spawn(r.blocks.Props()), ctx.Spawn(r.sigs.Props())
		ctx.Request(r.blocksPID, &actors.Subscribe{Consumer: ctx.Self()})
		ctx.Request(r.sigsPID, &actors.Subscribe{Consumer: ctx.Self()})
	case tick:
		if int(r.height)%r.n == r.idx && r.proposed < r.height { // we lead this height: propose
			r.proposed = r.height
			ctx.Request(r.blocksPID, &actors.Publish{Artifact: broadcast.Artifact{
				ID: r.id("block", r.height), Attribute: []byte(fmt.Sprint(r.height)), Payload: make([]byte, 200<<10)}})
			r.sign(ctx, r.height)
		}
	case *actors.Delivered:
		var h uint64
		var signer string
		if _, err := fmt.Sscanf(string(m.Artifact.ID), "block/%d/", &h); err == nil {
			r.sign(ctx, h)
		} else if _, err := fmt.Sscanf(string(m.Artifact.ID), "sig/%d/%s", &h, &signer); err == nil {
			r.count(ctx, h, signer)
		}
		actors.Confirm(ctx)
	case *actors.Withdrawn:
		actors.Confirm(ctx)
	case *wrapperspb.UInt64Value: // a peer asks for our height, over the remote
		ctx.Respond(wrapperspb.UInt64(r.height))
	}
}

func (r *replica) id(kind string, h uint64) broadcast.ArtifactID {
	return broadcast.ArtifactID(fmt.Sprintf("%s/%d/%d", kind, h, r.idx))
}

// sign publishes our (latency-sensitive, so pushed) signature for h.
func (r *replica) sign(ctx actor.Context, h uint64) {
	if h < r.height {
		return
	}
	ctx.Request(r.sigsPID, &actors.Publish{Artifact: broadcast.Artifact{ID: r.id("sig", h), Payload: []byte("sig"), LatencySensitive: true}})
	r.count(ctx, h, fmt.Sprint(r.idx))
}

// count records a signature; a quorum finalizes the height (and every
// height below it: a replica that joined late never gets what the others
// aborted once they finalized, and catches up on the first quorum it sees
// instead): what older heights needed is aborted, and we ask a peer's
// replica where it stands.
func (r *replica) count(ctx actor.Context, h uint64, signer string) {
	if h < r.height {
		return
	}
	if r.signatures[h] == nil {
		r.signatures[h] = map[string]bool{}
	}
	r.signatures[h][signer] = true
	top := uint64(0)
	for at, signers := range r.signatures {
		if len(signers) >= quorum {
			top = max(top, at)
		}
	}
	for r.height <= top {
		done := r.height
		delete(r.signatures, done)
		r.height++
		if done > 1 {
			ctx.Request(r.sigsPID, &actors.Abort{ID: r.id("sig", done-1)})
			if int(done-1)%r.n == r.idx {
				ctx.Request(r.blocksPID, &actors.Abort{ID: r.id("block", done-1)})
			}
		}
		// Ask the next node's replica where it stands: a PID on another
		// member, reached over the same QUIC connection as the channels.
		peer := r.ids[(r.idx+1)%r.n]
		future := ctx.RequestFuture(actor.NewPID(peer.String(), "replica/consensus"), wrapperspb.UInt64(done), 5*time.Second)
		ctx.ReenterAfter(future, func(res any, err error) {
			if v, ok := res.(*wrapperspb.UInt64Value); ok && err == nil {
				r.report(r.idx, done, peer.Short(), v.Value)
			}
		})
	}
}

func main() {
	heights := flag.Uint64("heights", 20, "heights every node must finalize")
	nodes := flag.Int("nodes", 4, "nodes (quorum stays 3)")
	timeout := flag.Duration("timeout", time.Minute, "give up after")
	flag.Parse()

	sub, err := localsubnet.New(*nodes) // identities, sockets, registry
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var nodeIDs []membership.NodeID
	for _, id := range sub.IDs {
		nodeIDs = append(nodeIDs, id.ID)
	}

	var mu sync.Mutex
	finalized := make([]uint64, *nodes)
	report := func(node int, h uint64, peer string, peerHeight uint64) {
		mu.Lock()
		defer mu.Unlock()
		finalized[node] = max(finalized[node], h)
		fmt.Printf("node %d finalized height %d; replica %s says it is at %d\n", node, h, peer, peerHeight)
	}
	log := zerolog.New(os.Stderr).Level(zerolog.WarnLevel)
	cfg := actors.DefaultConfig()
	cfg.Remote.Messages = []proto.Message{&wrapperspb.UInt64Value{}} // what peers may send our actors
	for i := range *nodes {
		node, err := actors.NewNode(cfg, sub.IDs[i], sub.Registry, sub.Sockets[i], log)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		defer node.Close()
		blocks, _ := node.NewChannel(actors.ChannelConfig{Name: "blocks"})
		sigs, _ := node.NewChannel(actors.ChannelConfig{Name: "signatures"})
		r := &replica{idx: i, n: *nodes, ids: nodeIDs, blocks: blocks, sigs: sigs, report: report}
		// The user's supervisor, restarting its children on failure.
		sup := actor.PropsFromFunc(func(ctx actor.Context) {
			if _, ok := ctx.Message().(*actor.Started); ok {
				ctx.SpawnNamed(actor.PropsFromProducer(func() actor.Actor { return r }), "consensus")
			}
		}, actor.WithSupervisor(actor.NewOneForOneStrategy(10, time.Second, actor.DefaultDecider)))
		if _, err := node.System().Root.SpawnNamed(sup, "replica"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		if err := node.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		go func(sys *actor.ActorSystem, pid *actor.PID) {
			for range time.Tick(100 * time.Millisecond) {
				sys.Root.Send(pid, tick{})
			}
		}(node.System(), node.PID(sub.IDs[i].ID, "replica/consensus"))
	}

	deadline := time.Now().Add(*timeout)
	for time.Now().Before(deadline) {
		mu.Lock()
		done := true
		for _, f := range finalized {
			done = done && f >= *heights
		}
		mu.Unlock()
		if done {
			fmt.Printf("PASS: every node finalized %d heights\n", *heights)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	fmt.Printf("FAIL: finalized %v, want %d each\n", finalized, *heights)
	os.Exit(1)
}
