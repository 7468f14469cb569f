package transport

import (
	"context"
	"crypto/hkdf"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/rs/zerolog"

	"github.com/abcast/abcast/membership"
)

// Transport is the QUIC implementation of RPC. See the package doc for the
// connection rules.
type Transport struct {
	cfg    Config
	self   *membership.Identity
	source membership.Source
	log    zerolog.Logger
	events EventFunc

	qt      *quic.Transport
	ownQT   bool
	ln      *quic.Listener
	qconf   *quic.Config
	members func() membership.MemberSet

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	garbageDatagrams atomic.Uint64
	handshakes       *handshakeGate

	hmu      sync.RWMutex
	handlers map[string]*handlerEntry

	mu         sync.Mutex
	closed     bool
	applied    uint64 // version of the last snapshot applied
	peers      map[membership.NodeID]*peerState
	counters   counterTable
	nextConnID uint64

	// evMu serialises event delivery. It is taken while mu is still held
	// and mu released before calling out, so events leave in state order and
	// the callback may call back into ConnID/Peers.
	evMu sync.Mutex
}

type peerState struct {
	id       membership.NodeID
	addr     string
	conn     *quic.Conn // current welcomed connection, nil if down
	connID   uint64
	stopDial context.CancelFunc // non-nil while we run a dialler for it
}

type handlerEntry struct {
	h     Handler       // request protocol, or
	sh    StreamHandler // stream protocol
	limit int64
	mu    sync.Mutex
	// active counts running invocations per peer: the limit applies to each
	// peer separately, so one peer saturating a protocol (a slow or hostile
	// one) never gets another peer's requests refused.
	active map[membership.NodeID]int64
}

// acquire takes one of peer's slots for this protocol, or reports false.
func (he *handlerEntry) acquire(peer membership.NodeID) bool {
	he.mu.Lock()
	defer he.mu.Unlock()
	if he.active[peer] >= he.limit {
		return false
	}
	if he.active == nil {
		he.active = make(map[membership.NodeID]int64)
	}
	he.active[peer]++
	return true
}

func (he *handlerEntry) release(peer membership.NodeID) {
	he.mu.Lock()
	defer he.mu.Unlock()
	if he.active[peer]--; he.active[peer] <= 0 {
		delete(he.active, peer)
	}
}

// StatelessResetKey derives the node's QUIC stateless reset key from its
// private key, so the key survives restarts: a peer that still holds a
// connection to our previous incarnation gets a reset it can verify for its
// first packet and notices the restart at once instead of after the idle
// timeout. Set it on any quic.Transport you pass to NewWithTransport.
func StatelessResetKey(id *membership.Identity) (*quic.StatelessResetKey, error) {
	k, err := hkdf.Key(sha256.New, id.PrivateKey.Seed(), nil, "abcast quic stateless reset key v1", 32)
	if err != nil {
		return nil, fmt.Errorf("quicremote: derive stateless reset key: %w", err)
	}
	var key quic.StatelessResetKey
	copy(key[:], k)
	return &key, nil
}

// New starts a transport on conn (a UDP socket, or any net.PacketConn such
// as a simulated network in tests). The caller keeps ownership of conn and
// closes it after Close. For production pass the raw *net.UDPConn: a
// wrapping PacketConn disables UDP segmentation offload.
func New(cfg Config, self *membership.Identity, source membership.Source, conn net.PacketConn, log zerolog.Logger, events EventFunc) (*Transport, error) {
	if conn == nil {
		return nil, errors.New("quicremote: nil PacketConn")
	}
	if self == nil {
		return nil, errors.New("quicremote: nil identity")
	}
	key, err := StatelessResetKey(self)
	if err != nil {
		return nil, err
	}
	qt := &quic.Transport{Conn: conn, StatelessResetKey: key}
	t, err := NewWithTransport(cfg, self, source, qt, log, events)
	if err != nil {
		_ = qt.Close()
		return nil, err
	}
	t.ownQT = true
	return t, nil
}

