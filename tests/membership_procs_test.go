package tests

// Three replica processes on loopback (tests/testdata/cmd/node); one is
// removed from the registry while all three publish: it is cut off and the
// other two keep delivering to each other. Once with the registry file,
// once with etcd.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/abcast/abcast/actors/abcasttest"
	"github.com/abcast/abcast/examples/abcastctl/nodeconfig"
	"github.com/abcast/abcast/membership"
	"github.com/abcast/abcast/membership/etcdreg"
	"github.com/abcast/abcast/membership/etcdreg/etcdtest"
)

// buildNodeBinary compiles tests/testdata/cmd/node into dir.
func buildNodeBinary(t *testing.T, dir string) string {
	t.Helper()
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		goBin = "go"
	}
	bin := filepath.Join(dir, "node")
	out, err := exec.Command(goBin, "build", "-o", bin, "./testdata/cmd/node").CombinedOutput()
	if err != nil {
		t.Fatalf("build node binary: %v\n%s", err, out)
	}
	return bin
}

// nodeProc is one node process and what it reported.
type nodeProc struct {
	name   string
	id     membership.NodeID
	cmd    *exec.Cmd
	stdin  interface{ Close() error }
	stderr *lockedBuffer
	done   chan struct{}

	mu        sync.Mutex
	ready     bool
	version   uint64
	members   int
	delivered map[string]int    // publisher NodeID → deliveries
	held      map[string]string // artifact id → publisher NodeID
}

type procEvent struct {
	Event   string `json:"event"`
	ID      string `json:"id"`
	From    string `json:"from"`
	Version uint64 `json:"version"`
	Count   int    `json:"count"`
}

func startNodeProc(t *testing.T, bin, name, config string, id membership.NodeID) *nodeProc {
	t.Helper()
	p := &nodeProc{name: name, id: id, stderr: &lockedBuffer{}, done: make(chan struct{}), delivered: map[string]int{}, held: map[string]string{}}
	p.cmd = exec.Command(bin, "-config", config)
	p.cmd.Stderr = p.stderr
	stdin, err := p.cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.stdin = stdin
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var ev procEvent
			if json.Unmarshal(sc.Bytes(), &ev) != nil {
				continue
			}
			p.record(ev)
		}
		p.cmd.Wait()
	}()
	t.Cleanup(func() {
		p.stdin.Close() // asks the node to shut down
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("%s stderr (tail):\n%s", p.name, logTail(p.stderr, 30))
		}
	})
	return p
}

func logTail(b *lockedBuffer, n int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	lines := strings.Split(strings.TrimSpace(b.buf.String()), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (p *nodeProc) record(ev procEvent) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch ev.Event {
	case "ready":
		p.ready = true
	case "members":
		p.version, p.members = ev.Version, ev.Count
	case "delivered":
		p.delivered[ev.From]++
		p.held[ev.ID] = ev.From
	case "withdrawn":
		delete(p.held, ev.ID)
	}
}

// deliveredFrom is how many artifacts of q this process delivered.
func (p *nodeProc) deliveredFrom(q *nodeProc) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.delivered[q.id.String()]
}

// heldFrom is how many artifacts of q this process holds right now.
func (p *nodeProc) heldFrom(q *nodeProc) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, from := range p.held {
		if from == q.id.String() {
			n++
		}
	}
	return n
}

func (p *nodeProc) membership() (uint64, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.version, p.members
}

// procSubnet writes keys and per-node configs for n processes; registry
// sets each config's registry fields.
func procSubnet(t *testing.T, dir string, n int, registry func(*nodeconfig.Config)) ([]*membership.Identity, []string, []string) {
	t.Helper()
	var ids []*membership.Identity
	var addrs, configs []string
	for i := range n {
		key := filepath.Join(dir, fmt.Sprintf("node-%d.key", i))
		id, err := membership.CreateIdentity(key)
		if err != nil {
			t.Fatal(err)
		}
		addr := freeUDPAddr(t)
		cfg := nodeconfig.Config{IdentityKey: key, Listen: addr, Channels: []string{"blocks"}}
		registry(&cfg)
		config := filepath.Join(dir, fmt.Sprintf("node-%d.json", i))
		if err := cfg.Save(config); err != nil {
			t.Fatal(err)
		}
		ids, addrs, configs = append(ids, id), append(addrs, addr), append(configs, config)
	}
	return ids, addrs, configs
}

