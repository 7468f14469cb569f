package actors

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/abcast/abcast/actors/actorkit"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/rs/zerolog"

	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/membership"
	"github.com/abcast/abcast/quicremote/transport"
)

// Node is one member of a subnet running Abortable Broadcast: an actor
// system, a transport to the other members, and the channels opened on it.
// Its methods are safe for concurrent use.
type Node struct {
	cfg    Config
	self   membership.NodeID
	log    zerolog.Logger
	rpc    transport.RPC
	system *actor.ActorSystem
	root   *actor.PID // our supervisor; every actor of the node lives under it
	source membership.Source
	conn   net.PacketConn // owned when the node created the transport

	ctx    context.Context // ends at Close; parents every goroutine's context
	cancel context.CancelFunc
	wg     sync.WaitGroup // goroutines started by actors (RPCs, timers)

	mu       sync.Mutex
	channels map[string]*Channel
	members  *membership.Snapshot
	up       map[membership.NodeID]uint64
	closed   bool

	restarts    atomic.Uint64
	deadLetters atomic.Uint64
	refused     atomic.Uint64 // messages refused by bounded mailboxes
	connUps     atomic.Uint64
	connDowns   atomic.Uint64
	dlSub       *eventSub
}

// Start creates a node that speaks QUIC on conn (a UDP socket; hand quic-go
// the raw *net.UDPConn in production so it can use segmentation offload).
// The node owns conn from now on.
func Start(cfg Config, id *membership.Identity, source membership.Source, conn net.PacketConn, log zerolog.Logger, tcfg transport.Config) (*Node, error) {
	n, err := StartWith(cfg, id.ID, source, log, func(events transport.EventFunc) (transport.RPC, error) {
		return transport.New(tcfg, id, source, conn, log, events)
	})
	if err != nil {
		conn.Close()
		return nil, err
	}
	n.conn = conn
	return n, nil
}

// StartWith creates a node on any transport: newRPC receives the function
// the transport must call with peer events (it must not block).
func StartWith(cfg Config, self membership.NodeID, source membership.Source, log zerolog.Logger, newRPC func(transport.EventFunc) (transport.RPC, error)) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	n := &Node{
		cfg:      cfg,
		self:     self,
		log:      log.With().Str("node", self.Short()).Logger(),
		source:   source,
		channels: make(map[string]*Channel),
		up:       make(map[membership.NodeID]uint64),
		members:  source.Current(),
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.system = actorkit.NewActorSystem(n.log, self.String())
	n.dlSub = subscribeCounts(n)
	props := actor.PropsFromProducer(func() actor.Actor { return &rootActor{n: n} },
		actor.WithSupervisor(n.strategy()))
	root, err := n.system.Root.SpawnNamed(props, "abcast")
	if err != nil {
		n.system.Shutdown()
		return nil, fmt.Errorf("actors: spawn root supervisor: %w", err)
	}
	n.root = root
	rpc, err := newRPC(n.onPeerEvent)
	if err != nil {
		n.system.Root.StopFuture(root).Wait()
		n.system.Shutdown()
		return nil, fmt.Errorf("actors: start transport: %w", err)
	}
	n.mu.Lock()
	n.rpc = rpc
	n.mu.Unlock()
	n.wg.Add(1)
	go n.watchMembers()
	return n, nil
}

// ID returns the node's NodeID.
func (n *Node) ID() membership.NodeID { return n.self }

// System returns the node's actor system, for users who run their own
// actors beside abcast's (and want PIDs as consumers).
func (n *Node) System() *actor.ActorSystem { return n.system }

// Transport returns the node's transport.
func (n *Node) Transport() transport.RPC { return n.rpc }

// strategy is how every supervisor of ours treats a crashing child:
// restart it (counted), up to MaxRestarts per RestartWindow.
func (n *Node) strategy() actor.SupervisorStrategy {
	return actor.NewOneForOneStrategy(n.cfg.MaxRestarts, n.cfg.RestartWindow, func(reason interface{}) actor.Directive {
		n.restarts.Add(1)
		n.log.Warn().Interface("reason", reason).Msg("actor crashed; restarting")
		return actor.RestartDirective
	})
}

