package actors

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/asynkron/protoactor-go/eventstream"
	"github.com/rs/zerolog"

	"github.com/abcast/abcast/actors/actorkit"
	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/internal/wire"
	"github.com/abcast/abcast/membership"
	"github.com/abcast/abcast/quicremote"
	"github.com/abcast/abcast/quicremote/transport"
)

// Node is one member of a subnet: one actor system, one transport (one UDP
// socket, one QUIC connection per member pair) and the actor remote on it,
// carrying the broadcast channels and actor messages alike. Its methods
// are safe for concurrent use.
//
// A node is created (NewNode), then started (Start): in between, the
// remote is already installed — every actor spawned on System() has a PID
// other members can reach — but nothing is dialled, so the channels and
// actors you set up are in place before the first peer connects. Start
// alone does both.
type Node struct {
	cfg       Config
	self      membership.NodeID
	log       zerolog.Logger
	rpc       transport.RPC
	remote    *quicremote.Remote
	system    *actor.ActorSystem
	ownSystem bool       // created here: Close shuts it down
	root      *actor.PID // our supervisor for channels opened with OpenChannel
	source    membership.Source
	gate      *gatedSource
	conn      net.PacketConn // owned when the node created the transport

	ctx    context.Context // ends at Close; parents every goroutine's context
	cancel context.CancelFunc
	wg     sync.WaitGroup // goroutines started by actors (RPCs, timers)

	mu         sync.Mutex
	channels   map[string]*Channel        // declared and not closed
	chanList   atomic.Pointer[[]*Channel] // the same, for lock-free readers
	handled    map[string]bool            // channel names with transport handlers
	members    *membership.Snapshot
	up         map[membership.NodeID]uint64
	peerConns  map[membership.NodeID]*PeerInfo // per member ever seen: counted from events
	presence   *broadcast.Presence
	helloTimer *time.Timer
	helloAt    time.Time
	started    bool
	closed     bool
	closing    atomic.Bool // closed, readable without mu

	restarts    atomic.Uint64
	giveUps     atomic.Uint64
	deadLetters atomic.Uint64
	refused     atomic.Uint64 // messages refused by bounded mailboxes
	connUps     atomic.Uint64
	connDowns   atomic.Uint64
	badHellos   atomic.Uint64
	dlSub       *eventstream.Subscription
}

// Option changes how NewNode builds a node.
type Option func(*nodeOptions)

type nodeOptions struct {
	system    *actor.ActorSystem
	transport func(source membership.Source, events transport.EventFunc) (transport.RPC, error)
}

// WithActorSystem makes the node use your actor system instead of creating
// one. Create it with nothing spawned on it yet: the remote sets the
// system's address when the node is created, and an actor spawned before
// that keeps protoactor's local address, which no other member can reach.
// The node installs the remote on it; Close leaves the system running.
func WithActorSystem(system *actor.ActorSystem) Option {
	return func(o *nodeOptions) { o.system = system }
}

// WithTransport makes the node use a transport of your own (for example
// transport.MemNetwork's, in tests) instead of QUIC on a socket. newRPC
// must build it on source (which admits nobody until the node starts) and
// deliver peer events to events.
func WithTransport(newRPC func(source membership.Source, events transport.EventFunc) (transport.RPC, error)) Option {
	return func(o *nodeOptions) { o.transport = newRPC }
}

