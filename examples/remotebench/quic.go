package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/abcast/abcast/quicremote/transport"

	"github.com/abcast/abcast/actors/actorkit"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/abcast/abcast/membership"
	"github.com/abcast/abcast/quicremote"
)

// quicSide is one node: actor system, remote, QUIC transport, socket.
type quicSide struct {
	sys    *actor.ActorSystem
	remote *quicremote.Remote
	tr     *transport.Transport
	pc     *net.UDPConn
}

func (s *quicSide) System() *actor.ActorSystem { return s.sys }

func (s *quicSide) Describe() string {
	st := s.remote.Stats()
	avg := 0.0
	if st.Batches > 0 {
		avg = float64(st.Sent) / float64(st.Batches)
	}
	return fmt.Sprintf("batches %d (avg %.0f msgs), dead letters %d", st.Batches, avg, st.TotalDeadLetters())
}

func (s *quicSide) Close() {
	s.remote.Close()
	s.tr.Close()
	s.pc.Close()
}

// startQuicSide starts a node with identity id on pc whose only other
// member is peer.
func startQuicSide(id *membership.Identity, pc *net.UDPConn, peer membership.Member) (*quicSide, error) {
	snap, err := membership.NewSnapshot(1, id.Member(pc.LocalAddr().String()), peer)
	if err != nil {
		return nil, err
	}
	src, err := membership.NewStaticSource(snap)
	if err != nil {
		return nil, err
	}
	log := zerolog.Nop()
	s := &quicSide{pc: pc, sys: actorkit.NewActorSystem(log, id.ID.String())}
	rcfg := quicremote.DefaultConfig()
	// The benchmark's messages (payload, sync, count, ping).
	rcfg.Messages = []proto.Message{&wrapperspb.BytesValue{}, &wrapperspb.StringValue{}, &wrapperspb.Int64Value{}}
	if v, err := strconv.Atoi(os.Getenv("REMOTEBENCH_INFLIGHT")); err == nil && v > 0 {
		rcfg.MaxInflightBatches = v
	}
	if v, err := strconv.Atoi(os.Getenv("REMOTEBENCH_BATCH_BYTES")); err == nil && v > 0 {
		rcfg.MaxBatchBytes = v
	}
	s.remote, err = quicremote.New(s.sys, id.ID, membership.LatestMembers(src), rcfg, log)
	if err != nil {
		return nil, err
	}
	s.tr, err = transport.New(transport.DefaultConfig(), id, src, pc, log, s.remote.PeerEvent)
	if err != nil {
		return nil, err
	}
	if err := s.remote.Start(s.tr); err != nil {
		return nil, err
	}
	return s, nil
}

// The parent hands the child its key and the parent's member entry in the
// environment.
const (
	envKey  = "REMOTEBENCH_KEY"  // child's private key, hex
	envPeer = "REMOTEBENCH_PEER" // parent's public key hex @ address
)

func quicServer() (side, string, error) {
	raw, err := hex.DecodeString(os.Getenv(envKey))
	if err != nil || len(raw) != ed25519.PrivateKeySize {
		return nil, "", errors.New("bad " + envKey)
	}
	id, err := membership.NewIdentity(ed25519.PrivateKey(raw))
	if err != nil {
		return nil, "", err
	}
	pubHex, addr, ok := strings.Cut(os.Getenv(envPeer), "@")
	pub, err := hex.DecodeString(pubHex)
	if !ok || err != nil || len(pub) != ed25519.PublicKeySize {
		return nil, "", errors.New("bad " + envPeer)
	}
	peer := membership.Member{ID: membership.NodeIDFromPublicKey(pub), Addr: addr, PublicKey: pub}
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, "", err
	}
	s, err := startQuicSide(id, pc, peer)
	if err != nil {
		return nil, "", err
	}
	return s, pc.LocalAddr().String(), nil
}

// quicClient is the parent's side; it starts once the child said where it
// listens.
type quicClient struct {
	*quicSide
	self, child *membership.Identity
	pc          *net.UDPConn
}

func newQuicClient(cmd *exec.Cmd) (*quicClient, error) {
	self, err := membership.GenerateIdentity(rand.Reader)
	if err != nil {
		return nil, err
	}
	child, err := membership.GenerateIdentity(rand.Reader)
	if err != nil {
		return nil, err
	}
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	cmd.Env = append(os.Environ(),
		envKey+"="+hex.EncodeToString(child.PrivateKey),
		envPeer+"="+hex.EncodeToString(self.PublicKey())+"@"+pc.LocalAddr().String())
	return &quicClient{self: self, child: child, pc: pc}, nil
}

func (c *quicClient) connect(childAddr string) (*actor.PID, error) {
	s, err := startQuicSide(c.self, c.pc, c.child.Member(childAddr))
	if err != nil {
		return nil, err
	}
	c.quicSide = s
	deadline := time.Now().Add(10 * time.Second)
	for !slices.Contains(s.tr.Peers(), c.child.ID) {
		if time.Now().After(deadline) {
			return nil, errors.New("quic: child did not connect")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return s.remote.PID(c.child.ID, "sink"), nil
}

func (c *quicClient) System() *actor.ActorSystem { return c.quicSide.System() }

func (c *quicClient) Close() {
	if c.quicSide != nil {
		c.quicSide.Close()
	} else {
		c.pc.Close()
	}
}
