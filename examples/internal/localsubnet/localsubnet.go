// Package localsubnet sets up what the single-process examples share: n
// member identities, a loopback UDP socket for each, and a registry that
// lists them all. In production each node has its own key file, socket and
// registry (a file or etcd; see examples/replica and package membership).
package localsubnet

import (
	"crypto/rand"
	"fmt"
	"net"

	"github.com/abcast/abcast/membership"
)

// Subnet is n members on loopback.
type Subnet struct {
	IDs      []*membership.Identity
	Sockets  []net.PacketConn // hand each to actors.NewNode, which owns it then
	Registry *membership.StaticSource
}

// New creates n identities and sockets and the registry listing them.
func New(n int) (*Subnet, error) {
	s := &Subnet{}
	var members []membership.Member
	for range n {
		id, err := membership.GenerateIdentity(rand.Reader)
		if err != nil {
			return nil, err
		}
		sock, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("listen: %w", err)
		}
		s.IDs, s.Sockets = append(s.IDs, id), append(s.Sockets, sock)
		members = append(members, id.Member(sock.LocalAddr().String()))
	}
	snap, err := membership.NewSnapshot(1, members...)
	if err != nil {
		s.Close()
		return nil, err
	}
	if s.Registry, err = membership.NewStaticSource(snap); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Close closes the sockets not handed to a node yet (nil them as you do).
func (s *Subnet) Close() {
	for _, c := range s.Sockets {
		if c != nil {
			c.Close()
		}
	}
}
