package tests

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/abcast/abcast/actors/abcasttest"
	"github.com/abcast/abcast/membership"
	"github.com/abcast/abcast/membership/etcdreg"
	"github.com/abcast/abcast/membership/etcdreg/etcdtest"
)

// buildReplica compiles examples/replica into dir, with the race detector
// when this test has it.
func buildReplica(t *testing.T, dir string) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(dir, "replica")
	args := []string{"build", "-o", bin}
	if raceBuild {
		args = append(args, "-race")
	}
	cmd := exec.Command(goBin, append(args, "github.com/abcast/abcast/examples/replica")...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build examples/replica: %v\n%s", err, out)
	}
	return bin
}

// replicaProc is one running replica process.
type replicaProc struct {
	id      membership.NodeID
	cmd     *exec.Cmd
	logPath string
	ready   string
	http    string
	exited  chan error
}

// start runs cmd as this replica with its output in p.logPath; the test's
// cleanup kills it if still running and, if the test failed, logs the end
// of its log under name.
func (p *replicaProc) start(t *testing.T, name string, cmd *exec.Cmd) {
	t.Helper()
	logFile, err := os.Create(p.logPath)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = cmd
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	if err := p.cmd.Start(); err != nil {
		logFile.Close()
		t.Fatal(err)
	}
	go func() {
		p.exited <- p.cmd.Wait()
		logFile.Close()
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			p.cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("%s log:\n%s", name, tail(p.log(), 40))
		}
	})
}

func (p *replicaProc) url(path string) string { return "http://" + p.http + path }

func (p *replicaProc) log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// freeUDPPorts reserves n loopback UDP ports and releases them, for a
// registry that must name the ports before the processes bind them.
func freeUDPPorts(t *testing.T, n int) []string {
	t.Helper()
	var addrs []string
	var conns []net.PacketConn
	for range n {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, pc)
		addrs = append(addrs, pc.LocalAddr().String())
	}
	for _, pc := range conns {
		pc.Close()
	}
	return addrs
}

// startSubnet writes keys, a registry file and one config per node (the
// shape `abcastctl subnet` writes, plus replica-only fields) and starts
// a replica process per node.
func startSubnet(t *testing.T, bin string, n int) []*replicaProc {
	t.Helper()
	return startSubnetWith(t, bin, n, "")
}

