package broadcast

import (
	"fmt"
	"maps"
	"slices"
	"time"
)

// Presence decides, for one node, which of its channels may exchange slot
// updates with which peer. A node announces the channels it has open to
// each peer with a hello (a version number and the set of names) on every
// connection, and again whenever the set changes. A channel's sender runs
// a session with a peer only while
//
//   - the connection to the peer is up,
//   - the channel is open here,
//   - the peer's latest hello on this connection lists the channel, and
//   - the peer acknowledged a hello of ours listing it on this connection,
//
// and a channel's receiver accepts a peer's updates only while that peer's
// latest hello lists the channel.
//
// The acknowledgement is what makes a channel opened late start at once
// and a channel closed and opened again start clean: the peer has applied
// our announcement (its receiver accepts us) before our first update
// leaves, and updates still in flight from before a close reach a receiver
// that no longer accepts them. Without it a sender would push into a
// channel the peer has not opened, be refused, and back off.
//
// Presence is pure: the caller performs its effects (SendHello,
// StartSession, EndSession, AcceptPeer, DropPeer, RetryHelloAt) and feeds
// back their outcomes and the time.
type Presence struct {
	open        map[string]bool
	version     uint64 // of our announcement; grows with every change
	peers       map[PeerID]*presencePeer
	nextSession uint64
	retryDelay  time.Duration
}

type presencePeer struct {
	up   bool
	conn ConnID
	// What the peer announced: the newest version applied on conn, and the
	// set of channels of its latest hello on any connection (kept across
	// connections, so that a hello on a new connection that no longer lists
	// a channel still drops what the peer advertised there before);
	// theirsConn is the connection that hello came on.
	theirVersion uint64
	theirs       map[string]bool
	theirsConn   ConnID
	// The newest hello of ours the peer acknowledged on conn, and the set
	// it listed; inflight is the version of the hello being sent (0: none).
	ackedVersion uint64
	acked        map[string]bool
	inflight     uint64
	inflightSet  map[string]bool // what the hello in flight lists
	retryAt      time.Time       // a failed hello is resent then (zero: none)
	sessions     map[string]uint64
}

// Presence effects.
type (
	// SendHello asks the caller to send our announcement (Version,
	// Channels) to Peer on connection Conn and to report HelloAcked or
	// HelloFailed.
	SendHello struct {
		Peer     PeerID
		Conn     ConnID
		Version  uint64
		Channels []string
	}
	// StartSession: Channel's sender may now send to Peer; Session is a
	// number larger than any earlier session's (use it as the sender
	// core's ConnID).
	StartSession struct {
		Channel string
		Peer    PeerID
		Session uint64
	}
	// EndSession: Channel's sender must stop sending to Peer (the sender
	// core's PeerDown).
	EndSession struct {
		Channel string
		Peer    PeerID
	}
	// AcceptPeer: Channel's receiver may apply Peer's updates arriving on
	// connection Conn.
	AcceptPeer struct {
		Channel string
		Peer    PeerID
		Conn    ConnID
	}
	// DropPeer: Peer closed Channel; its receiver forgets what the peer
	// advertised there and refuses its updates until the next AcceptPeer.
	DropPeer struct {
		Channel string
		Peer    PeerID
	}
	// RetryHelloAt asks for a call to Presence.Tick at At.
	RetryHelloAt struct{ At time.Time }
)

func (SendHello) isEffect()    {}
func (StartSession) isEffect() {}
func (EndSession) isEffect()   {}
func (AcceptPeer) isEffect()   {}
func (DropPeer) isEffect()     {}
func (RetryHelloAt) isEffect() {}

// NewPresence returns a Presence with no channel open and no peer up. A
// hello that failed while its connection stayed up is sent again after
// retryDelay.
func NewPresence(retryDelay time.Duration) *Presence {
	// Version 1 announces no channel; peers apply only newer versions.
	return &Presence{open: map[string]bool{}, peers: map[PeerID]*presencePeer{}, retryDelay: retryDelay, version: 1}
}

// Channels returns the channels open here, sorted.
func (p *Presence) Channels() []string { return sortedNames(p.open) }

// Version is the version of our current announcement.
func (p *Presence) Version() uint64 { return p.version }

// Open records that channel is open here; every peer is told.
func (p *Presence) Open(channel string) []Effect {
	if p.open[channel] {
		return nil
	}
	p.open[channel] = true
	var eff []Effect
	// Peers that already announced it are accepted at once: their updates
	// follow only once they have our hello, but the receiver must not
	// refuse those that are quicker than this call's effects.
	for _, id := range p.sortedPeers() {
		if pp := p.peers[id]; pp.announcedNow(channel) {
			eff = append(eff, AcceptPeer{Channel: channel, Peer: id, Conn: pp.conn})
		}
	}
	return p.announce(eff)
}

