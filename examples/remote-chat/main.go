// Command remote-chat is protoactor-go's remote chat, on abcast nodes: a
// chat server actor on node 0 and a client actor on each other node,
// talking over the QUIC remote every node carries. Messages are plain Go
// structs, carried by the remote's JSON serializer.
//
//	go run ./examples/remote-chat            # a server and 3 clients
//
// Each client connects, says hello, changes its nick and prints what the
// server broadcasts; the server watches its clients and forgets one that
// stops. It exits 0 once every client saw every other client's greeting
// and rename, 1 otherwise.
package main

import (
	"flag"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/rs/zerolog"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/examples/internal/localsubnet"
	"github.com/abcast/abcast/quicremote"
)

// The chat's messages. Every node registers them under the same names.
type (
	Connect   struct{}
	Connected struct{ Welcome string }
	Everyone  struct{ Clients int } // all expected clients are here: talk
	Say       struct{ User, Text string }
	Said      struct{ User, Text string }
	Rename    struct{ From, To string }
	Renamed   struct{ From, To string }
)

func serializer() *quicremote.JSONSerializer {
	js := quicremote.NewJSONSerializer(1)
	for name, v := range map[string]any{"chat.Connect": &Connect{}, "chat.Connected": &Connected{}, "chat.Everyone": &Everyone{}, "chat.Say": &Say{},
		"chat.Said": &Said{}, "chat.Rename": &Rename{}, "chat.Renamed": &Renamed{}} {
		if err := js.Register(name, v); err != nil {
			panic(err) // our own names: a bug
		}
	}
	return js
}

// server keeps the connected clients and broadcasts to them; once the
// expected number are connected it tells them all to start talking.
type server struct {
	expect  int
	clients map[string]*actor.PID
}

func (s *server) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		s.clients = map[string]*actor.PID{}
	case *Connect:
		c := ctx.Sender()
		s.clients[c.String()] = c
		ctx.Watch(c) // a client that stops (or whose node dies) is forgotten
		ctx.Respond(&Connected{Welcome: fmt.Sprintf("welcome, you are one of %d", len(s.clients))})
		if len(s.clients) == s.expect {
			s.broadcast(ctx, &Everyone{Clients: len(s.clients)})
		}
	case *Say:
		s.broadcast(ctx, &Said{User: m.User, Text: m.Text})
	case *Rename:
		s.broadcast(ctx, &Renamed{From: m.From, To: m.To})
	case *actor.Terminated:
		delete(s.clients, m.Who.String())
	}
}

func (s *server) broadcast(ctx actor.Context, msg any) {
	for _, c := range s.clients {
		ctx.Send(c, msg)
	}
}

// client connects to the server, talks, and records what it hears.
type client struct {
	name   string
	server *actor.PID
	heard  func(line string)
}

func (c *client) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		ctx.Request(c.server, &Connect{})
	case *Connected:
		c.heard("server: " + m.Welcome)
	case *Everyone:
		ctx.Send(c.server, &Say{User: c.name, Text: "hello"})
		ctx.Send(c.server, &Rename{From: c.name, To: c.name + "-renamed"})
	case *Said:
		c.heard(fmt.Sprintf("%s: %s", m.User, m.Text))
	case *Renamed:
		c.heard(fmt.Sprintf("%s is now %s", m.From, m.To))
	}
}

func main() {
	clients := flag.Int("clients", 3, "client nodes (plus one server node)")
	timeout := flag.Duration("timeout", 30*time.Second, "give up after")
	flag.Parse()
	sub, err := localsubnet.New(*clients + 1)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	log := zerolog.New(os.Stderr).Level(zerolog.WarnLevel)
	cfg := actors.DefaultConfig()
	cfg.Remote.Serializers = []quicremote.Serializer{serializer()}

	var mu sync.Mutex
	heard := map[string]map[string]bool{}
	serverPID := actor.NewPID(sub.IDs[0].ID.String(), "chat")
	for i := range sub.IDs {
		node, err := actors.NewNode(cfg, sub.IDs[i], sub.Registry, sub.Sockets[i], log)
		sub.Sockets[i] = nil
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		defer node.Close()
		if i == 0 {
			_, err = node.System().Root.SpawnNamed(actor.PropsFromProducer(func() actor.Actor { return &server{expect: *clients} }), "chat")
		} else {
			name := fmt.Sprintf("user%d", i)
			heard[name] = map[string]bool{}
			c := &client{name: name, server: serverPID, heard: func(line string) {
				mu.Lock()
				defer mu.Unlock()
				if !heard[name][line] {
					heard[name][line] = true
					fmt.Printf("[%s] %s\n", name, line)
				}
			}}
			_, err = node.System().Root.SpawnNamed(actor.PropsFromProducer(func() actor.Actor { return c }), "client")
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		if err := node.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
	}
	// Every client must hear the welcome and every client's two lines.
	want := 2**clients + 1
	deadline := time.Now().Add(*timeout)
	for time.Now().Before(deadline) {
		mu.Lock()
		done := true
		for _, h := range heard {
			done = done && len(h) >= want
		}
		mu.Unlock()
		if done {
			fmt.Printf("PASS: each of %d clients heard all %d lines\n", *clients, want)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	for name, h := range heard {
		fmt.Printf("%s heard %d of %d lines\n", name, len(h), want)
	}
	fmt.Println("FAIL")
	os.Exit(1)
}
