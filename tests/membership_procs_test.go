package tests

// Three examples/replica processes on loopback; one is removed from the
// registry while all three publish: it is cut off and the other two keep
// delivering to each other. Once with the registry file, once with etcd.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/abcast/abcast/actors/abcasttest"
	"github.com/abcast/abcast/examples/abcastctl/nodeconfig"
	"github.com/abcast/abcast/membership"
	"github.com/abcast/abcast/membership/etcdreg"
	"github.com/abcast/abcast/membership/etcdreg/etcdtest"
)

// nodeProc is one replica process under the removal scenario.
type nodeProc struct {
	*replicaProc
	name string
}

// procSubnet writes keys and per-node configs for n replicas; registry
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
		cfg := nodeconfig.Config{IdentityKey: key, Listen: addr, Channels: []string{"blocks"},
			Log: nodeconfig.LogConfig{Format: "json", Level: "debug"}}
		registry(&cfg)
		config := filepath.Join(dir, fmt.Sprintf("node-%d.json", i))
		if err := cfg.Save(config); err != nil {
			t.Fatal(err)
		}
		ids, addrs, configs = append(ids, id), append(addrs, addr), append(configs, config)
	}
	return ids, addrs, configs
}

// startProcs starts a replica per config and waits until each serves HTTP.
func startProcs(t *testing.T, bin, dir string, ids []*membership.Identity, configs []string) []*nodeProc {
	t.Helper()
	var procs []*nodeProc
	for i, cfg := range configs {
		p := &nodeProc{name: fmt.Sprintf("node-%d", i), replicaProc: &replicaProc{id: ids[i].ID, exited: make(chan error, 1),
			logPath: filepath.Join(dir, fmt.Sprintf("node-%d.log", i)), ready: filepath.Join(dir, fmt.Sprintf("node-%d.ready", i))}}
		p.start(t, p.name, exec.Command(bin, "-config", cfg, "-http", "127.0.0.1:0", "-ready-file", p.ready))
		procs = append(procs, p)
	}
	for _, p := range procs {
		must(t, abcasttest.Eventually(time.Minute, func() error {
			b, err := os.ReadFile(p.ready)
			if err != nil || len(b) == 0 {
				return fmt.Errorf("%s not serving yet", p.name)
			}
			p.http = string(b)
			return nil
		}))
	}
	return procs
}

// publishLoop makes every replica publish a 2 KiB artifact every 20 ms
// through its HTTP API, keeping its newest 20 live (aborting older ones),
// until the test ends.
func publishLoop(t *testing.T, procs []*nodeProc) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for _, p := range procs {
		wg.Go(func() {
			var live []string
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for seq := 0; ; seq++ {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				id := fmt.Sprintf("%s-%d", p.id.Short(), seq)
				if postCtx(ctx, p.url("/publish?channel=blocks&size=2048&id="+id)) != http.StatusOK {
					continue // busy or shutting down: skip this tick
				}
				if live = append(live, id); len(live) > 20 && postCtx(ctx, p.url("/abort?channel=blocks&id="+live[0])) == http.StatusOK {
					live = live[1:]
				}
			}
		})
	}
}

