package actors_test

import (
	"crypto/rand"
	"fmt"
	"net"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/rs/zerolog"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/membership"
)

// consensus is a replica's own actor: it runs the "blocks" channel as its
// child, consumes what peers publish and publishes its own blocks, all by
// actor messages.
type consensus struct {
	blocks *actors.Channel // declared on the node; run here, under us
	pid    *actor.PID      // the channel's actor
	out    chan string
}

func (c *consensus) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		// The channel's actors live under ours: if they fail for good, we
		// are told (and our own supervisor decides).
		c.pid = ctx.Spawn(c.blocks.Props())
		ctx.Request(c.pid, &actors.Subscribe{Consumer: ctx.Self()})
	case *actors.Subscribed:
		ctx.Request(c.pid, &actors.Publish{Artifact: broadcast.Artifact{
			ID: broadcast.ArtifactID("block-" + ctx.Self().Address[:4]), Attribute: []byte("height=42"), Payload: make([]byte, 64<<10),
		}})
	case *actors.Published:
		if m.Err != nil {
			c.out <- "publish failed: " + m.Err.Error()
		}
	case *actors.Delivered:
		c.out <- fmt.Sprintf("delivered a block of %d bytes", len(m.Artifact.Payload))
		actors.Confirm(ctx) // the event is taken: its credit returns
	case *actors.Withdrawn:
		actors.Confirm(ctx)
	}
}

// Two replicas on loopback, each one node: one actor system with the QUIC
// remote installed, carrying the broadcast channel and actor messages on
// the same connection. Each node's consensus actor runs the channel under
// itself, publishes a block by message and receives the other's.
func Example() {
	// Each replica has an Ed25519 identity and a UDP socket; the registry
	// lists both (in production: a file or etcd, see package membership).
	var ids []*membership.Identity
	var socks []net.PacketConn
	var members []membership.Member
	for range 2 {
		id, _ := membership.GenerateIdentity(rand.Reader)
		sock, _ := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		ids, socks = append(ids, id), append(socks, sock)
		members = append(members, id.Member(sock.LocalAddr().String()))
	}
	snap, _ := membership.NewSnapshot(1, members...)
	registry, _ := membership.NewStaticSource(snap)

	out := make(chan string, 4)
	for i := range 2 {
		// NewNode: the actor system, the transport and the remote, nothing
		// dialled yet. Declare channels and spawn actors, then Start.
		node, err := actors.NewNode(actors.DefaultConfig(), ids[i], registry, socks[i], zerolog.Nop())
		if err != nil {
			panic(err)
		}
		defer node.Close()
		blocks, err := node.NewChannel(actors.ChannelConfig{Name: "blocks", Admit: broadcast.AdmitAll})
		if err != nil {
			panic(err)
		}
		if _, err := node.System().Root.SpawnNamed(actor.PropsFromProducer(func() actor.Actor {
			return &consensus{blocks: blocks, out: out}
		}), "consensus"); err != nil {
			panic(err)
		}
		if err := node.Start(); err != nil {
			panic(err)
		}
	}
	fmt.Println(wait(out))
	fmt.Println(wait(out))
	// Output:
	// delivered a block of 65536 bytes
	// delivered a block of 65536 bytes
}

func wait(events chan string) string {
	select {
	case e := <-events:
		return e
	case <-time.After(30 * time.Second):
		return "timed out"
	}
}
