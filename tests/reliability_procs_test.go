package tests

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/abcast/abcast/actors/abcasttest"
)

// Processes (issue 9): four examples/replica processes on loopback; one is
// killed with SIGKILL in the middle of traffic and started again from the
// same config (fresh state, same key and port). Afterwards the restarted
// replica holds every live artifact again, the survivors hold every live
// artifact and delivered nothing twice, and the dead replica's artifacts
// (its application died with it) are withdrawn everywhere. What each
// replica delivered and withdrew is read from its debug log.
func TestReliabilityKill9AndRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs replica processes")
	}
	seed := testSeed(t)
	t.Logf("seed %d (set ABCAST_SEED to replay)", seed)
	rng := rand.New(rand.NewPCG(seed, 99))
	bin := buildReplica(t, t.TempDir())
	procs := startSubnet(t, bin, 4)
	waitPeers(t, procs, 3)

	type art struct {
		owner int
		life  int // the owner's life it was published in
	}
	published := map[string]art{}
	aborted := map[string]bool{}
	life := make([]int, 4)
	seq := 0
	publish := func(i int) {
		seq++
		id := fmt.Sprintf("k%d-%d", i, seq)
		size := []string{"300", "5KiB", "100KiB", "1MiB"}[rng.IntN(4)]
		if code, body := post(t, procs[i].url("/publish?channel=blocks&id="+id+"&size="+size)); code != http.StatusOK {
			t.Fatalf("publish on %d: %d %s", i, code, body)
		}
		published[id] = art{i, life[i]}
	}
	abortOne := func(alive []int) {
		var ids []string
		for id, a := range published {
			if !aborted[id] && slices.Contains(alive, a.owner) && a.life == life[a.owner] {
				ids = append(ids, id)
			}
		}
		if len(ids) == 0 {
			return
		}
		slices.Sort(ids)
		id := ids[rng.IntN(len(ids))]
		if code, body := post(t, procs[published[id].owner].url("/abort?channel=blocks&id="+id)); code != http.StatusOK {
			t.Fatalf("abort %s: %d %s", id, code, body)
		}
		aborted[id] = true
	}
	traffic := func(alive []int, n int) {
		for k := range n {
			publish(alive[k%len(alive)])
			if rng.IntN(4) == 0 {
				abortOne(alive)
			}
		}
	}

	all, survivors := []int{0, 1, 2, 3}, []int{0, 1, 2}
	traffic(all, 40)
	victim := procs[3]
	killedAt := time.Now()
	if err := victim.cmd.Process.Kill(); err != nil { // SIGKILL: no goodbye
		t.Fatal(err)
	}
	victim.exited <- <-victim.exited // wait for it to die; keep the result for the cleanup
	traffic(survivors, 20)
	procs[3] = restartReplica(t, victim)
	life[3]++
	t.Logf("replica 3 killed and back in %v", time.Since(killedAt).Round(time.Millisecond))
	traffic(all, 40)

	// Expected: what is live now, per node.
	live := map[string]int{}
	for id, a := range published {
		if !aborted[id] && a.life == life[a.owner] {
			live[id] = a.owner
		}
	}
	var last []string
	must(t, abcasttest.Eventually(2*time.Minute, func() error {
		last = last[:0]
		for i, p := range procs {
			held, _, err := logDeliveries(p.logPath)
			if err != nil {
				return err
			}
			for id, owner := range live {
				if owner != i && !held[id] {
					last = append(last, fmt.Sprintf("node %d lacks %s (from %d)", i, id, owner))
				}
			}
			for id := range held {
				if _, ok := live[id]; !ok {
					last = append(last, fmt.Sprintf("node %d still holds %s", i, id))
				}
			}
		}
		if len(last) > 0 {
			return fmt.Errorf("%d differences, e.g. %v", len(last), last[:min(3, len(last))])
		}
		return nil
	}))
	for i, p := range procs {
		_, count, err := logDeliveries(p.logPath)
		if err != nil {
			t.Fatal(err)
		}
		for id, n := range count {
			if n > 1 {
				t.Errorf("node %d delivered %s %d times", i, id, n)
			}
		}
	}
	t.Logf("%d published, %d aborted, %d live after the kill: survivors lost nothing and delivered nothing twice; the restarted replica holds all %d live artifacts of the others",
		len(published), len(aborted), len(live), len(live)-countOwned(live, 3))
}

func countOwned(live map[string]int, owner int) int {
	n := 0
	for _, o := range live {
		if o == owner {
			n++
		}
	}
	return n
}

// waitPeers waits until every replica reports n peers up.
func waitPeers(t *testing.T, procs []*replicaProc, n int) {
	t.Helper()
	must(t, abcasttest.Eventually(time.Minute, func() error {
		for i, p := range procs {
			resp, err := httpClient.Get(p.url("/status"))
			if err != nil {
				return err
			}
			var st struct {
				Peers []string `json:"peers"`
			}
			err = json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
			if err != nil {
				return err
			}
			if len(st.Peers) != n {
				return fmt.Errorf("replica %d has %d peers", i, len(st.Peers))
			}
		}
		return nil
	}))
}

// restartReplica starts a killed replica again with the same command line
// and a new log file.
func restartReplica(t *testing.T, old *replicaProc) *replicaProc {
	t.Helper()
	os.Remove(old.ready)
	p := &replicaProc{id: old.id, ready: old.ready, exited: make(chan error, 1),
		logPath: filepath.Join(filepath.Dir(old.logPath), fmt.Sprintf("restarted-%s.log", old.id.Short()))}
	p.start(t, "restarted node", exec.Command(old.cmd.Path, old.cmd.Args[1:]...))
	must(t, abcasttest.Eventually(time.Minute, func() error {
		b, err := os.ReadFile(p.ready)
		if err != nil || len(b) == 0 {
			return fmt.Errorf("restarted replica not serving yet")
		}
		p.http = string(b)
		return nil
	}))
	return p
}

// logDeliveries reads a replica's debug log: the ids on channel blocks it
// holds now (delivered, not withdrawn) and how often each was delivered.
func logDeliveries(path string) (map[string]bool, map[string]int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	held, count := map[string]bool{}, map[string]int{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l struct {
			Message, Channel, ID string
		}
		if json.Unmarshal(sc.Bytes(), &l) != nil || l.Channel != "blocks" {
			continue
		}
		switch l.Message {
		case "delivered":
			held[l.ID] = true
			count[l.ID]++
		case "withdrawn":
			delete(held, l.ID)
		}
	}
	return held, count, sc.Err()
}
