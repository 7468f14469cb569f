package actors

import (
	"context"
	"fmt"
	"time"

	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/internal/wire"
	"github.com/abcast/abcast/membership"
	"github.com/abcast/abcast/quicremote/transport"
)

const (
	// helloRetry is the pause before a failed announcement is sent again
	// while its connection stays up.
	helloRetry = 200 * time.Millisecond
	// helloTimeout bounds one announcement's round trip.
	helloTimeout = 10 * time.Second
)

// handleHello applies a peer's announcement. The connection it came on is
// up (the transport serves streams only on welcomed connections), even if
// its PeerUp event has not reached us yet, so it counts as one. Answering
// is the acknowledgement that tells the peer its channels' updates are
// accepted here from now on.
func (n *Node) handleHello(ctx context.Context, peer membership.NodeID, req []byte) ([]byte, error) {
	version, channels, err := wire.DecodeHello(req, validName)
	if err != nil {
		n.badHellos.Add(1)
		return nil, fmt.Errorf("hello from %s: %w", peer.Short(), err)
	}
	conn, ok := transport.ConnIDFromContext(ctx)
	if !ok {
		return nil, fmt.Errorf("hello from %s: no connection", peer.Short())
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, ErrClosed
	}
	p := broadcast.PeerID(peer.String())
	n.execPresence(n.presence.PeerUp(p, broadcast.ConnID(conn)))
	eff, err := n.presence.HelloReceived(p, broadcast.ConnID(conn), version, channels)
	n.execPresence(eff)
	if err != nil {
		return nil, fmt.Errorf("hello from %s: %w", peer.Short(), err)
	}
	return nil, nil
}

// sendHello pushes our announcement and reports the outcome to the
// presence core.
func (n *Node) sendHello(h broadcast.SendHello) {
	peer, err := membership.ParseNodeID(string(h.Peer))
	if err != nil {
		return // our own peer ids are NodeIDs
	}
	msg := wire.EncodeHello(h.Version, h.Channels)
	n.goTracked(func() {
		if n.closing.Load() {
			return // Close is taking the transport down; nobody is told
		}
		ctx, cancel := context.WithTimeout(n.ctx, helloTimeout)
		err := n.rpc.Push(ctx, peer, wire.HelloProtocol, msg)
		cancel()
		n.mu.Lock()
		defer n.mu.Unlock()
		if n.closed {
			return
		}
		if err != nil {
			n.log.Debug().Str("peer", peer.Short()).Uint64("version", h.Version).Err(err).Msg("announcement failed; retrying")
			n.execPresence(n.presence.HelloFailed(h.Peer, h.Conn, h.Version, time.Now()))
			return
		}
		n.execPresence(n.presence.HelloAcked(h.Peer, h.Conn, h.Version))
	})
}