// Start creates a node (see NewNode) and starts it.
func Start(cfg Config, id *membership.Identity, source membership.Source, conn net.PacketConn, log zerolog.Logger, opts ...Option) (*Node, error) {
	n, err := NewNode(cfg, id, source, conn, log, opts...)
	if err != nil {
		return nil, err
	}
	if err := n.Start(); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

// NewNode creates a node that speaks QUIC on conn (a UDP socket; hand
// quic-go the raw *net.UDPConn in production so it can use segmentation
// offload; conn may be nil with WithTransport). The node owns conn from
// now on. It creates the actor system (or takes yours, WithActorSystem),
// the transport and the remote, and installs the remote before anything
// is spawned. Nothing is dialled until Start.
func NewNode(cfg Config, id *membership.Identity, source membership.Source, conn net.PacketConn, log zerolog.Logger, opts ...Option) (*Node, error) {
	var o nodeOptions
	for _, opt := range opts {
		opt(&o)
	}
	fail := func(err error) (*Node, error) {
		if conn != nil {
			conn.Close()
		}
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return fail(err)
	}
	if id == nil || source == nil {
		return fail(errors.New("actors: NewNode needs an identity and a registry source"))
	}
	if o.transport == nil && conn == nil {
		return fail(errors.New("actors: NewNode needs a socket (or WithTransport)"))
	}
	n := &Node{
		cfg:       cfg,
		self:      id.ID,
		log:       log.With().Str("node", id.ID.Short()).Logger(),
		source:    source,
		gate:      newGatedSource(source),
		conn:      conn,
		channels:  make(map[string]*Channel),
		up:        make(map[membership.NodeID]uint64),
		peerConns: make(map[membership.NodeID]*PeerInfo),
		members:   source.Current(),
		presence:  broadcast.NewPresence(helloRetry),
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.system, n.ownSystem = o.system, o.system == nil
	if n.ownSystem {
		n.system = actorkit.NewActorSystem(log, id.ID.String())
	} else if quicremote.RemoteOf(n.system) != nil {
		return fail(errors.New("actors: the actor system already has a remote; give each node its own system"))
	}
	undo := func() {
		n.cancel()
		if n.ownSystem {
			n.system.Shutdown()
		}
	}
	remote, err := quicremote.New(n.system, id.ID, membership.LatestMembers(source), cfg.Remote, log)
	if err != nil {
		undo()
		return fail(fmt.Errorf("actors: remote: %w", err))
	}
	n.remote = remote
	events := func(ev transport.PeerEvent) {
		remote.PeerEvent(ev)
		n.onPeerEvent(ev)
	}
	if o.transport != nil {
		n.rpc, err = o.transport(n.gate, events)
	} else {
		n.rpc, err = transport.New(cfg.Transport, id, n.gate, conn, log, events)
	}
	if err != nil {
		undo()
		return fail(fmt.Errorf("actors: start transport: %w", err))
	}
	closeAll := func(err error) (*Node, error) {
		remote.Close()
		n.rpc.Close()
		undo()
		return fail(err)
	}
	if err := remote.Start(n.rpc); err != nil {
		return closeAll(fmt.Errorf("actors: remote: %w", err))
	}
	if err := n.rpc.Handle(wire.HelloProtocol, n.handleHello, 4); err != nil {
		return closeAll(fmt.Errorf("actors: %w", err))
	}
	// EventStream handlers run on the publisher's goroutine, which may hold
	// our locks (a send to a stopped actor publishes a dead letter): they
	// only count and post, lock-free.
	n.dlSub = n.system.EventStream.Subscribe(func(evt any) {
		switch e := evt.(type) {
		case *actor.DeadLetterEvent:
			n.deadLetters.Add(1)
		case *actor.SupervisorEvent:
			n.consumerCrashed(e.Child)
		}
	})
	props := actor.PropsFromProducer(func() actor.Actor { return rootActor{} }, actor.WithSupervisor(n.topStrategy()))
	root, err := n.system.Root.SpawnNamed(props, "abcast")
	if err != nil {
		n.system.EventStream.Unsubscribe(n.dlSub)
		return closeAll(fmt.Errorf("actors: spawn root supervisor: %w", err))
	}
	n.root = root
	n.hide(root)
	return n, nil
}

// Start lets the transport dial the other members and admit them. It
// returns at once; peers come up in the background. Calling it again does
// nothing.
func (n *Node) Start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return ErrClosed
	}
	if n.started {
		return nil
	}
	n.started = true
	n.gate.start()
	n.wg.Add(1)
	go n.watchMembers()
	return nil
}

// ID returns the node's NodeID.
func (n *Node) ID() membership.NodeID { return n.self }

// System returns the node's actor system. Every actor spawned on it is
// reachable from the other members (its PID's address is this node's).
func (n *Node) System() *actor.ActorSystem { return n.system }

// Remote returns the actor remote installed on the node's system.
func (n *Node) Remote() *quicremote.Remote { return n.remote }

// Transport returns the node's transport.
func (n *Node) Transport() transport.RPC { return n.rpc }

// PID returns the PID of the actor named id on member node.
func (n *Node) PID(node membership.NodeID, id string) *actor.PID { return n.remote.PID(node, id) }

// hide makes pid (and its children) unreachable from other members.
func (n *Node) hide(pid *actor.PID) { n.remote.Hide(pid) }

func (n *Node) unhide(pid *actor.PID) { n.remote.Unhide(pid) }

// onPeerEvent is the transport's callback: record the connection and tell
// the presence core, whose effects go to the channels' actors.
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
		n.peerInfo(ev.Peer).Connections++
		n.execPresence(n.presence.PeerUp(broadcast.PeerID(ev.Peer.String()), broadcast.ConnID(ev.ConnID)))
	case transport.PeerDown:
		n.connDowns.Add(1)
		n.peerInfo(ev.Peer).Disconnections++
		if n.up[ev.Peer] == ev.ConnID {
			delete(n.up, ev.Peer)
		}
		n.execPresence(n.presence.PeerDown(broadcast.PeerID(ev.Peer.String()), broadcast.ConnID(ev.ConnID)))
	}
}

