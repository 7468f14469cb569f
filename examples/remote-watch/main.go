// Command remote-watch is protoactor-go's remote watch, on abcast nodes:
// an actor on node 0 watches actors on node 1 by PID, over the QUIC remote
// both nodes carry, and learns when each ends.
//
//	go run ./examples/remote-watch
//
// First one of node 1's actors stops itself: the watcher gets Terminated
// (Stopped). Then node 1 goes away without saying goodbye to the watches
// on its other actor: the watcher gets Terminated (AddressTerminated)
// once node 0 notices the connection is gone. It exits 0 when both came,
// 1 otherwise.
package main

import (
	"fmt"
	"os"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/examples/internal/localsubnet"
)

func main() {
	sub, err := localsubnet.New(2)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	log := zerolog.New(os.Stderr).Level(zerolog.ErrorLevel)
	cfg := actors.DefaultConfig()
	cfg.Remote.Messages = []proto.Message{&wrapperspb.StringValue{}}
	var nodes []*actors.Node
	for i := range 2 {
		node, err := actors.Start(cfg, sub.IDs[i], sub.Registry, sub.Sockets[i], log)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		nodes = append(nodes, node)
	}
	defer nodes[0].Close()
	// A worker stops itself when asked.
	worker := actor.PropsFromFunc(func(ctx actor.Context) {
		if m, ok := ctx.Message().(*wrapperspb.StringValue); ok && m.Value == "stop" {
			ctx.Stop(ctx.Self())
		}
	})
	for _, name := range []string{"worker-a", "worker-b"} {
		if _, err := nodes[1].System().Root.SpawnNamed(worker, name); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
	}

	// The watcher watches both workers, then asks worker-a to stop. What
	// one node sends another arrives in order, and a watch is installed
	// before the worker handles its next message, so the watch is in place
	// when worker-a stops.
	ended := make(chan *actor.Terminated, 2)
	watcher := actor.PropsFromFunc(func(ctx actor.Context) {
		switch m := ctx.Message().(type) {
		case *actor.Started:
			for _, name := range []string{"worker-a", "worker-b"} {
				ctx.Watch(nodes[0].PID(sub.IDs[1].ID, name)) // a PID on node 1
			}
			ctx.Send(nodes[0].PID(sub.IDs[1].ID, "worker-a"), wrapperspb.String("stop"))
		case *actor.Terminated:
			ended <- m
		}
	})
	if _, err := nodes[0].System().Root.SpawnNamed(watcher, "watcher"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}

	wait := func(what string) *actor.Terminated {
		select {
		case m := <-ended:
			fmt.Printf("watcher on node 0: %s ended (%v) %s\n", m.Who.Id, m.Why, what)
			return m
		case <-time.After(30 * time.Second):
			fmt.Printf("FAIL: no Terminated %s\n", what)
			os.Exit(1)
			return nil
		}
	}
	a := wait("after it stopped itself")
	nodes[1].Close() // node 1 goes away
	b := wait("after node 1 went away")
	if a.Who.Id != "worker-a" || a.Why != actor.TerminatedReason_Stopped || b.Who.Id != "worker-b" || b.Why != actor.TerminatedReason_AddressTerminated {
		fmt.Println("FAIL: unexpected terminations")
		os.Exit(1)
	}
	fmt.Println("PASS")
}
