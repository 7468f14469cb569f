package actors_test

import (
	"crypto/rand"
	"fmt"
	"net"
	"time"

	"github.com/rs/zerolog"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/membership"
)

// Two replicas on loopback: one publishes a block, the other's consumer
// receives it, then the publisher aborts it and the consumer sees it
// withdrawn.
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

	events := make(chan string, 4)
	var chans []*actors.Channel
	for i := range 2 {
		node, err := actors.Start(actors.DefaultConfig(), ids[i], registry, socks[i], zerolog.Nop())
		if err != nil {
			panic(err)
		}
		defer node.Close()
		ch, err := node.OpenChannel(actors.ChannelConfig{
			Name: "blocks",
			// Admission: fetch everything. A replica would look at the
			// attribute (height, say) and answer Later or Drop.
			Admit: broadcast.AdmitAll,
			Consume: func(ev actors.Event) {
				switch e := ev.(type) {
				case *actors.Delivered:
					events <- fmt.Sprintf("delivered %s (%d bytes)", e.Artifact.ID, len(e.Artifact.Payload))
				case *actors.Withdrawn:
					events <- fmt.Sprintf("withdrawn %s", e.ID)
				}
			},
		})
		if err != nil {
			panic(err)
		}
		chans = append(chans, ch)
	}

	block := broadcast.Artifact{ID: "block-42", Attribute: []byte("height=42"), Payload: make([]byte, 64<<10)}
	if err := chans[0].Publish(block); err != nil {
		panic(err)
	}
	fmt.Println(wait(events))
	if err := chans[0].Abort("block-42"); err != nil {
		panic(err)
	}
	fmt.Println(wait(events))
	// Output:
	// delivered block-42 (65536 bytes)
	// withdrawn block-42
}

func wait(events chan string) string {
	select {
	case e := <-events:
		return e
	case <-time.After(30 * time.Second):
		return "timed out"
	}
}