// NewWithTransport is New on a quic.Transport the caller built (and closes
// after Close). Give it StatelessResetKey(self) for fast restart detection.
// It sets qt's ConnContext and VerifySourceAddress, which bound incoming
// handshakes (MaxPendingHandshakes, RetryHandshakesAbove), and refuses a
// qt that has either set already.
func NewWithTransport(cfg Config, self *membership.Identity, source membership.Source, qt *quic.Transport, log zerolog.Logger, events EventFunc) (*Transport, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if self == nil || source == nil || qt == nil {
		return nil, errors.New("quicremote: identity, source and quic transport are required")
	}
	if events == nil {
		events = func(PeerEvent) {}
	}
	t := &Transport{
		cfg:      cfg,
		self:     self,
		source:   source,
		log:      log.With().Str("node", self.ID.Short()).Logger(),
		events:   events,
		qt:       qt,
		handlers: make(map[string]*handlerEntry),
		peers:    make(map[membership.NodeID]*peerState),
		members:  membership.LatestMembers(source),
	}
	t.qconf = &quic.Config{
		HandshakeIdleTimeout:           cfg.HandshakeTimeout / 2,
		MaxIdleTimeout:                 cfg.IdleTimeout,
		KeepAlivePeriod:                cfg.KeepAlive,
		MaxIncomingStreams:             int64(cfg.MaxIncomingStreams),
		MaxIncomingUniStreams:          -1,
		RequireStreamCreditRelease:     true,
		InitialStreamReceiveWindow:     cfg.InitialStreamWindow,
		MaxStreamReceiveWindow:         cfg.MaxStreamWindow,
		InitialConnectionReceiveWindow: cfg.InitialConnectionWindow,
		MaxConnectionReceiveWindow:     cfg.MaxConnectionWindow,
		// Datagrams carry only our heartbeat (see heartbeat); received ones
		// are never read, and quic-go drops them once its small queue is
		// full, so they cost at most a few kilobytes per connection.
		EnableDatagrams: true,
	}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	t.handshakes = newHandshakeGate(t.ctx, cfg, t.log)
	if err := t.handshakes.install(qt); err != nil {
		t.cancel()
		return nil, err
	}
	// Incoming handshakes get the shorter idle timeout: until it completes
	// a handshake may come from anyone.
	lconf := t.qconf.Clone()
	lconf.HandshakeIdleTimeout = cfg.AcceptHandshakeTimeout
	ln, err := qt.Listen(membership.ServerTLSConfig(self, t.members, []string{ALPN}), lconf)
	if err != nil {
		t.cancel()
		return nil, fmt.Errorf("quicremote: listen: %w", err)
	}
	t.ln = ln

	t.applySnapshot(source.Current())
	watch := source.Watch(t.ctx)
	t.wg.Add(4)
	go t.watchLoop(watch)
	go t.acceptLoop()
	go t.countGarbageDatagrams()
	go t.heartbeats()
	return t, nil
}

// LocalAddr is the address of the UDP socket.
func (t *Transport) LocalAddr() net.Addr { return t.qt.Conn.LocalAddr() }

// ID is this node's id.
func (t *Transport) ID() membership.NodeID { return t.self.ID }

// Handle implements RPC.
func (t *Transport) Handle(protocol string, h Handler, limit int) error {
	return registerHandler(&t.hmu, t.handlers, protocol, h, nil, limit, t.cfg.DefaultProtocolLimit)
}

// HandleStream implements RPC.
func (t *Transport) HandleStream(protocol string, h StreamHandler, limit int) error {
	return registerHandler(&t.hmu, t.handlers, protocol, nil, h, limit, t.cfg.DefaultProtocolLimit)
}

// ConnID implements RPC.
func (t *Transport) ConnID(peer membership.NodeID) (uint64, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p := t.peers[peer]; p != nil && p.conn != nil {
		return p.connID, true
	}
	return 0, false
}

// Peers implements RPC.
func (t *Transport) Peers() []membership.NodeID {
	t.mu.Lock()
	var ids []membership.NodeID
	for id, p := range t.peers {
		if p.conn != nil {
			ids = append(ids, id)
		}
	}
	t.mu.Unlock()
	slices.SortFunc(ids, membership.NodeID.Compare)
	return ids
}

// Stats returns the misbehaviour counters of peer (zero if never seen).
func (t *Transport) Stats(peer membership.NodeID) PeerStats { return t.counters.stats(peer) }

// Handshakes returns the counters of incoming QUIC handshakes.
func (t *Transport) Handshakes() HandshakeStats { return t.handshakes.stats() }

// GarbageDatagrams counts UDP datagrams that were not QUIC at all. Packets
// that look like QUIC but fail decryption are dropped inside quic-go.
func (t *Transport) GarbageDatagrams() uint64 { return t.garbageDatagrams.Load() }

func (t *Transport) counter(peer membership.NodeID) *peerCounters { return t.counters.get(peer) }

// Close implements RPC.
func (t *Transport) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	var conns []*quic.Conn
	for _, p := range t.peers {
		if p.stopDial != nil {
			p.stopDial()
		}
		if p.conn != nil {
			conns = append(conns, p.conn)
		}
	}
	t.mu.Unlock()
	t.cancel()
	for _, c := range conns {
		_ = c.CloseWithError(connShutdown, "shutdown")
	}
	err := t.ln.Close()
	t.wg.Wait()
	if t.ownQT {
		if cerr := t.qt.Close(); err == nil {
			err = cerr
		}
	}
	t.log.Debug().Msg("transport closed")
	return err
}

// ---- membership ----