// peerInfo returns the connection counters of peer. Called with n.mu
// held.
func (n *Node) peerInfo(peer membership.NodeID) *PeerInfo {
	p := n.peerConns[peer]
	if p == nil {
		p = &PeerInfo{ID: peer}
		n.peerConns[peer] = p
	}
	return p
}

// PeerInfo describes one peer as the node sees it.
type PeerInfo struct {
	ID membership.NodeID
	// Member reports whether the current registry snapshot lists it; Up
	// whether a connection to it is up now (never for a non-member).
	Member, Up bool
	// Connections and Disconnections count the transport's PeerUp and
	// PeerDown events for it: every connection, reconnects included.
	Connections, Disconnections uint64
	// Channels are the channels it announced on its current connection.
	Channels []string
}

// Peers describes every current member other than this node, and every
// peer that was connected since the node started, sorted by id.
func (n *Node) Peers() []PeerInfo {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, id := range n.members.IDs() {
		if id != n.self {
			n.peerInfo(id)
		}
	}
	out := make([]PeerInfo, 0, len(n.peerConns))
	for id, p := range n.peerConns {
		info := *p
		info.Member = n.members.Contains(id)
		_, info.Up = n.up[id]
		info.Up = info.Up && info.Member
		info.Channels = n.presence.PeerChannels(broadcast.PeerID(id.String()))
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID.Less(out[j].ID) })
	return out
}

// execPresence performs the presence core's effects. Called with n.mu
// held, so effects reach each channel's actors in the order they were
// decided.
func (n *Node) execPresence(eff []broadcast.Effect) {
	for _, e := range eff {
		switch e := e.(type) {
		case broadcast.SendHello:
			n.sendHello(e)
		case broadcast.StartSession:
			if c := n.channels[e.Channel]; c != nil {
				c.sendToSender(sessionUp{peer: e.Peer, session: e.Session})
			}
		case broadcast.EndSession:
			if c := n.channels[e.Channel]; c != nil {
				c.sendToSender(sessionDown{peer: e.Peer})
			}
		case broadcast.AcceptPeer:
			if c := n.channels[e.Channel]; c != nil {
				c.sendToReceiver(acceptPeer{peer: e.Peer, conn: e.Conn})
			}
		case broadcast.DropPeer:
			if c := n.channels[e.Channel]; c != nil {
				c.sendToReceiver(dropPeer{peer: e.Peer})
			}
		case broadcast.RetryHelloAt:
			n.scheduleHelloRetry(e.At)
		}
	}
}

func (n *Node) scheduleHelloRetry(at time.Time) {
	if n.helloTimer != nil && !n.helloAt.IsZero() && !at.Before(n.helloAt) {
		return
	}
	if n.helloTimer != nil {
		n.helloTimer.Stop()
	}
	n.helloAt = at
	n.helloTimer = time.AfterFunc(time.Until(at), func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		if n.closed {
			return
		}
		n.helloAt = time.Time{}
		n.execPresence(n.presence.Tick(time.Now()))
	})
}

// presenceOf returns, for a (re)started channel actor, the sessions its
// sender may run and the peers its receiver accepts.
func (n *Node) presenceOf(channel string) (map[broadcast.PeerID]uint64, map[broadcast.PeerID]broadcast.ConnID) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.presence.Sessions(channel), n.presence.Accepted(channel)
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
		for _, id := range n.presenceGone(snap) {
			n.execPresence(n.presence.RemovePeer(id))
		}
		for _, c := range n.channels {
			c.sendToSender(membersMsg{snap})
			c.sendToReceiver(membersMsg{snap})
		}
		n.mu.Unlock()
	}
}

// presenceGone lists the peers the presence core knows that snap no longer
// lists. Called with n.mu held.
func (n *Node) presenceGone(snap *membership.Snapshot) []broadcast.PeerID {
	var out []broadcast.PeerID
	for id := range n.up {
		if !snap.Contains(id) {
			out = append(out, broadcast.PeerID(id.String()))
		}
	}
	return out
}

// view returns the current member snapshot.
func (n *Node) view() *membership.Snapshot {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.members
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

// goTracked runs fn on a goroutine that Close waits for.
func (n *Node) goTracked(fn func()) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		fn()
	}()
}