// Close records that channel is closed here: its sessions end and every
// peer is told.
func (p *Presence) Close(channel string) []Effect {
	if !p.open[channel] {
		return nil
	}
	delete(p.open, channel)
	var eff []Effect
	for _, id := range p.sortedPeers() {
		pp := p.peers[id]
		eff = p.endSession(id, pp, channel, eff)
		// What peers acknowledged about this incarnation of the channel must
		// not start a session of the next one: that waits for a hello sent
		// after it opened.
		delete(pp.acked, channel)
		delete(pp.inflightSet, channel)
	}
	return p.announce(eff)
}

func (p *Presence) announce(eff []Effect) []Effect {
	p.version++
	for _, id := range p.sortedPeers() {
		eff = p.maybeSend(id, p.peers[id], eff)
	}
	return eff
}

// PeerUp reports connection conn to peer (a newer one replaces the old:
// sessions on the old end, and the peer must announce itself again).
// Older or repeated connections are ignored.
func (p *Presence) PeerUp(peer PeerID, conn ConnID) []Effect {
	pp := p.peers[peer]
	if pp == nil {
		pp = &presencePeer{sessions: map[string]uint64{}}
		p.peers[peer] = pp
	} else if conn <= pp.conn {
		return nil
	}
	eff := p.endAll(peer, pp, nil)
	*pp = presencePeer{up: true, conn: conn, sessions: pp.sessions, theirs: pp.theirs, theirsConn: pp.theirsConn}
	return p.maybeSend(peer, pp, eff)
}

// PeerDown reports that connection conn to peer is gone. A PeerDown for
// an older connection than the current one is ignored. What the peer
// advertised stays with the receivers (it is resent and synced on the next
// connection); only the sessions end.
func (p *Presence) PeerDown(peer PeerID, conn ConnID) []Effect {
	pp := p.peers[peer]
	if pp == nil || !pp.up || conn != pp.conn {
		return nil
	}
	eff := p.endAll(peer, pp, nil)
	pp.up = false
	pp.inflight, pp.inflightSet, pp.retryAt = 0, nil, time.Time{}
	pp.acked = nil
	return eff
}

// RemovePeer forgets peer (it left the subnet).
func (p *Presence) RemovePeer(peer PeerID) []Effect {
	pp := p.peers[peer]
	if pp == nil {
		return nil
	}
	eff := p.endAll(peer, pp, nil)
	delete(p.peers, peer)
	return eff
}

// HelloReceived applies peer's announcement that arrived on conn. It
// returns ErrStale (and changes nothing) for a hello of an older connection
// or version, and ErrUnknownPeer for a peer that is not up.
func (p *Presence) HelloReceived(peer PeerID, conn ConnID, version uint64, channels []string) ([]Effect, error) {
	pp := p.peers[peer]
	switch {
	case pp == nil || !pp.up:
		return nil, fmt.Errorf("%w: hello from %s, which is not connected", ErrUnknownPeer, peer)
	case conn != pp.conn || version <= pp.theirVersion:
		return nil, fmt.Errorf("%w: hello v%d on connection %d (have v%d on %d)", ErrStale, version, conn, pp.theirVersion, pp.conn)
	}
	theirs := make(map[string]bool, len(channels))
	for _, c := range channels {
		theirs[c] = true
	}
	var eff []Effect
	for _, c := range sortedNames(p.open) {
		switch {
		case theirs[c] && !pp.announcedNow(c):
			eff = append(eff, AcceptPeer{Channel: c, Peer: peer, Conn: conn})
		case !theirs[c] && pp.theirs[c]:
			eff = p.endSession(peer, pp, c, eff)
			eff = append(eff, DropPeer{Channel: c, Peer: peer})
		}
	}
	pp.theirVersion, pp.theirs, pp.theirsConn = version, theirs, conn
	return p.startSessions(peer, pp, eff), nil
}

// HelloAcked reports that peer acknowledged our hello version on conn.
func (p *Presence) HelloAcked(peer PeerID, conn ConnID, version uint64) []Effect {
	pp := p.peers[peer]
	if pp == nil || !pp.up || conn != pp.conn || version != pp.inflight {
		return nil
	}
	// The peer now knows what that hello listed; channels opened since wait
	// for the next one, channels closed since have no session to start
	// (startSessions looks only at open ones).
	pp.inflight = 0
	pp.ackedVersion, pp.acked, pp.inflightSet = version, pp.inflightSet, nil
	eff := p.startSessions(peer, pp, nil)
	return p.maybeSend(peer, pp, eff)
}

// HelloFailed reports that sending our hello version to peer on conn
// failed; it is sent again at now + the retry delay while the connection
// stays up.
func (p *Presence) HelloFailed(peer PeerID, conn ConnID, version uint64, now time.Time) []Effect {
	pp := p.peers[peer]
	if pp == nil || !pp.up || conn != pp.conn || version != pp.inflight {
		return nil
	}
	pp.inflight, pp.inflightSet = 0, nil
	pp.retryAt = now.Add(p.retryDelay)
	return []Effect{RetryHelloAt{At: pp.retryAt}}
}