func (t *Transport) watchLoop(ch <-chan *membership.Snapshot) {
	defer t.wg.Done()
	for snap := range ch {
		t.applySnapshot(snap)
	}
}

// weDial is the dial rule: of two members, the lower NodeID dials.
func (t *Transport) weDial(peer membership.NodeID) bool { return t.self.ID.Less(peer) }

type pendingDown struct {
	conn *quic.Conn
	code quic.ApplicationErrorCode
	ev   PeerDown
}

// applySnapshot brings the peer table in line with snap: new members are
// added (and dialled if the rule says so), removed ones dropped and their
// connection closed at once, moved ones redialled. Older or repeated
// versions are ignored, so it is safe to call from several places.
func (t *Transport) applySnapshot(snap *membership.Snapshot) {
	if snap == nil {
		return
	}
	t.mu.Lock()
	if t.closed || (t.applied != 0 && snap.Version <= t.applied) {
		t.mu.Unlock()
		return
	}
	t.applied = snap.Version
	var downs []pendingDown
	for id, p := range t.peers {
		if snap.Contains(id) {
			continue
		}
		if p.stopDial != nil {
			p.stopDial()
		}
		if p.conn != nil {
			downs = append(downs, pendingDown{p.conn, connRemoved, PeerDown{id, p.connID, fmt.Errorf("peer %s removed from membership (version %d)", id.Short(), snap.Version)}})
		}
		delete(t.peers, id)
		t.log.Info().Str("peer", id.Short()).Uint64("version", snap.Version).Msg("peer removed")
	}
	for _, id := range snap.IDs() {
		if id == t.self.ID {
			continue
		}
		m, _ := snap.Member(id)
		p := t.peers[id]
		if p == nil {
			p = &peerState{id: id, addr: m.Addr}
			t.peers[id] = p
			t.log.Info().Str("peer", id.Short()).Str("addr", m.Addr).Msg("peer added")
			if t.weDial(id) {
				t.startDialer(p)
			}
			continue
		}
		if p.addr == m.Addr {
			continue
		}
		t.log.Info().Str("peer", id.Short()).Str("old", p.addr).Str("new", m.Addr).Msg("peer address changed")
		p.addr = m.Addr
		if t.weDial(id) {
			if p.stopDial != nil {
				p.stopDial()
			}
			if p.conn != nil {
				downs = append(downs, pendingDown{p.conn, connAddrChanged, PeerDown{id, p.connID, fmt.Errorf("peer %s moved to %s", id.Short(), m.Addr)}})
				p.conn = nil
			}
			t.startDialer(p)
		}
	}
	t.evMu.Lock()
	t.mu.Unlock()
	for _, d := range downs {
		_ = d.conn.CloseWithError(d.code, d.ev.Err.Error())
		t.events(d.ev)
	}
	t.evMu.Unlock()
}

// startDialer runs a dial loop for p. Caller holds mu.
func (t *Transport) startDialer(p *peerState) {
	ctx, cancel := context.WithCancel(t.ctx)
	p.stopDial = cancel
	t.wg.Add(1)
	go t.dialLoop(ctx, p.id, p.addr)
}

// ---- connections ----

// dialLoop keeps one connection to peer at addr until ctx ends: dial,
// welcome, serve until the connection dies, then redial with backoff.
func (t *Transport) dialLoop(ctx context.Context, peer membership.NodeID, addr string) {
	defer t.wg.Done()
	log := t.log.With().Str("peer", peer.Short()).Str("addr", addr).Logger()
	backoff := t.cfg.ReconnectBackoffMin
	for {
		conn, err := t.dial(ctx, peer, addr)
		if err == nil {
			if connID, ok := t.register(ctx, peer, conn); ok {
				log.Debug().Uint64("conn", connID).Msg("connected")
				t.serveConn(peer, conn, connID)
				backoff = t.cfg.ReconnectBackoffMin
			}
		} else if ctx.Err() == nil {
			log.Debug().Err(err).Dur("backoff", backoff).Msg("dial failed")
		}
		timer := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
		if err != nil {
			backoff = min(2*backoff, t.cfg.ReconnectBackoffMax)
		}
	}
}

// dial opens a connection to peer and runs the dialler's half of the
// welcome exchange.
func (t *Transport) dial(ctx context.Context, peer membership.NodeID, addr string) (*quic.Conn, error) {
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", addr, err)
	}
	tlsConf := membership.ClientTLSConfig(t.self, t.members, peer, []string{ALPN})
	dctx, cancel := context.WithTimeout(ctx, t.cfg.HandshakeTimeout)
	defer cancel()
	conn, err := t.qt.Dial(dctx, raddr, tlsConf, t.qconf)
	if err != nil {
		return nil, fmt.Errorf("dial peer %s: %w", peer.Short(), err)
	}
	if err := t.welcomeAsDialler(dctx, conn, peer); err != nil {
		_ = conn.CloseWithError(connWelcomeFailed, "welcome failed")
		return nil, fmt.Errorf("welcome peer %s: %w", peer.Short(), err)
	}
	return conn, nil
}