func postCtx(ctx context.Context, url string) int {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
	if err != nil {
		return 0
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// deliveries reads p's debug log: how many artifacts it delivered from
// each publisher (short NodeID) and how many of each it holds now.
func (p *nodeProc) deliveries() (delivered, held map[string]int, err error) {
	f, err := os.Open(p.logPath)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	delivered, held = map[string]int{}, map[string]int{}
	from := map[string]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l struct{ Message, Channel, ID, From string }
		if json.Unmarshal(sc.Bytes(), &l) != nil || l.Channel != "blocks" {
			continue
		}
		switch l.Message {
		case "delivered":
			delivered[l.From]++
			held[l.From]++
			from[l.ID] = l.From
		case "withdrawn":
			held[from[l.ID]]--
			delete(from, l.ID)
		}
	}
	return delivered, held, sc.Err()
}

// deliveredFrom is how many artifacts of q this process delivered.
func (p *nodeProc) deliveredFrom(t *testing.T, q *nodeProc) int {
	t.Helper()
	d, _, err := p.deliveries()
	must(t, err)
	return d[q.id.Short()]
}

// heldFrom is how many artifacts of q this process holds right now.
func (p *nodeProc) heldFrom(t *testing.T, q *nodeProc) int {
	t.Helper()
	_, h, err := p.deliveries()
	must(t, err)
	return h[q.id.Short()]
}

// membership asks p's /status for its registry version and size.
func (p *nodeProc) membership() (uint64, int, error) {
	resp, err := httpClient.Get(p.url("/status"))
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	var st struct {
		Members         int    `json:"members"`
		RegistryVersion uint64 `json:"registry_version"`
	}
	err = json.NewDecoder(resp.Body).Decode(&st)
	return st.RegistryVersion, st.Members, err
}

// removeWhileTrafficFlows runs the shared scenario: three processes deliver
// to each other; remove() takes the last one out of the registry and
// returns the registry version that removal made.
func removeWhileTrafficFlows(t *testing.T, procs []*nodeProc, remove func() uint64) {
	t.Helper()
	publishLoop(t, procs)
	must(t, abcasttest.Eventually(30*time.Second, func() error {
		for _, p := range procs {
			for _, q := range procs {
				if p != q && p.deliveredFrom(t, q) < 5 {
					return fmt.Errorf("%s delivered %d from %s", p.name, p.deliveredFrom(t, q), q.name)
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
			v, n, err := p.membership()
			if err != nil {
				return err
			}
			if v < version || n != 2 {
				return fmt.Errorf("%s at version %d with %d members, want >= %d with 2", p.name, v, n, version)
			}
			if n := p.heldFrom(t, gone); n != 0 {
				return fmt.Errorf("%s still holds %d artifacts of the removed node", p.name, n)
			}
		}
		return nil
	}))
	// Let anything already in a pipe drain: the survivors exchange a few
	// more artifacts first.
	more := func(k int) {
		t.Helper()
		ab, ba := a.deliveredFrom(t, b), b.deliveredFrom(t, a)
		must(t, abcasttest.Eventually(15*time.Second, func() error {
			if a.deliveredFrom(t, b) < ab+k || b.deliveredFrom(t, a) < ba+k {
				return fmt.Errorf("survivors delivered %d and %d new artifacts, want %d", a.deliveredFrom(t, b)-ab, b.deliveredFrom(t, a)-ba, k)
			}
			return nil
		}))
	}
	more(5)
	goneFromA, goneFromB, aFromGone, bFromGone := gone.deliveredFrom(t, a), gone.deliveredFrom(t, b), a.deliveredFrom(t, gone), b.deliveredFrom(t, gone)
	// Traffic keeps flowing between the other two...
	more(20)
	// ...and none of it reaches the removed node, nor does its traffic
	// (it publishes all along) reach them.
	if gone.deliveredFrom(t, a) != goneFromA || gone.deliveredFrom(t, b) != goneFromB {
		t.Errorf("removed node kept receiving: %d→%d from a, %d→%d from b", goneFromA, gone.deliveredFrom(t, a), goneFromB, gone.deliveredFrom(t, b))
	}
	if a.deliveredFrom(t, gone) != aFromGone || b.deliveredFrom(t, gone) != bFromGone || a.heldFrom(t, gone) != 0 || b.heldFrom(t, gone) != 0 {
		t.Errorf("survivors kept receiving from the removed node")
	}
}

func TestMembershipProcessesFileRemoval(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs separate processes")
	}
	dir := t.TempDir()
	bin := buildReplica(t, dir)
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
	procs := startProcs(t, bin, dir, ids, configs)
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
	bin := buildReplica(t, dir)
	ids, addrs, configs := procSubnet(t, dir, 3, func(c *nodeconfig.Config) {
		c.Etcd = &nodeconfig.EtcdConfig{Endpoints: []string{srv.Endpoint}, Prefix: prefix}
	})
	ctx := context.Background()
	for i, id := range ids {
		if _, err := etcdreg.Put(ctx, cli, prefix, id.Member(addrs[i])); err != nil {
			t.Fatal(err)
		}
	}
	procs := startProcs(t, bin, dir, ids, configs)
	removeWhileTrafficFlows(t, procs, func() uint64 {
		rev, err := etcdreg.Delete(ctx, cli, prefix, ids[2].ID)
		if err != nil {
			t.Fatal(err)
		}
		return uint64(rev)
	})
}