// Tick resends hellos whose retry time has come.
func (p *Presence) Tick(now time.Time) []Effect {
	var eff []Effect
	for _, id := range p.sortedPeers() {
		pp := p.peers[id]
		if !pp.retryAt.IsZero() && !now.Before(pp.retryAt) {
			pp.retryAt = time.Time{}
			eff = p.maybeSend(id, pp, eff)
		}
	}
	return eff
}

// Session returns the current session of channel with peer (0: none).
func (p *Presence) Session(channel string, peer PeerID) uint64 {
	if pp := p.peers[peer]; pp != nil {
		return pp.sessions[channel]
	}
	return 0
}

// Sessions returns every running session of channel, by peer.
func (p *Presence) Sessions(channel string) map[PeerID]uint64 {
	out := map[PeerID]uint64{}
	for id, pp := range p.peers {
		if s := pp.sessions[channel]; s != 0 {
			out[id] = s
		}
	}
	return out
}

// Accepted returns the peers whose updates channel's receiver may apply,
// with the connection they must arrive on.
func (p *Presence) Accepted(channel string) map[PeerID]ConnID {
	out := map[PeerID]ConnID{}
	if !p.open[channel] {
		return out
	}
	for id, pp := range p.peers {
		if pp.announcedNow(channel) {
			out[id] = pp.conn
		}
	}
	return out
}

// announcedNow reports whether the peer's latest hello on its current
// connection lists channel.
func (pp *presencePeer) announcedNow(channel string) bool {
	return pp.up && pp.theirsConn == pp.conn && pp.theirs[channel]
}

// PeerChannels returns the channels peer announced on its current
// connection, sorted.
func (p *Presence) PeerChannels(peer PeerID) []string {
	if pp := p.peers[peer]; pp != nil && pp.up && pp.theirsConn == pp.conn {
		return sortedNames(pp.theirs)
	}
	return nil
}

// maybeSend sends our newest announcement to pp unless it has it, one is
// in flight, or a retry is pending.
func (p *Presence) maybeSend(id PeerID, pp *presencePeer, eff []Effect) []Effect {
	if pp == nil || !pp.up || pp.inflight != 0 || !pp.retryAt.IsZero() || pp.ackedVersion == p.version && pp.acked != nil {
		return eff
	}
	pp.inflight, pp.inflightSet = p.version, maps.Clone(p.open)
	return append(eff, SendHello{Peer: id, Conn: pp.conn, Version: p.version, Channels: sortedNames(p.open)})
}

func (p *Presence) startSessions(id PeerID, pp *presencePeer, eff []Effect) []Effect {
	if !pp.up {
		return eff
	}
	for _, c := range sortedNames(p.open) {
		if pp.announcedNow(c) && pp.acked[c] && pp.sessions[c] == 0 {
			p.nextSession++
			pp.sessions[c] = p.nextSession
			eff = append(eff, StartSession{Channel: c, Peer: id, Session: p.nextSession})
		}
	}
	return eff
}

func (p *Presence) endSession(id PeerID, pp *presencePeer, channel string, eff []Effect) []Effect {
	if pp.sessions[channel] == 0 {
		return eff
	}
	delete(pp.sessions, channel)
	return append(eff, EndSession{Channel: channel, Peer: id})
}

func (p *Presence) endAll(id PeerID, pp *presencePeer, eff []Effect) []Effect {
	for _, c := range sortedNames(pp.sessions) {
		eff = p.endSession(id, pp, c, eff)
	}
	return eff
}

func (p *Presence) sortedPeers() []PeerID {
	out := make([]PeerID, 0, len(p.peers))
	for id := range p.peers {
		out = append(out, id)
	}
	sortPeers(out)
	return out
}

func sortedNames[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// CheckInvariants reports the first violated invariant: a session runs
// only for an open channel, an up peer that announced it and acknowledged
// our hello listing it; session numbers are distinct and at most the last
// one issued; at most one hello is in flight per peer, never newer than
// our version.
func (p *Presence) CheckInvariants() error {
	seen := map[uint64]bool{}
	for id, pp := range p.peers {
		if pp.inflight > p.version || pp.ackedVersion > p.version {
			return fmt.Errorf("presence: peer %s: hello v%d in flight / v%d acked beyond our v%d", id, pp.inflight, pp.ackedVersion, p.version)
		}
		if !pp.up && (pp.inflight != 0 || len(pp.sessions) > 0) {
			return fmt.Errorf("presence: peer %s is down with a hello in flight or %d sessions", id, len(pp.sessions))
		}
		for c, s := range pp.sessions {
			switch {
			case s == 0 || s > p.nextSession || seen[s]:
				return fmt.Errorf("presence: peer %s channel %s: bad session %d (last issued %d)", id, c, s, p.nextSession)
			case !p.open[c] || !pp.announcedNow(c) || !pp.acked[c]:
				return fmt.Errorf("presence: peer %s channel %s: session %d runs without open %v, announced %v, acked %v", id, c, s, p.open[c], pp.announcedNow(c), pp.acked[c])
			}
			seen[s] = true
		}
	}
	return nil
}