func (t *Transport) welcomeAsDialler(ctx context.Context, conn *quic.Conn, peer membership.NodeID) error {
	wctx, cancel := context.WithTimeout(ctx, t.cfg.WelcomeTimeout)
	defer cancel()
	str, err := conn.OpenStreamSync(wctx)
	if err != nil {
		return err
	}
	stop := context.AfterFunc(wctx, func() { str.CancelRead(codeCancelled); str.CancelWrite(codeCancelled) })
	defer stop()
	if _, err := str.Write(welcomeFor(t.self.ID)); err != nil {
		return err
	}
	if err := str.Close(); err != nil {
		return err
	}
	return readWelcome(str, peer)
}

// readWelcome reads the other side's welcome and checks that it claims the
// NodeID its certificate proved (want).
func readWelcome(str *quic.Stream, want membership.NodeID) error {
	got, err := readPayload(str, welcomeLen)
	if err != nil {
		return err
	}
	if len(got) != welcomeLen || string(got[:len(welcomeMagic)]) != string(welcomeMagic) {
		return fmt.Errorf("%w: bad welcome", ErrProtocol)
	}
	if claimed := membership.NodeID(got[len(welcomeMagic):]); claimed != want {
		return fmt.Errorf("%w: peer claims to be %s but its certificate is %s's", ErrProtocol, claimed.Short(), want.Short())
	}
	return expectEOF(str)
}

func (t *Transport) acceptLoop() {
	defer t.wg.Done()
	for {
		conn, err := t.ln.Accept(t.ctx)
		if err != nil {
			return
		}
		t.handshakes.complete(conn)
		t.wg.Add(1)
		go t.handleIncoming(conn)
	}
}

// handleIncoming admits a connection a peer dialled: it must come from a
// current member whose NodeID is lower than ours, and must welcome us.
func (t *Transport) handleIncoming(conn *quic.Conn) {
	defer t.wg.Done()
	peer, err := membership.PeerID(conn.ConnectionState().TLS)
	if err != nil {
		_ = conn.CloseWithError(connWelcomeFailed, "no peer identity")
		return
	}
	log := t.log.With().Str("peer", peer.Short()).Logger()
	if !peer.Less(t.self.ID) {
		log.Warn().Msg("refusing connection from a peer that should wait for our dial")
		_ = conn.CloseWithError(connWrongDialer, "the lower node id dials")
		return
	}
	// The TLS check used the source's latest snapshot; make sure our peer
	// table has caught up with it before looking the peer up.
	t.applySnapshot(t.source.Current())
	if err := t.welcomeAsAcceptor(conn, peer); err != nil {
		log.Debug().Err(err).Msg("welcome failed")
		_ = conn.CloseWithError(connWelcomeFailed, "welcome failed")
		return
	}
	connID, ok := t.register(t.ctx, peer, conn)
	if !ok {
		return
	}
	log.Debug().Uint64("conn", connID).Msg("accepted")
	t.serveConn(peer, conn, connID)
}

func (t *Transport) welcomeAsAcceptor(conn *quic.Conn, peer membership.NodeID) error {
	ctx, cancel := context.WithTimeout(t.ctx, t.cfg.WelcomeTimeout)
	defer cancel()
	str, err := conn.AcceptStream(ctx)
	if err != nil {
		return err
	}
	defer str.ReleaseStreamCredit()
	stop := context.AfterFunc(ctx, func() { str.CancelRead(codeCancelled); str.CancelWrite(codeCancelled) })
	defer stop()
	if err := readWelcome(str, peer); err != nil {
		return err
	}
	if _, err := str.Write(welcomeFor(t.self.ID)); err != nil {
		return err
	}
	return str.Close()
}

// register makes conn the current connection to peer, replacing (and
// closing) an older one, and reports PeerUp. It refuses if the peer is no
// longer a member, the transport is closing, or ctx (the dialler's
// lifetime) ended; ctx is cancelled under mu, so a superseded dialler can
// never install its connection.
func (t *Transport) register(ctx context.Context, peer membership.NodeID, conn *quic.Conn) (uint64, bool) {
	t.mu.Lock()
	p := t.peers[peer]
	if t.closed || p == nil || ctx.Err() != nil {
		t.mu.Unlock()
		_ = conn.CloseWithError(connRemoved, "not a member")
		return 0, false
	}
	old, oldID := p.conn, p.connID
	t.nextConnID++
	p.conn, p.connID = conn, t.nextConnID
	connID := p.connID
	t.evMu.Lock()
	t.mu.Unlock()
	if old != nil {
		_ = old.CloseWithError(connReplaced, "replaced by a newer connection")
		t.events(PeerDown{peer, oldID, fmt.Errorf("connection to %s replaced by a newer one", peer.Short())})
	}
	t.events(PeerUp{peer, connID})
	t.evMu.Unlock()
	return connID, true
}