// removeWhileTrafficFlows runs the shared scenario: three processes deliver
// to each other; remove(2) takes the last one out of the registry at
// version at least wantVersion() (asked after the removal).
func removeWhileTrafficFlows(t *testing.T, procs []*nodeProc, remove func() uint64) {
	t.Helper()
	must(t, abcasttest.Eventually(30*time.Second, func() error {
		for _, p := range procs {
			for _, q := range procs {
				if p != q && p.deliveredFrom(q) < 5 {
					return fmt.Errorf("%s delivered %d from %s", p.name, p.deliveredFrom(q), q.name)
				}
			}
		}
		return nil
	}))
	a, b, gone := procs[0], procs[1], procs[2]
	version := remove()

	// The removal is applied, and the survivors hold nothing of the
	// removed node (everything it had advertised is withdrawn).
	must(t, abcasttest.Eventually(15*time.Second, func() error {
		for _, p := range []*nodeProc{a, b} {
			if v, n := p.membership(); v < version || n != 2 {
				return fmt.Errorf("%s at version %d with %d members, want >= %d with 2", p.name, v, n, version)
			}
			if n := p.heldFrom(gone); n != 0 {
				return fmt.Errorf("%s still holds %d artifacts of the removed node", p.name, n)
			}
		}
		return nil
	}))
	// Let anything already in a pipe drain: the survivors exchange a few
	// more artifacts first.
	more := func(k int) {
		t.Helper()
		ab, ba := a.deliveredFrom(b), b.deliveredFrom(a)
		must(t, abcasttest.Eventually(15*time.Second, func() error {
			if a.deliveredFrom(b) < ab+k || b.deliveredFrom(a) < ba+k {
				return fmt.Errorf("survivors delivered %d and %d new artifacts, want %d", a.deliveredFrom(b)-ab, b.deliveredFrom(a)-ba, k)
			}
			return nil
		}))
	}
	more(5)
	goneFromA, goneFromB, aFromGone, bFromGone := gone.deliveredFrom(a), gone.deliveredFrom(b), a.deliveredFrom(gone), b.deliveredFrom(gone)
	// Traffic keeps flowing between the other two...
	more(20)
	// ...and none of it reaches the removed node, nor does its traffic
	// (it publishes all along) reach them.
	if gone.deliveredFrom(a) != goneFromA || gone.deliveredFrom(b) != goneFromB {
		t.Errorf("removed node kept receiving: %d→%d from a, %d→%d from b", goneFromA, gone.deliveredFrom(a), goneFromB, gone.deliveredFrom(b))
	}
	if a.deliveredFrom(gone) != aFromGone || b.deliveredFrom(gone) != bFromGone || a.heldFrom(gone) != 0 || b.heldFrom(gone) != 0 {
		t.Errorf("survivors kept receiving from the removed node")
	}
}

func TestMembershipProcessesFileRemoval(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs separate processes")
	}
	dir := t.TempDir()
	bin := buildNodeBinary(t, dir)
	regPath := filepath.Join(dir, "registry.json")
	ids, addrs, configs := procSubnet(t, dir, 3, func(c *nodeconfig.Config) {
		c.Registry = regPath
		c.PollInterval = "50ms"
	})
	var ms []membership.Member
	for i, id := range ids {
		ms = append(ms, id.Member(addrs[i]))
	}
	doc, err := membership.NewRegistryFile(ms...)
	if err != nil {
		t.Fatal(err)
	}
	writeReg(t, regPath, doc)
	var procs []*nodeProc
	for i := range 3 {
		procs = append(procs, startNodeProc(t, bin, fmt.Sprintf("node-%d", i), configs[i], ids[i].ID))
	}
	removeWhileTrafficFlows(t, procs, func() uint64 {
		if err := doc.Remove(ids[2].ID); err != nil {
			t.Fatal(err)
		}
		writeReg(t, regPath, doc)
		return doc.Version
	})
}

func TestMembershipProcessesEtcdRemoval(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs separate processes")
	}
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	const prefix = "/abcast/procs/members/"
	dir := t.TempDir()
	bin := buildNodeBinary(t, dir)
	ids, addrs, configs := procSubnet(t, dir, 3, func(c *nodeconfig.Config) {
		c.Etcd = &nodeconfig.EtcdConfig{Endpoints: []string{srv.Endpoint}, Prefix: prefix}
	})
	ctx := context.Background()
	for i, id := range ids {
		if _, err := etcdreg.Put(ctx, cli, prefix, id.Member(addrs[i])); err != nil {
			t.Fatal(err)
		}
	}
	var procs []*nodeProc
	for i := range 3 {
		procs = append(procs, startNodeProc(t, bin, fmt.Sprintf("node-%d", i), configs[i], ids[i].ID))
	}
	removeWhileTrafficFlows(t, procs, func() uint64 {
		rev, err := etcdreg.Delete(ctx, cli, prefix, ids[2].ID)
		if err != nil {
			t.Fatal(err)
		}
		return uint64(rev)
	})
}