// onPeerEvent is the transport's callback: hand the event to the actors.
func (n *Node) onPeerEvent(ev transport.PeerEvent) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return
	}
	switch ev := ev.(type) {
	case transport.PeerUp:
		n.up[ev.Peer] = ev.ConnID
		n.connUps.Add(1)
	case transport.PeerDown:
		n.connDowns.Add(1)
		if n.up[ev.Peer] == ev.ConnID {
			delete(n.up, ev.Peer)
		}
	}
	for _, c := range n.channels {
		n.system.Root.Send(c.senderPID, ev)
	}
}

func (n *Node) watchMembers() {
	defer n.wg.Done()
	for snap := range n.source.Watch(n.ctx) {
		n.mu.Lock()
		if n.closed {
			n.mu.Unlock()
			return
		}
		n.members = snap
		for _, c := range n.channels {
			n.system.Root.Send(c.senderPID, membersMsg{snap})
			n.system.Root.Send(c.receiverPID, membersMsg{snap})
		}
		n.mu.Unlock()
	}
}

// view returns the current member snapshot and the connected peers with
// their connection ids.
func (n *Node) view() (*membership.Snapshot, map[membership.NodeID]uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	up := make(map[membership.NodeID]uint64, len(n.up))
	for k, v := range n.up {
		up[k] = v
	}
	return n.members, up
}

// peersOf lists the members other than self, as core peer ids.
func (n *Node) peersOf(snap *membership.Snapshot) []broadcast.PeerID {
	var out []broadcast.PeerID
	for _, id := range snap.IDs() {
		if id != n.self {
			out = append(out, broadcast.PeerID(id.String()))
		}
	}
	return out
}

// go runs fn on a goroutine that Close waits for.
func (n *Node) goTracked(fn func()) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		fn()
	}()
}

// Stats counts node-wide events.
type Stats struct {
	// Restarts counts actor crashes that a supervisor restarted.
	Restarts uint64
	// DeadLetters counts messages that reached no actor, including those
	// refused by full bounded mailboxes.
	DeadLetters uint64
	// MailboxRefusals counts the messages full bounded mailboxes refused.
	MailboxRefusals uint64
	// ConnectionsUp and ConnectionsDown count transport PeerUp and PeerDown
	// events; ConnectionsUp beyond the number of peers are reconnects.
	ConnectionsUp, ConnectionsDown uint64
}

// Stats returns the node-wide counters.
func (n *Node) Stats() Stats {
	return Stats{Restarts: n.restarts.Load(), DeadLetters: n.deadLetters.Load(), MailboxRefusals: n.refused.Load(),
		ConnectionsUp: n.connUps.Load(), ConnectionsDown: n.connDowns.Load()}
}

// ErrClosed is returned by operations on a closed node or channel.
var ErrClosed = errors.New("actors: node closed")

// Close stops every actor and the transport and returns once every
// goroutine the node started has ended.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	n.mu.Unlock()
	// Stop the actors first (their RPCs are cancelled as they stop), then
	// the transport, then wait for stragglers.
	_ = n.system.Root.StopFuture(n.root).Wait()
	n.cancel()
	err := n.rpc.Close()
	n.wg.Wait()
	if n.conn != nil {
		if cerr := n.conn.Close(); err == nil {
			err = cerr
		}
	}
	n.dlSub.close()
	n.system.Shutdown()
	return err
}

// rootActor supervises the channels.
type rootActor struct{ n *Node }

func (r *rootActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case openChannel:
		c := m.c
		var err error
		c.senderPID, c.receiverPID, c.consumerPID, err = spawnChannel(ctx, c)
		ctx.Respond(err)
	}
}

type openChannel struct{ c *Channel }

type membersMsg struct{ snap *membership.Snapshot }

// eventSub counts dead letters from the EventStream without doing work on
// the publisher's goroutine.
type eventSub struct{ un func() }

func subscribeCounts(n *Node) *eventSub {
	s := n.system.EventStream.Subscribe(func(evt interface{}) {
		if _, ok := evt.(*actor.DeadLetterEvent); ok {
			n.deadLetters.Add(1)
		}
	})
	return &eventSub{un: func() { n.system.EventStream.Unsubscribe(s) }}
}

func (e *eventSub) close() { e.un() }

// now is the node's clock, read only by actor shells, never by the cores.
func now() time.Time { return time.Now() }