// unregister reports PeerDown if conn is still the current connection.
func (t *Transport) unregister(peer membership.NodeID, conn *quic.Conn, connID uint64) {
	cause := context.Cause(conn.Context())
	t.mu.Lock()
	p := t.peers[peer]
	if p == nil || p.conn != conn {
		t.mu.Unlock()
		return
	}
	p.conn = nil
	t.evMu.Lock()
	t.mu.Unlock()
	t.log.Debug().Str("peer", peer.Short()).Uint64("conn", connID).AnErr("cause", cause).Msg("connection down")
	t.events(PeerDown{peer, connID, fmt.Errorf("connection to %s lost: %w", peer.Short(), cause)})
	t.evMu.Unlock()
}

// serveConn accepts the peer's streams until the connection dies, then
// reports it down. Each stream is served on its own goroutine; there are at
// most MaxIncomingStreams of them, because a stream's credit is released
// only when its goroutine finishes.
func (t *Transport) serveConn(peer membership.NodeID, conn *quic.Conn, connID uint64) {
	defer t.unregister(peer, conn, connID)
	ctrs := t.counter(peer)
	for {
		str, err := conn.AcceptStream(t.ctx)
		if err != nil {
			if t.ctx.Err() != nil {
				_ = conn.CloseWithError(connShutdown, "shutdown")
			}
			return
		}
		t.wg.Add(1)
		go t.serveStream(conn.Context(), peer, connID, ctrs, str)
	}
}

// heartbeatSize is above quic-go's minimum size for answering a packet
// with a stateless reset (42 bytes); QUIC's own keep-alive PINGs are
// smaller and would go unanswered by a restarted peer.
const heartbeatSize = 64

// heartbeats sends a datagram on every current connection each KeepAlive.
// Its only purpose is to be big enough that a restarted peer answers it
// with a stateless reset, so an idle connection to a restarted peer dies
// within one KeepAlive instead of one IdleTimeout. One goroutine serves
// every connection (not one per connection: at 50 peers that was 50
// goroutines a node). SendDatagram blocks only once 32 of a connection's
// datagrams are queued unsent, 32 KeepAlives without a packet leaving,
// and the IdleTimeout (which must exceed KeepAlive) closes such a
// connection long before, which unblocks it.
func (t *Transport) heartbeats() {
	defer t.wg.Done()
	tick := time.NewTicker(t.cfg.KeepAlive)
	defer tick.Stop()
	beat := make([]byte, heartbeatSize)
	var conns []*quic.Conn
	for {
		select {
		case <-t.ctx.Done():
			return
		case <-tick.C:
		}
		t.mu.Lock()
		for _, p := range t.peers {
			if p.conn != nil {
				conns = append(conns, p.conn)
			}
		}
		t.mu.Unlock()
		for _, c := range conns {
			_ = c.SendDatagram(beat)
		}
		clear(conns)
		conns = conns[:0]
	}
}

