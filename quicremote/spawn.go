package quicremote

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/abcast/abcast/membership"
	"github.com/abcast/abcast/proto/abcastpb"
)

// Remote spawn.
//
// A node registers kinds (Register); another member asks it to spawn one
// (SpawnNamed, Spawn) with an ActorSpawnRequest sent to the remote itself,
// which spawns the actor from the root context and answers with its id.
// The requesting member may stop the actors it spawned (and their
// children) even without Config.AllowRemoteStop, and has at most
// Config.MaxSpawnsPerPeer of them alive at once.

// Ids the remote keeps for itself: peers' spawn requests go to the
// activator; the spawn watcher learns when a spawned actor stops. Ids
// starting with "quicremote$" are reserved.
const (
	reservedPrefix = "quicremote$"
	activatorID    = reservedPrefix + "activator"
	spawnWatcherID = reservedPrefix + "spawns"
)

var (
	// ErrUnknownKind: the node has no kind of that name registered.
	ErrUnknownKind = errors.New("quicremote: unknown kind")
	// ErrNameTaken: an actor of that name already exists on the node
	// (it wraps actor.ErrNameExists).
	ErrNameTaken = fmt.Errorf("quicremote: name taken: %w", actor.ErrNameExists)
	// ErrSpawnRefused: the node refused the request: an invalid or
	// reserved name, or the requesting member has MaxSpawnsPerPeer live
	// actors there.
	ErrSpawnRefused = errors.New("quicremote: spawn refused")
	// ErrSpawnTimeout: no answer within the timeout (it wraps
	// actor.ErrTimeout). The actor may have been spawned all the same.
	ErrSpawnTimeout = fmt.Errorf("quicremote: spawn timed out: %w", actor.ErrTimeout)
	// ErrNotMember: the node is not a current member.
	ErrNotMember = errors.New("quicremote: not a member")
)

// spawnTable holds the registered kinds and who spawned which actor.
type spawnTable struct {
	mu      sync.Mutex
	kinds   map[string]*actor.Props
	byActor map[string]membership.NodeID // actor id -> the member that spawned it
	perPeer map[membership.NodeID]int
}

// Register lets members spawn actors of kind on this node with props.
// Registering a kind again replaces its props.
func (r *Remote) Register(kind string, props *actor.Props) error {
	if kind == "" || props == nil {
		return errors.New("quicremote: Register needs a kind and props")
	}
	t := &r.spawns
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.kinds == nil {
		t.kinds = make(map[string]*actor.Props)
	}
	t.kinds[kind] = props
	return nil
}

// Spawn is SpawnNamed with a name the node chooses.
func (r *Remote) Spawn(node membership.NodeID, kind string, timeout time.Duration) (*actor.PID, error) {
	return r.SpawnNamed(node, "", kind, timeout)
}

// SpawnNamed asks member node to spawn an actor of kind (registered there
// with Register) named name, and returns its PID once it is spawned, or an
// error: ErrUnknownKind, ErrNameTaken, ErrSpawnRefused, ErrSpawnTimeout
// (no answer within timeout), ErrNotMember, or a *DeadLetterError when the
// request could not be delivered (the member is down or unreachable, its
// queue is full...). node may be this node. The actor runs under node's
// root context; this node may stop it.
func (r *Remote) SpawnNamed(node membership.NodeID, name, kind string, timeout time.Duration) (*actor.PID, error) {
	var resp *abcastpb.ActorSpawnResponse
	switch {
	case node == r.self:
		resp = r.spawnFor(r.self, &abcastpb.ActorSpawnRequest{Kind: kind, Name: name})
	case !r.members().Contains(node):
		return nil, fmt.Errorf("%w: %s", ErrNotMember, node.Short())
	default:
		f := r.system.Root.RequestFuture(r.PID(node, activatorID), &abcastpb.ActorSpawnRequest{Kind: kind, Name: name}, timeout)
		res, err := r.Result(f)
		if errors.Is(err, actor.ErrTimeout) {
			return nil, fmt.Errorf("%w: kind %q on %s, after %v", ErrSpawnTimeout, kind, node.Short(), timeout)
		}
		if err != nil {
			return nil, fmt.Errorf("quicremote: spawning kind %q on %s: %w", kind, node.Short(), err)
		}
		var ok bool
		if resp, ok = res.(*abcastpb.ActorSpawnResponse); !ok {
			return nil, fmt.Errorf("quicremote: spawning kind %q on %s: answered %T", kind, node.Short(), res)
		}
	}
	var err error
	switch resp.Status {
	case abcastpb.ActorSpawnResponse_OK:
		return r.PID(node, resp.Id), nil
	case abcastpb.ActorSpawnResponse_UNKNOWN_KIND:
		err = ErrUnknownKind
	case abcastpb.ActorSpawnResponse_NAME_TAKEN:
		err = ErrNameTaken
	case abcastpb.ActorSpawnResponse_REFUSED:
		err = ErrSpawnRefused
	default:
		err = errors.New("quicremote: spawn failed")
	}
	return nil, fmt.Errorf("%w: kind %q, name %q on %s: %s", err, kind, name, node.Short(), resp.Detail)
}