// startSubnetWith is startSubnet, but with etcd set the members go under a
// prefix in that etcd server instead of a registry file.
func startSubnetWith(t *testing.T, bin string, n int, etcd string) []*replicaProc {
	t.Helper()
	dir := t.TempDir()
	addrs := freeUDPPorts(t, n)
	var members []membership.Member
	var ids []*membership.Identity
	for i := range n {
		id, err := membership.CreateIdentity(filepath.Join(dir, fmt.Sprintf("node-%d.key", i)))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
		members = append(members, id.Member(addrs[i]))
	}
	const prefix = "/abcast/replica-test/members/"
	if etcd == "" {
		reg, err := membership.NewRegistryFile(members...)
		if err != nil {
			t.Fatal(err)
		}
		if err := membership.WriteRegistryFile(filepath.Join(dir, "registry.json"), reg); err != nil {
			t.Fatal(err)
		}
	} else {
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{etcd}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		defer cli.Close()
		for _, m := range members {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := etcdreg.Put(ctx, cli, prefix, m)
			cancel()
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	var procs []*replicaProc
	for i := range n {
		cfg := map[string]any{
			"identity_key": fmt.Sprintf("node-%d.key", i),
			"listen":       addrs[i],
			"channels":     []string{"blocks", "signatures"},
			"log":          map[string]string{"format": "json", "level": "debug"},
			"limits":       map[string]any{"slot_limit": 10000, "max_slots": 10000, "max_payload": "8MiB"},
		}
		if etcd == "" {
			cfg["registry"], cfg["poll_interval"] = "registry.json", "100ms"
		} else {
			cfg["etcd"] = map[string]any{"endpoints": []string{etcd}, "prefix": prefix}
		}
		data, _ := json.MarshalIndent(cfg, "", "  ")
		cfgPath := filepath.Join(dir, fmt.Sprintf("node-%d.json", i))
		if err := os.WriteFile(cfgPath, data, 0o644); err != nil {
			t.Fatal(err)
		}
		p := &replicaProc{id: ids[i].ID, logPath: filepath.Join(dir, fmt.Sprintf("node-%d.log", i)), ready: filepath.Join(dir, fmt.Sprintf("node-%d.ready", i)), exited: make(chan error, 1)}
		p.start(t, fmt.Sprintf("node %d", i), exec.Command(bin, "-config", cfgPath, "-http", "127.0.0.1:0", "-ready-file", p.ready))
		procs = append(procs, p)
	}
	for _, p := range procs {
		must(t, abcasttest.Eventually(60*time.Second, func() error {
			b, err := os.ReadFile(p.ready)
			if err != nil || len(b) == 0 {
				return fmt.Errorf("replica %s not serving yet", p.id.Short())
			}
			p.http = string(b)
			return nil
		}))
	}
	return procs
}

func tail(s string, lines int) string {
	ls := strings.Split(s, "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

var httpClient = &http.Client{Timeout: 10 * time.Second}

func post(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := httpClient.Post(url, "", nil)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// metrics is one scrape: series ("name{labels}") to value.
type metrics map[string]float64

func scrape(p *replicaProc) (metrics, error) {
	resp, err := httpClient.Get(p.url("/metrics"))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/metrics: %s", resp.Status)
	}
	m := metrics{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		m[line[:i]] = v
	}
	return m, sc.Err()
}

// sum adds the series of metric name whose labels include every given
// `key="value"` pair.
func (m metrics) sum(name string, labels ...string) float64 {
	total := 0.0
	for series, v := range m {
		n, rest, _ := strings.Cut(series, "{")
		if n != name {
			continue
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(rest, l) {
				ok = false
			}
		}
		if ok {
			total += v
		}
	}
	return total
}

// waitMetric polls p's /metrics until name{labels} reaches at least want.
func waitMetric(t *testing.T, p *replicaProc, want float64, name string, labels ...string) metrics {
	t.Helper()
	var last metrics
	must(t, abcasttest.Eventually(30*time.Second, func() error {
		m, err := scrape(p)
		if err != nil {
			return err
		}
		last = m
		if got := m.sum(name, labels...); got < want {
			return fmt.Errorf("replica %s: %s%v = %v, want >= %v", p.id.Short(), name, labels, got, want)
		}
		return nil
	}))
	return last
}

// Three replica processes from node config files: artifacts published
// through one replica's HTTP API reach the others (G1), show up in every
// counter family the metrics promise, aborts are withdrawn at the
// receivers (G3), and SIGTERM stops each process cleanly.
func TestExamplesReplicaProcessesPublishAndMetrics(t *testing.T) {
	bin := buildReplica(t, t.TempDir())
	procs := startSubnet(t, bin, 3)
	a, b, c := procs[0], procs[1], procs[2]

	// Every replica connects to both others.
	for _, p := range procs {
		waitMetric(t, p, 2, "abcast_peer_up")
	}

	small := "blocks-small"
	large := "blocks-large"
	if code, body := post(t, a.url("/publish?channel=blocks&id="+small+"&size=300")); code != http.StatusOK {
		t.Fatalf("publish: %d %s", code, body)
	}
	if code, body := post(t, a.url("/publish?channel=blocks&id="+large+"&size=200KiB")); code != http.StatusOK {
		t.Fatalf("publish: %d %s", code, body)
	}
	if code, body := post(t, b.url("/publish?channel=signatures&size=100&latency_sensitive=1")); code != http.StatusOK {
		t.Fatalf("publish: %d %s", code, body)
	}
	// Refusals are HTTP errors, not crashes.
	if code, _ := post(t, a.url("/publish?channel=blocks&id="+small)); code != http.StatusConflict {
		t.Fatalf("duplicate publish: status %d, want 409", code)
	}
	if code, _ := post(t, a.url("/publish?channel=nope")); code != http.StatusNotFound {
		t.Fatalf("unknown channel: status %d, want 404", code)
	}
	if code, _ := post(t, a.url("/abort?channel=blocks&id=never-published")); code != http.StatusNotFound {
		t.Fatalf("abort of an unknown id: status %d, want 404", code)
	}

	for _, p := range []*replicaProc{b, c} {
		m := waitMetric(t, p, 2, "abcast_deliveries_total", `channel="blocks"`)
		checks := []struct {
			name   string
			labels []string
			min    float64
		}{
			{"abcast_slot_updates_total", []string{`channel="blocks"`, `peer="` + a.id.Short() + `"`, `result="accepted"`}, 2},
			{"abcast_deliveries_pushed_total", []string{`channel="blocks"`}, 1},
			{"abcast_fetches_started_total", []string{`channel="blocks"`}, 1},
			{"abcast_fetches_succeeded_total", []string{`channel="blocks"`}, 1},
			{"abcast_fetch_attempts_total", []string{`channel="blocks"`}, 1},
			{"abcast_delivery_latency_seconds_count", []string{`channel="blocks"`}, 2},
			{"abcast_delivered_payload_bytes_sum", []string{`channel="blocks"`}, 200<<10 + 300},
			{"abcast_connections_total", []string{`peer="` + a.id.Short() + `"`}, 1},
		}
		for _, ch := range checks {
			if got := m.sum(ch.name, ch.labels...); got < ch.min {
				t.Errorf("replica %s: %s%v = %v, want >= %v", p.id.Short(), ch.name, ch.labels, got, ch.min)
			}
		}
		for _, zero := range []string{"abcast_actor_restarts_total", "abcast_mailbox_overflows_total", "abcast_consumer_panics_total"} {
			if got := m.sum(zero); got != 0 {
				t.Errorf("replica %s: %s = %v, want 0", p.id.Short(), zero, got)
			}
		}
		if got := m.sum("abcast_slot_updates_total", `result="stale"`) + m.sum("abcast_slot_updates_total", `result="over_limit"`); got != 0 {
			t.Errorf("replica %s: %v stale or over-limit updates in a quiet subnet", p.id.Short(), got)
		}
	}
	waitMetric(t, a, 1, "abcast_deliveries_total", `channel="signatures"`)
	waitMetric(t, c, 1, "abcast_deliveries_total", `channel="signatures"`)

	m, err := scrape(a)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.sum("abcast_published_total", `channel="blocks"`); got != 2 {
		t.Errorf("publisher: abcast_published_total{blocks} = %v, want 2", got)
	}
	if got := m.sum("abcast_sent_bytes_total", `channel="blocks"`, `kind="fetches_served"`); got < 2*(200<<10) {
		t.Errorf("publisher: served %v bytes of fetches, want >= two copies of 200 KiB", got)
	}
	if got := m.sum("abcast_live_artifacts", `channel="blocks"`); got != 2 {
		t.Errorf("publisher: abcast_live_artifacts{blocks} = %v, want 2", got)
	}

	// Abort: the receivers withdraw it (G3), the publisher counts it.
	if code, body := post(t, a.url("/abort?channel=blocks&id="+large)); code != http.StatusOK {
		t.Fatalf("abort: %d %s", code, body)
	}
	for _, p := range []*replicaProc{b, c} {
		waitMetric(t, p, 1, "abcast_withdrawals_total", `channel="blocks"`)
	}
	waitMetric(t, a, 1, "abcast_aborted_total", `channel="blocks"`)

	// /status agrees with the metrics.
	resp, err := httpClient.Get(b.url("/status"))
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		ID       string
		Peers    []string
		Channels map[string]struct{ Held int }
	}
	err = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if st.ID != b.id.String() || len(st.Peers) != 2 || st.Channels["blocks"].Held != 1 {
		t.Errorf("status of %s: %+v, want its id, 2 peers, 1 block held", b.id.Short(), st)
	}

	if resp, err := httpClient.Get(a.url("/healthz")); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("healthz: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}

	// /peers: replica a asks the other replicas' status actors over the
	// actor remote (the same connections as the broadcast) and shows what
	// each answered.
	resp, err = httpClient.Get(a.url("/peers"))
	if err != nil {
		t.Fatal(err)
	}
	var peers map[string]struct {
		Status *struct{ ID string }
		Error  string
	}
	err = json.NewDecoder(resp.Body).Decode(&peers)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []*replicaProc{b, c} {
		got := peers[p.id.String()]
		if got.Status == nil || got.Status.ID != p.id.String() {
			t.Errorf("replica a's /peers for %s: %+v", p.id.Short(), got)
		}
	}

	// SIGTERM: each process shuts down cleanly and exits 0.
	for _, p := range procs {
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range procs {
		select {
		case err := <-p.exited:
			p.exited <- err // for the cleanup
			var exit *exec.ExitError
			if errors.As(err, &exit) || err != nil {
				t.Errorf("replica %s exited with %v", p.id.Short(), err)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("replica %s did not stop within 20 s of SIGTERM", p.id.Short())
		}
		if !bytes.Contains([]byte(p.log()), []byte(`"message":"stopped"`)) {
			t.Errorf("replica %s log lacks the clean shutdown line", p.id.Short())
		}
	}
}

// Two replica processes whose registry is an etcd prefix: they find each
// other there, an artifact published on one is delivered on the other, and
// both stop cleanly. (Skipped when no etcd binary is installed.)
func TestExamplesReplicaWithEtcdRegistry(t *testing.T) {
	srv := etcdtest.Start(t)
	bin := buildReplica(t, t.TempDir())
	procs := startSubnetWith(t, bin, 2, srv.Endpoint)
	a, b := procs[0], procs[1]
	waitMetric(t, a, 1, "abcast_peer_up")
	if code, body := post(t, a.url("/publish?channel=blocks&id=via-etcd&size=50KiB")); code != http.StatusOK {
		t.Fatalf("publish: %d %s", code, body)
	}
	waitMetric(t, b, 1, "abcast_deliveries_total", `channel="blocks"`)
	for _, p := range procs {
		p.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, p := range procs {
		select {
		case err := <-p.exited:
			p.exited <- err
			if err != nil {
				t.Errorf("replica %s exited with %v", p.id.Short(), err)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("replica %s did not stop within 20 s of SIGTERM", p.id.Short())
		}
	}
}