// serveStream reads one request, runs its handler and writes the response.
func (t *Transport) serveStream(connCtx context.Context, peer membership.NodeID, connID uint64, ctrs *peerCounters, str *quic.Stream) {
	defer t.wg.Done()
	defer str.ReleaseStreamCredit()
	reset := func(code quic.StreamErrorCode) { resetStream(str, code) }
	log := t.log.With().Str("peer", peer.Short()).Int64("stream", int64(str.StreamID())).Logger()

	// HeaderTimeout covers the header and, for a request, its frame
	// length; the payload then moves under ProgressTimeout.
	_ = str.SetReadDeadline(time.Now().Add(t.cfg.HeaderTimeout))
	kind, protocol, err := readRequestHeader(str)
	if err != nil {
		if !isStreamOrConnErr(err) {
			ctrs.garbage.Add(1)
			log.Debug().Err(err).Msg("bad request header")
		}
		reset(codeGarbage)
		return
	}
	log = log.With().Str("protocol", protocol).Logger()

	t.hmu.RLock()
	he := t.handlers[protocol]
	t.hmu.RUnlock()
	if he == nil || (kind == kindStream) != (he.sh != nil) {
		ctrs.refused.Add(1)
		log.Debug().Msg("no handler")
		reset(codeNoHandler)
		return
	}
	if !he.acquire(peer) {
		ctrs.refused.Add(1)
		log.Debug().Msg("protocol busy")
		reset(codeBusy)
		return
	}
	defer he.release(peer)
	if kind == kindStream {
		_ = str.SetReadDeadline(time.Time{})
		t.serveLongStream(connCtx, peer, connID, ctrs, str, protocol, he.sh, log)
		return
	}

	req, held, ok := t.readRequest(str, ctrs, log)
	if !ok {
		return
	}

	// The stream's context ends when the caller sends STOP_SENDING (its
	// cancel) or the connection dies; t.ctx covers our own shutdown.
	ctx, cancel := context.WithCancel(WithConnID(str.Context(), connID))
	defer cancel()
	stop := context.AfterFunc(t.ctx, cancel)
	defer stop()
	resp, herr := t.runHandler(ctx, he.h, peer, req)
	// The request is the handler's now; what we hold from here on is the
	// response.
	ctrs.unhold(held)
	if ctx.Err() != nil {
		reset(codeCancelled)
		return
	}
	if kind == kindPush {
		resp = nil
	}
	var hdr []byte
	if herr != nil {
		msg := herr.Error()
		if len(msg) > t.cfg.MaxErrorText {
			msg = msg[:t.cfg.MaxErrorText]
		}
		hdr = appendResponseHeader(make([]byte, 0, 5+len(msg)), statusError, len(msg))
		hdr = append(hdr, msg...)
	} else {
		if len(resp) > t.cfg.MaxFrameSize {
			log.Warn().Int("size", len(resp)).Msg("handler response exceeds MaxFrameSize")
			reset(codeTooLarge)
			return
		}
		// A response is charged to the peer until it has been sent: a peer
		// that asks for large answers and does not read them would
		// otherwise pin as many as it has streams.
		if !ctrs.hold(len(resp), t.cfg.MaxBytesPerPeer) {
			ctrs.refused.Add(1)
			log.Debug().Int("bytes", len(resp)).Msg("response does not fit the peer's memory budget")
			reset(codeRespOverBudget)
			return
		}
		defer ctrs.unhold(len(resp))
		hdr = appendResponseHeader(make([]byte, 0, 5), statusOK, len(resp))
	}
	if err := writeWithProgress(str, hdr, resp, t.cfg.ProgressTimeout); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			ctrs.stalled.Add(1)
			log.Debug().Int("bytes", len(resp)).Dur("progress_timeout", t.cfg.ProgressTimeout).Msg("peer stopped reading its response")
			reset(codeStalled)
			return
		}
		reset(codeCancelled)
		return
	}
	_ = str.Close()
}

// readLastFrame reads a payload of n bytes and the end of the stream that
// must follow, under the progress rule.
func readLastFrame(str *quic.Stream, n int, d time.Duration) ([]byte, error) {
	pr := &progressReader{str: str, d: d}
	defer pr.done()
	b, err := readPayload(pr, n)
	if err == nil {
		err = expectEOF(pr)
	}
	return b, err
}

// resetStream abandons both directions of str with code.
func resetStream(str *quic.Stream, code quic.StreamErrorCode) {
	str.CancelRead(code)
	str.CancelWrite(code)
}

// readRequest reads a request's frame length (under the header deadline
// already set), charges it to the peer's budget and reads the payload and
// the end of the stream under the progress rule. It returns the payload
// and the bytes charged (for the caller to release), or resets the stream
// and reports false.
func (t *Transport) readRequest(str *quic.Stream, ctrs *peerCounters, log zerolog.Logger) ([]byte, int, bool) {
	reset := func(code quic.StreamErrorCode) { resetStream(str, code) }
	n, err := readFrameLen(str, t.cfg.MaxFrameSize)
	if errors.Is(err, errTooLarge) {
		ctrs.oversized.Add(1)
		log.Debug().Err(err).Msg("request too large")
		reset(codeTooLarge)
		return nil, 0, false
	}
	if err == nil && !ctrs.hold(n, t.cfg.MaxBytesPerPeer) {
		ctrs.refused.Add(1)
		log.Debug().Int("bytes", n).Msg("peer's memory budget exhausted")
		reset(codeOverBudget)
		return nil, 0, false
	}
	var req []byte
	if err == nil {
		if req, err = readLastFrame(str, n, t.cfg.ProgressTimeout); err != nil {
			ctrs.unhold(n)
		}
	}
	if err != nil {
		if !isStreamOrConnErr(err) {
			ctrs.garbage.Add(1)
			log.Debug().Err(err).Msg("bad or stalled request frame")
		}
		reset(codeGarbage)
		return nil, 0, false
	}
	return req, n, true
}

// runHandler calls h, turning a panic into an error: a bug in one handler
// must not take down the node's transport.
func (t *Transport) runHandler(ctx context.Context, h Handler, peer membership.NodeID, req []byte) (resp []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			t.log.Error().Interface("panic", r).Str("peer", peer.Short()).Msg("handler panicked")
			err = fmt.Errorf("handler panicked: %v", r)
		}
	}()
	return h(ctx, peer, req)
}

