package tests

// End-to-end effects of registry changes (G5 Membership) over real QUIC on
// loopback: every node follows the registry file through its own
// membership.FileSource, as separate machines would.

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/actors/abcasttest"
	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/membership"
	"github.com/abcast/abcast/quicremote/transport"
)

// regNet is a set of identities and sockets whose membership comes from
// registry sources the test controls.
type regNet struct {
	t     *testing.T
	ids   []*membership.Identity // sorted by NodeID: index 0 is the lowest
	addrs []string
	nodes []*regNode
}

// regNode is one running node with its recorder.
type regNode struct {
	node *actors.Node
	ch   *actors.Channel
	rec  *abcasttest.Recorder
	logs *lockedBuffer
}

// lockedBuffer collects a node's log lines for assertions.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) count(s string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Count(b.buf.String(), s)
}

func newRegNet(t *testing.T, n int) *regNet {
	r := &regNet{t: t, nodes: make([]*regNode, n)}
	for range n {
		id, err := membership.GenerateIdentity(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		r.ids = append(r.ids, id)
	}
	slices.SortFunc(r.ids, func(a, b *membership.Identity) int { return a.ID.Compare(b.ID) })
	for range n {
		r.addrs = append(r.addrs, freeUDPAddr(t))
	}
	t.Cleanup(func() {
		for i := range r.nodes {
			r.stop(i)
		}
	})
	return r
}

func freeUDPAddr(t *testing.T) string {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	return pc.LocalAddr().String()
}

func (r *regNet) member(i int) membership.Member { return r.ids[i].Member(r.addrs[i]) }

// registry writes a registry file listing the given nodes.
func (r *regNet) registry(path string, nodes ...int) *membership.RegistryFile {
	var ms []membership.Member
	for _, i := range nodes {
		ms = append(ms, r.member(i))
	}
	doc, err := membership.NewRegistryFile(ms...)
	if err != nil {
		r.t.Fatal(err)
	}
	writeReg(r.t, path, doc)
	return doc
}

func writeReg(t *testing.T, path string, doc *membership.RegistryFile) {
	t.Helper()
	if err := membership.WriteRegistryFile(path, doc); err != nil {
		t.Fatal(err)
	}
}

func fileSource(t *testing.T, path string) *membership.FileSource {
	cfg := membership.DefaultFileSourceConfig(path)
	cfg.PollInterval = 20 * time.Millisecond
	s, err := membership.NewFileSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// start runs node i at its current address, following src.
func (r *regNet) start(i int, src membership.Source) *regNode {
	r.t.Helper()
	pc, err := net.ListenPacket("udp", r.addrs[i])
	if err != nil {
		r.t.Fatalf("node %d: listen %s: %v", i, r.addrs[i], err)
	}
	tcfg := transport.DefaultConfig()
	// Nodes started before they are listed fail their dials; keep the
	// backoff short so a join does not wait for a long retry.
	tcfg.ReconnectBackoffMax = 500 * time.Millisecond
	logs := &lockedBuffer{}
	log := zerolog.New(logWriter(r.t, logs)).Level(zerolog.DebugLevel).With().Int("node", i).Logger()
	cfg := actors.DefaultConfig()
	cfg.Transport = tcfg
	node, err := actors.Start(cfg, r.ids[i], src, pc, log)
	if err != nil {
		r.t.Fatalf("start node %d: %v", i, err)
	}
	rn := &regNode{node: node, rec: abcasttest.NewRecorder(), logs: logs}
	rn.ch, err = node.OpenChannel(actors.ChannelConfig{Name: "blocks", Consume: rn.rec.Consume})
	if err != nil {
		r.t.Fatal(err)
	}
	r.nodes[i] = rn
	return rn
}

// logWriter sends a node's logs to buf, and to the test log as well when
// ABCAST_DEBUG is set (the assertions read buf either way).
func logWriter(t *testing.T, buf *lockedBuffer) io.Writer {
	if os.Getenv("ABCAST_DEBUG") != "" {
		return zerolog.MultiLevelWriter(buf, zerolog.NewTestWriter(t))
	}
	return buf
}

func (r *regNet) stop(i int) {
	if n := r.nodes[i]; n != nil {
		n.node.Close()
		r.nodes[i] = nil
	}
}

// artifact is a test artifact; large ones go by advert and fetch.
func artifact(id string, size int) broadcast.Artifact {
	return broadcast.Artifact{ID: broadcast.ArtifactID(id), Payload: bytes.Repeat([]byte{id[0]}, size)}
}

func (r *regNet) publish(i int, a broadcast.Artifact) {
	r.t.Helper()
	if err := r.nodes[i].ch.Publish(a); err != nil {
		r.t.Fatalf("node %d publish %s: %v", i, a.ID, err)
	}
}

// holdsAll reports the first of ids node i does not hold.
func (r *regNet) holdsAll(i int, ids ...string) error {
	for _, id := range ids {
		if _, ok := r.nodes[i].rec.Holds(broadcast.ArtifactID(id)); !ok {
			return fmt.Errorf("node %d does not hold %s (holds %v)", i, id, r.nodes[i].rec.Held())
		}
	}
	return nil
}

func (r *regNet) peers(i int) []membership.NodeID { return r.nodes[i].node.Transport().Peers() }

func (r *regNet) connected(i, j int) bool { return slices.Contains(r.peers(i), r.ids[j].ID) }

func (r *regNet) checkNoProblems() {
	for i, n := range r.nodes {
		if n != nil {
			if p := n.rec.Problems(); len(p) > 0 {
				r.t.Errorf("node %d: %v", i, p)
			}
		}
	}
}

// A member added to the registry file is connected and receives every live
// artifact (and nothing aborted); what it publishes reaches the others.
func TestMembershipFileNewMemberReceivesLiveArtifacts(t *testing.T) {
	r := newRegNet(t, 4)
	path := filepath.Join(t.TempDir(), "registry.json")
	// Node 0, the lowest NodeID, joins: the others never dial it before it
	// is listed, and its own dials are refused until then.
	doc := r.registry(path, 1, 2, 3)
	for i := range 4 {
		r.start(i, fileSource(t, path))
	}
	r.publish(1, artifact("small-1", 100))
	r.publish(2, artifact("large-2", 64<<10))
	r.publish(3, artifact("aborted-3", 100))
	r.publish(3, artifact("large-3", 8<<10))
	published := map[int][]string{1: {"small-1"}, 2: {"large-2"}, 3: {"aborted-3", "large-3"}}
	must(t, abcasttest.Eventually(10*time.Second, func() error {
		for i := 1; i < 4; i++ {
			for j, ids := range published {
				if j == i {
					continue
				}
				if err := r.holdsAll(i, ids...); err != nil {
					return err
				}
			}
		}
		return nil
	}))
	if err := r.nodes[3].ch.Abort("aborted-3"); err != nil {
		t.Fatal(err)
	}
	must(t, abcasttest.Eventually(10*time.Second, func() error {
		if _, ok := r.nodes[1].rec.Holds("aborted-3"); ok {
			return fmt.Errorf("abort not seen yet")
		}
		return nil
	}))
	if held := r.nodes[0].rec.Held(); len(held) != 0 || len(r.peers(0)) != 0 {
		t.Fatalf("unlisted node holds %v, peers %v", held, r.peers(0))
	}

	if err := doc.Put(r.member(0)); err != nil {
		t.Fatal(err)
	}
	writeReg(t, path, doc)
	must(t, abcasttest.Eventually(15*time.Second, func() error {
		if err := r.holdsAll(0, "small-1", "large-2", "large-3"); err != nil {
			return err
		}
		for i := 1; i < 4; i++ {
			if !r.connected(i, 0) {
				return fmt.Errorf("node %d not connected to the new member", i)
			}
		}
		return nil
	}))
	if _, ok := r.nodes[0].rec.Holds("aborted-3"); ok {
		t.Fatal("new member received an aborted artifact")
	}
	r.publish(0, artifact("from-new", 100))
	must(t, abcasttest.Eventually(10*time.Second, func() error {
		for i := 1; i < 4; i++ {
			if err := r.holdsAll(i, "from-new"); err != nil {
				return err
			}
		}
		return nil
	}))
	r.checkNoProblems()
}

// A member removed from the registry file is disconnected within one
// update: its artifacts are withdrawn at the others, and its later
// handshakes are refused (it keeps a stale registry and keeps dialling).
func TestMembershipFileRemovedMemberIsCutOff(t *testing.T) {
	r := newRegNet(t, 3)
	dir := t.TempDir()
	path := filepath.Join(dir, "registry.json")
	stale := filepath.Join(dir, "stale.json")
	doc := r.registry(path, 0, 1, 2)
	r.registry(stale, 0, 1, 2)
	// Node 0 (lowest id: it dials both others) is removed; its own copy
	// of the registry never learns it, so it keeps trying to connect.
	r.start(0, fileSource(t, stale))
	srcs := []*membership.FileSource{nil, fileSource(t, path), fileSource(t, path)}
	r.start(1, srcs[1])
	r.start(2, srcs[2])
	r.publish(0, artifact("from-0", 64<<10))
	r.publish(0, artifact("pushed-0", 100))
	r.publish(1, artifact("from-1", 100))
	must(t, abcasttest.Eventually(10*time.Second, func() error {
		for _, c := range []struct {
			i   int
			ids []string
		}{{0, []string{"from-1"}}, {1, []string{"from-0", "pushed-0"}}, {2, []string{"from-0", "pushed-0", "from-1"}}} {
			if err := r.holdsAll(c.i, c.ids...); err != nil {
				return err
			}
		}
		return nil
	}))

	if err := doc.Remove(r.ids[0].ID); err != nil {
		t.Fatal(err)
	}
	writeReg(t, path, doc)
	removedAt := time.Now()
	must(t, abcasttest.Eventually(10*time.Second, func() error {
		for i := 1; i <= 2; i++ {
			if srcs[i].Current().Version != doc.Version {
				return fmt.Errorf("node %d has not applied version %d", i, doc.Version)
			}
			if r.connected(i, 0) || r.connected(0, i) {
				return fmt.Errorf("node %d still connected to the removed node", i)
			}
			for _, id := range []broadcast.ArtifactID{"from-0", "pushed-0"} {
				if _, ok := r.nodes[i].rec.Holds(id); ok {
					return fmt.Errorf("node %d still holds %s", i, id)
				}
			}
		}
		return nil
	}))
	// (The removed node, whose stale registry still lists the others, keeps
	// what it delivered: a disconnected member's slots are kept for its
	// return; only leaving the registry drops them.)
	// "Within one update": the poll interval is 20 ms; allow for a loaded
	// machine, but not for a keep-alive timeout (5 s) doing the work.
	if d := time.Since(removedAt); d > 3*time.Second {
		t.Errorf("removed member cut off after %v", d)
	}
	// Later handshakes: the removed node keeps dialling and is refused.
	failedBefore := r.nodes[0].logs.count(`"dial failed"`)
	must(t, abcasttest.Eventually(10*time.Second, func() error {
		if n := r.nodes[0].logs.count(`"dial failed"`); n < failedBefore+2 {
			return fmt.Errorf("removed node made %d refused dials", n-failedBefore)
		}
		return nil
	}))
	// Traffic between the remaining members goes on; none reaches the
	// removed node.
	r.publish(1, artifact("after-1", 100))
	r.publish(2, artifact("after-2", 32<<10))
	must(t, abcasttest.Eventually(10*time.Second, func() error {
		if err := r.holdsAll(1, "after-2"); err != nil {
			return err
		}
		return r.holdsAll(2, "after-1", "from-1")
	}))
	if r.holdsAll(0, "after-1") == nil || r.holdsAll(0, "after-2") == nil || len(r.peers(0)) != 0 || len(r.peers(1)) != 1 || len(r.peers(2)) != 1 {
		t.Fatalf("removed node holds %v with peers %v; others' peers %v, %v", r.nodes[0].rec.Held(), r.peers(0), r.peers(1), r.peers(2))
	}
	r.checkNoProblems()
}

// A member whose address changes in the registry is reached at the new
// address.
func TestMembershipFileAddressChange(t *testing.T) {
	r := newRegNet(t, 2)
	path := filepath.Join(t.TempDir(), "registry.json")
	doc := r.registry(path, 0, 1)
	r.start(0, fileSource(t, path))
	r.start(1, fileSource(t, path))
	r.publish(0, artifact("before", 100))
	must(t, abcasttest.Eventually(10*time.Second, func() error { return r.holdsAll(1, "before") }))

	// Node 1 (the higher id: node 0 dials it) moves to a new port.
	r.stop(1)
	r.addrs[1] = freeUDPAddr(t)
	if err := doc.Put(r.member(1)); err != nil {
		t.Fatal(err)
	}
	writeReg(t, path, doc)
	r.start(1, fileSource(t, path))
	r.publish(1, artifact("moved", 100))
	must(t, abcasttest.Eventually(15*time.Second, func() error {
		if err := r.holdsAll(1, "before"); err != nil {
			return err
		}
		return r.holdsAll(0, "moved")
	}))
	r.checkNoProblems()
}

// Key rotation through the registry file: the old NodeID leaves (its
// artifacts are withdrawn) and the node, restarted with its new key at the
// same address, joins and receives the live artifacts.
func TestMembershipFileKeyRotation(t *testing.T) {
	r := newRegNet(t, 2)
	path := t.TempDir() + "/registry.json"
	doc := r.registry(path, 0, 1)
	r.start(0, fileSource(t, path))
	r.start(1, fileSource(t, path))
	r.publish(0, artifact("from-0", 100))
	r.publish(1, artifact("old-key", 100))
	must(t, abcasttest.Eventually(10*time.Second, func() error {
		if err := r.holdsAll(1, "from-0"); err != nil {
			return err
		}
		return r.holdsAll(0, "old-key")
	}))
	oldID := r.ids[1].ID
	r.stop(1)
	rotated, err := membership.GenerateIdentity(nil)
	if err != nil {
		t.Fatal(err)
	}
	r.ids[1] = rotated
	if err := doc.Replace(oldID, r.member(1)); err != nil {
		t.Fatal(err)
	}
	writeReg(t, path, doc)
	r.start(1, fileSource(t, path))
	r.publish(1, artifact("new-key", 100))
	must(t, abcasttest.Eventually(15*time.Second, func() error {
		if _, ok := r.nodes[0].rec.Holds("old-key"); ok {
			return fmt.Errorf("artifact of the rotated-out key still held")
		}
		if err := r.holdsAll(1, "from-0"); err != nil {
			return err
		}
		return r.holdsAll(0, "new-key")
	}))
	r.checkNoProblems()
}