// setChannel records c under its name (nil: forget name) and refreshes
// the lock-free list. Called with n.mu held.
func (n *Node) setChannel(name string, c *Channel) {
	if c == nil {
		delete(n.channels, name)
	} else {
		n.channels[name] = c
	}
	list := make([]*Channel, 0, len(n.channels))
	for _, c := range n.channels {
		list = append(list, c)
	}
	n.chanList.Store(&list)
}

// consumerCrashed tells the channels whose consumer actor is child that it
// crashed (a supervisor handled its failure): the event it was handling
// is lost, and is handed over again at once.
func (n *Node) consumerCrashed(child *actor.PID) {
	list := n.chanList.Load()
	if list == nil || child == nil {
		return
	}
	for _, c := range *list {
		if id := c.del.consumerID.Load(); id != nil && *id == child.Id {
			c.sendToConsumer(consumerCrashed{who: child})
		}
	}
}

// channelOfActor returns the channel whose actor tree pid belongs to.
func (n *Node) channelOfActor(pid *actor.PID) *Channel {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, c := range n.channels {
		if c.owns(pid) {
			return c
		}
	}
	return nil
}

// Stats counts node-wide events.
type Stats struct {
	// Restarts counts actor crashes that a supervisor restarted; GiveUps
	// the times one gave up on a child (escalated or stopped it).
	Restarts, GiveUps uint64
	// DeadLetters counts messages that reached no actor, including those
	// refused by full bounded mailboxes.
	DeadLetters uint64
	// MailboxRefusals counts the messages full bounded mailboxes refused.
	MailboxRefusals uint64
	// ConnectionsUp and ConnectionsDown count transport PeerUp and PeerDown
	// events; ConnectionsUp beyond the number of peers are reconnects.
	ConnectionsUp, ConnectionsDown uint64
	// BadHellos counts channel announcements from peers that did not
	// decode.
	BadHellos uint64
	// Remote is the actor remote's counters.
	Remote quicremote.Stats
}

// Stats returns the node-wide counters.
func (n *Node) Stats() Stats {
	return Stats{Restarts: n.restarts.Load(), GiveUps: n.giveUps.Load(), DeadLetters: n.deadLetters.Load(),
		MailboxRefusals: n.refused.Load(), ConnectionsUp: n.connUps.Load(), ConnectionsDown: n.connDowns.Load(),
		BadHellos: n.badHellos.Load(), Remote: n.remote.Stats()}
}

// MailboxRefusals counts messages that full bounded mailboxes (peer links,
// fetches, channels) refused instead of blocking. Each is also counted in
// Stats().DeadLetters.
func (n *Node) MailboxRefusals() uint64 { return n.refused.Load() }

// Health returns nil while every declared channel is running or waiting to
// be spawned, and otherwise an error naming each failed channel (wrapping
// ErrChannelFailed) or ErrClosed.
func (n *Node) Health() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return ErrClosed
	}
	var failed []string
	for name, c := range n.channels {
		if err := c.failure(); err != nil {
			failed = append(failed, name)
		}
	}
	if len(failed) == 0 {
		return nil
	}
	sort.Strings(failed)
	return fmt.Errorf("%w: %s", ErrChannelFailed, strings.Join(failed, ", "))
}

// Close stops every channel, the remote and the transport, and returns
// once every goroutine the node started has ended. A system the node
// created is shut down; one you passed in keeps running (your actors on
// it lose their remote peers).
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	n.closing.Store(true)
	chans := make([]*Channel, 0, len(n.channels))
	for _, c := range n.channels {
		chans = append(chans, c)
	}
	if n.helloTimer != nil {
		n.helloTimer.Stop()
	}
	n.mu.Unlock()
	// Channels first (including those spawned under your supervisors), so
	// no actor of ours outlives the transport, then the remote, the
	// transport, and stragglers.
	for _, c := range chans {
		c.stopActor()
	}
	_ = n.system.Root.StopFuture(n.root).Wait()
	n.cancel()
	_ = n.remote.Close()
	err := n.rpc.Close()
	n.wg.Wait()
	if n.conn != nil {
		if cerr := n.conn.Close(); err == nil {
			err = cerr
		}
	}
	n.system.EventStream.Unsubscribe(n.dlSub)
	if n.ownSystem {
		n.system.Shutdown()
	}
	return err
}

// rootActor supervises the channels opened with OpenChannel.
type rootActor struct{}

type spawnChannel struct{ c *Channel }

func (rootActor) Receive(ctx actor.Context) {
	if m, ok := ctx.Message().(spawnChannel); ok {
		_, err := ctx.SpawnNamed(m.c.Props(), m.c.name)
		ctx.Respond(err)
	}
}

type membersMsg struct{ snap *membership.Snapshot }

// now is the node's clock, read only by actor shells, never by the cores.
func now() time.Time { return time.Now() }