// writeFrame writes hdr then payload; small payloads go in one write so the
// whole frame usually leaves in one packet. It has no progress rule: the
// long-lived streams that use it block on purpose while their reader is
// behind.
func writeFrame(str *quic.Stream, hdr, payload []byte) error {
	if len(hdr)+len(payload) <= smallFrame {
		b := append(hdr, payload...)
		_, err := str.Write(b)
		return err
	}
	if _, err := str.Write(hdr); err != nil {
		return err
	}
	_, err := str.Write(payload)
	return err
}

func isStreamOrConnErr(err error) bool {
	var se *quic.StreamError
	var ae *quic.ApplicationError
	var ie *quic.IdleTimeoutError
	var sr *quic.StatelessResetError
	var te *quic.TransportError
	return errors.As(err, &se) || errors.As(err, &ae) || errors.As(err, &ie) || errors.As(err, &sr) || errors.As(err, &te) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, quic.ErrServerClosed)
}

// countGarbageDatagrams drains the datagrams quic-go recognises as not
// QUIC at all and counts them.
func (t *Transport) countGarbageDatagrams() {
	defer t.wg.Done()
	buf := make([]byte, 2048)
	for {
		if _, _, err := t.qt.ReadNonQUICPacket(t.ctx, buf); err != nil {
			return
		}
		t.garbageDatagrams.Add(1)
	}
}

// ---- calls ----

// Call implements RPC.
func (t *Transport) Call(ctx context.Context, peer membership.NodeID, protocol string, req []byte, opts ...CallOption) ([]byte, error) {
	return t.roundTrip(ctx, peer, protocol, kindCall, req, responseLimit(t.cfg, opts))
}

// Push implements RPC.
func (t *Transport) Push(ctx context.Context, peer membership.NodeID, protocol string, msg []byte) error {
	_, err := t.roundTrip(ctx, peer, protocol, kindPush, msg, 0)
	return err
}

// roundTrip runs one request; maxResp is the largest response payload it
// accepts (0 for a Push).
func (t *Transport) roundTrip(ctx context.Context, peer membership.NodeID, protocol string, kind byte, req []byte, maxResp int) ([]byte, error) {
	fail := func(k error, cause error, detail string) ([]byte, error) {
		return nil, newErr(peer, protocol, k, cause, detail)
	}
	if err := validProtocol(protocol); err != nil {
		return fail(ErrRefused, err, "")
	}
	if len(req) > t.cfg.MaxFrameSize {
		return fail(ErrTooLarge, nil, fmt.Sprintf("request of %d bytes exceeds %d", len(req), t.cfg.MaxFrameSize))
	}
	str, _, err := t.openQUICStream(ctx, peer, protocol)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() {
		str.CancelWrite(codeCancelled)
		str.CancelRead(codeCancelled)
	})
	resp, kindErr, cause, detail := t.exchange(str, peer, protocol, kind, req, maxResp)
	if !stop() || ctx.Err() != nil {
		if kindErr == nil {
			return resp, nil // finished just as ctx ended
		}
		return fail(ErrCancelled, ctx.Err(), "")
	}
	if kindErr != nil {
		str.CancelWrite(codeCancelled)
		str.CancelRead(codeCancelled)
		return fail(kindErr, cause, detail)
	}
	return resp, nil
}

// openQUICStream opens a stream on the current connection to peer, waiting
// for a stream credit until ctx ends. Errors are *Error.
func (t *Transport) openQUICStream(ctx context.Context, peer membership.NodeID, protocol string) (*quic.Stream, uint64, error) {
	fail := func(k error, cause error, detail string) (*quic.Stream, uint64, error) {
		return nil, 0, newErr(peer, protocol, k, cause, detail)
	}
	t.mu.Lock()
	closed := t.closed
	p := t.peers[peer]
	var conn *quic.Conn
	var connID uint64
	if p != nil {
		conn, connID = p.conn, p.connID
	}
	t.mu.Unlock()
	switch {
	case closed:
		return fail(ErrClosed, nil, "")
	case p == nil:
		return fail(ErrUnknownPeer, nil, "")
	case conn == nil:
		return fail(ErrNotConnected, nil, "")
	}
	if err := ctx.Err(); err != nil {
		return fail(ErrCancelled, err, "")
	}
	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return fail(ErrCancelled, ctx.Err(), "waiting for a stream credit")
		}
		return fail(ErrNotConnected, err, "")
	}
	return str, connID, nil
}

