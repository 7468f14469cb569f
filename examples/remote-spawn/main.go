// Command remote-spawn is protoactor-go's remote spawn, on abcast nodes:
// node 1 registers an actor kind, node 0 spawns one on node 1, talks to
// it by request and response, watches it and stops it — all over the QUIC
// remote both nodes carry. Asking for a kind node 1 does not have fails
// with a clear error.
//
//	go run ./examples/remote-spawn
//
// It exits 0 when every step did what it should, 1 otherwise.
package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/examples/internal/localsubnet"
	"github.com/abcast/abcast/quicremote"
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
		defer node.Close()
		nodes = append(nodes, node)
	}
	fail := func(format string, args ...any) {
		fmt.Printf("FAIL: "+format+"\n", args...)
		os.Exit(1)
	}

	// Node 1 lets members spawn greeters on it.
	greeter := actor.PropsFromFunc(func(ctx actor.Context) {
		if m, ok := ctx.Message().(*wrapperspb.StringValue); ok {
			ctx.Respond(wrapperspb.String("hello " + m.Value + ", from " + ctx.Self().Address[:8]))
		}
	})
	if err := nodes[1].Remote().Register("greeter", greeter); err != nil {
		fail("register: %v", err)
	}

	remote, sys := nodes[0].Remote(), nodes[0].System()
	pid, err := remote.SpawnNamed(sub.IDs[1].ID, "greeter-1", "greeter", 10*time.Second)
	if err != nil {
		fail("spawn: %v", err)
	}
	fmt.Printf("spawned %s on node 1\n", pid.Id)
	res, err := sys.Root.RequestFuture(pid, wrapperspb.String("node 0"), 5*time.Second).Result()
	if err != nil {
		fail("request: %v", err)
	}
	fmt.Println("it says:", res.(*wrapperspb.StringValue).Value)

	if _, err := remote.SpawnNamed(sub.IDs[1].ID, "greeter-1", "greeter", 10*time.Second); !errors.Is(err, quicremote.ErrNameTaken) {
		fail("the same name again: %v, want ErrNameTaken", err)
	}
	if _, err := remote.Spawn(sub.IDs[1].ID, "no-such-kind", 10*time.Second); !errors.Is(err, quicremote.ErrUnknownKind) {
		fail("unknown kind: %v, want ErrUnknownKind", err)
	} else {
		fmt.Println("unknown kind refused:", err)
	}

	// What node 0 spawned, node 0 may stop: an actor here watches it and
	// stops it (the Watch and the Stop travel to node 1 in that order), and
	// sees it end.
	ended := make(chan *actor.Terminated, 1)
	if _, err := sys.Root.SpawnNamed(actor.PropsFromFunc(func(ctx actor.Context) {
		switch m := ctx.Message().(type) {
		case *actor.Started:
			ctx.Watch(pid)
			ctx.Stop(pid)
		case *actor.Terminated:
			ended <- m
		}
	}), "stopper"); err != nil {
		fail("stopper: %v", err)
	}
	select {
	case m := <-ended:
		if m.Why != actor.TerminatedReason_Stopped {
			fail("%s ended with %v, want Stopped", m.Who.Id, m.Why)
		}
		fmt.Printf("%s stopped (%v)\n", m.Who.Id, m.Why)
	case <-time.After(10 * time.Second):
		fail("no Terminated after stopping the spawned actor")
	}
	fmt.Println("PASS")
}