// spawnFor spawns what req asks for on behalf of member peer.
func (r *Remote) spawnFor(peer membership.NodeID, req *abcastpb.ActorSpawnRequest) *abcastpb.ActorSpawnResponse {
	refuse := func(status abcastpb.ActorSpawnResponse_Status, detail string) *abcastpb.ActorSpawnResponse {
		return &abcastpb.ActorSpawnResponse{Status: status, Detail: detail}
	}
	if req.Name != "" && !spawnableName(req.Name) {
		return refuse(abcastpb.ActorSpawnResponse_REFUSED, "invalid or reserved name")
	}
	if r.hidden.covers(req.Name) {
		return refuse(abcastpb.ActorSpawnResponse_REFUSED, "hidden name")
	}
	t := &r.spawns
	t.mu.Lock()
	props := t.kinds[req.Kind]
	switch {
	case props == nil:
		t.mu.Unlock()
		return refuse(abcastpb.ActorSpawnResponse_UNKNOWN_KIND, "no such kind registered")
	case peer != r.self && t.perPeer[peer] >= r.cfg.MaxSpawnsPerPeer:
		t.mu.Unlock()
		return refuse(abcastpb.ActorSpawnResponse_REFUSED, fmt.Sprintf("%d live actors spawned by this member, MaxSpawnsPerPeer", r.cfg.MaxSpawnsPerPeer))
	}
	// The slot is taken before spawning, so concurrent requests cannot
	// pass the bound together.
	if t.perPeer == nil {
		t.perPeer = make(map[membership.NodeID]int)
		t.byActor = make(map[string]membership.NodeID)
	}
	t.perPeer[peer]++
	t.mu.Unlock()

	var pid *actor.PID
	var err error
	if req.Name == "" {
		pid = r.system.Root.Spawn(props)
	} else {
		pid, err = r.system.Root.SpawnNamed(props, req.Name)
	}
	t.mu.Lock()
	if err == nil {
		t.byActor[pid.Id] = peer
	} else {
		r.releaseSpawnLocked(peer)
	}
	t.mu.Unlock()
	switch {
	case errors.Is(err, actor.ErrNameExists):
		return refuse(abcastpb.ActorSpawnResponse_NAME_TAKEN, "name taken")
	case err != nil:
		return refuse(abcastpb.ActorSpawnResponse_FAILED, err.Error())
	}
	// Learn when it stops, to free the slot and forget the right to stop.
	if proc, ok := r.system.ProcessRegistry.GetLocal(pid.Id); ok {
		proc.SendSystemMessage(pid, &actor.Watch{Watcher: r.system.NewLocalPID(spawnWatcherID)})
	}
	return &abcastpb.ActorSpawnResponse{Status: abcastpb.ActorSpawnResponse_OK, Id: pid.Id}
}

func (r *Remote) releaseSpawnLocked(peer membership.NodeID) {
	t := &r.spawns
	if t.perPeer[peer]--; t.perPeer[peer] <= 0 {
		delete(t.perPeer, peer)
	}
}

// spawnableName reports whether peers may give an actor this name: not
// under another actor ('/'), not one of the prefixes protoactor and the
// remote use for their own processes.
func spawnableName(name string) bool {
	return !strings.ContainsRune(name, '/') && !strings.HasPrefix(name, "$") &&
		!strings.HasPrefix(name, futurePrefix) && !strings.HasPrefix(name, replyAliasPrefix) && !internalProcess(name)
}

// spawnedBy reports whether peer spawned the local actor id or one of its
// ancestors.
func (r *Remote) spawnedBy(peer membership.NodeID, id string) bool {
	t := &r.spawns
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.byActor) == 0 {
		return false
	}
	for i := 0; i <= len(id); i++ {
		if i == len(id) || id[i] == '/' {
			if who, ok := t.byActor[id[:i]]; ok {
				return who == peer
			}
		}
	}
	return false
}

// spawnWatcher is told (Terminated) when an actor spawned for a peer
// stops.
type spawnWatcher struct{ r *Remote }

var _ actor.Process = spawnWatcher{}

func (w spawnWatcher) SendUserMessage(*actor.PID, any) {}

func (w spawnWatcher) SendSystemMessage(_ *actor.PID, msg any) {
	m, ok := msg.(*actor.Terminated)
	if !ok || m.Who == nil || m.Who.Address != w.r.addr {
		return
	}
	t := &w.r.spawns
	t.mu.Lock()
	if peer, ok := t.byActor[m.Who.Id]; ok {
		delete(t.byActor, m.Who.Id)
		w.r.releaseSpawnLocked(peer)
	}
	t.mu.Unlock()
}

func (w spawnWatcher) Stop(*actor.PID) {}