// exchange writes the request and reads the response on str. The
// response is refused from its header when it is larger than maxResp (or,
// for a Push, not empty) or does not fit the peer's memory budget; an
// error text is read up to MaxErrorText. The caller resets the stream on
// any error, so what was not read is discarded.
func (t *Transport) exchange(str *quic.Stream, peer membership.NodeID, protocol string, kind byte, req []byte, maxResp int) (resp []byte, kindErr, cause error, detail string) {
	ctrs := t.counter(peer)
	hdr := appendRequestHeader(make([]byte, 0, 8+len(protocol)), kind, protocol, len(req))
	werr := writeWithProgress(str, hdr, req, t.cfg.ProgressTimeout)
	if werr == nil {
		werr = str.Close()
	}
	if errors.Is(werr, os.ErrDeadlineExceeded) {
		ctrs.stalled.Add(1)
		return nil, ErrNotConnected, werr, fmt.Sprintf("peer read none of the request for %v", t.cfg.ProgressTimeout)
	}
	if werr != nil {
		// A refusal resets our write side; the reason is in the code.
		k, c := classify(werr)
		return nil, k, c, ""
	}
	status, err := readStatus(str)
	var n int
	if err == nil {
		n, err = readFrameLen(str, t.cfg.MaxFrameSize)
	}
	if err == nil {
		switch {
		case status == statusError:
			return t.readErrorText(str, ctrs, n)
		case kind == kindPush && n > 0:
			ctrs.garbage.Add(1)
			return nil, ErrProtocol, nil, fmt.Sprintf("push answered with a %d-byte payload", n)
		case n > maxResp:
			ctrs.oversized.Add(1)
			return nil, ErrTooLarge, nil, fmt.Sprintf("response of %d bytes exceeds the call's limit of %d", n, maxResp)
		case !ctrs.hold(n, t.cfg.MaxBytesPerPeer):
			ctrs.refused.Add(1)
			return nil, ErrRefused, nil, fmt.Sprintf("response of %d bytes does not fit our memory budget for the peer", n)
		}
		defer ctrs.unhold(n)
		resp, err = readLastFrame(str, n, t.cfg.ProgressTimeout)
	}
	if err != nil {
		if errors.Is(err, errTooLarge) {
			ctrs.oversized.Add(1)
			return nil, ErrTooLarge, err, "response"
		}
		if isStreamOrConnErr(err) {
			k, c := classify(err)
			return nil, k, c, ""
		}
		ctrs.garbage.Add(1)
		return nil, ErrProtocol, err, "bad or stalled response"
	}
	return resp, nil, nil, ""
}

// readErrorText reads a handler's error text of n bytes, keeping at most
// MaxErrorText of it (the peer's own limit may be larger; the rest is
// discarded unread when the caller resets the stream).
func (t *Transport) readErrorText(str *quic.Stream, ctrs *peerCounters, n int) (resp []byte, kindErr, cause error, detail string) {
	pr := &progressReader{str: str, d: t.cfg.ProgressTimeout}
	defer pr.done()
	text, err := readPayload(pr, min(n, t.cfg.MaxErrorText))
	if err == nil && n <= t.cfg.MaxErrorText {
		err = expectEOF(pr)
	}
	switch {
	case err == nil:
		return nil, ErrRemote, nil, string(text)
	case isStreamOrConnErr(err):
		k, c := classify(err)
		return nil, k, c, ""
	default:
		ctrs.garbage.Add(1)
		return nil, ErrProtocol, err, "bad or stalled error text"
	}
}

// classify maps a stream or connection error to our error kinds.
func classify(err error) (kind, cause error) {
	var se *quic.StreamError
	if errors.As(err, &se) && se.Remote {
		switch se.ErrorCode {
		case codeNoHandler:
			return ErrRefused, errors.New("no handler for protocol")
		case codeBusy:
			return ErrRefused, errors.New("protocol at its concurrency limit")
		case codeOverBudget:
			return ErrRefused, errors.New("the peer's memory budget for us is exhausted")
		case codeRespOverBudget:
			return ErrRefused, errors.New("the response does not fit the peer's memory budget for us (the handler ran)")
		case codeStalled:
			return ErrNotConnected, errors.New("the peer gave up: we read none of its response for its progress timeout")
		case codeShutdown:
			return ErrRefused, errors.New("peer shutting down")
		case codeTooLarge:
			return ErrTooLarge, errors.New("peer refused the frame size")
		case codeGarbage:
			return ErrProtocol, errors.New("peer could not decode the request")
		case codeCancelled:
			return ErrNotConnected, errors.New("peer abandoned the request")
		}
	}
	return ErrNotConnected, err
}

// Reserve implements RPC.
func (t *Transport) Reserve(peer membership.NodeID, n int) bool {
	return t.counter(peer).hold(n, t.cfg.MaxBytesPerPeer)
}

// Release implements RPC.
func (t *Transport) Release(peer membership.NodeID, n int) { t.counter(peer).unhold(n) }
