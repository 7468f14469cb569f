package tests

import (
	"context"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/abcast/abcast/actors/abcasttest"
	"github.com/abcast/abcast/membership/etcdreg"
	"github.com/abcast/abcast/membership/etcdreg/etcdtest"
)

func etcdSource(t *testing.T, cli *clientv3.Client, prefix string) *etcdreg.Source {
	t.Helper()
	cfg := etcdreg.DefaultConfig(cli, prefix)
	cfg.RetryMax = 200 * time.Millisecond
	s, err := etcdreg.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// With the etcd registry: a member put under the prefix is connected and
// receives the live artifacts; a deleted one is cut off and its artifacts
// are withdrawn at the others, which keep delivering.
func TestMembershipEtcdJoinAndLeave(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	ctx := context.Background()
	const prefix = "/abcast/e2e/members/"
	r := newRegNet(t, 3)
	for i := 1; i < 3; i++ {
		if _, err := etcdreg.Put(ctx, cli, prefix, r.member(i)); err != nil {
			t.Fatal(err)
		}
	}
	srcs := make([]*etcdreg.Source, 3)
	for i := range 3 {
		srcs[i] = etcdSource(t, cli, prefix)
		r.start(i, srcs[i])
	}
	r.publish(1, artifact("from-1", 100))
	r.publish(2, artifact("from-2", 16<<10))
	must(t, abcasttest.Eventually(10*time.Second, func() error {
		if err := r.holdsAll(1, "from-2"); err != nil {
			return err
		}
		return r.holdsAll(2, "from-1")
	}))

	// Join: node 0 (lowest id) is put under the prefix.
	rev, err := etcdreg.Put(ctx, cli, prefix, r.member(0))
	if err != nil {
		t.Fatal(err)
	}
	must(t, abcasttest.Eventually(15*time.Second, func() error {
		if srcs[1].Current().Version < uint64(rev) {
			return fmt.Errorf("node 1 has not seen revision %d", rev)
		}
		return r.holdsAll(0, "from-1", "from-2")
	}))
	r.publish(0, artifact("from-0", 100))
	must(t, abcasttest.Eventually(10*time.Second, func() error {
		if err := r.holdsAll(1, "from-0"); err != nil {
			return err
		}
		return r.holdsAll(2, "from-0")
	}))

	// Leave: node 2 is deleted; its artifact is withdrawn, it is cut off.
	if rev, err = etcdreg.Delete(ctx, cli, prefix, r.ids[2].ID); err != nil {
		t.Fatal(err)
	}
	must(t, abcasttest.Eventually(10*time.Second, func() error {
		for i := range 2 {
			if srcs[i].Current().Version < uint64(rev) {
				return fmt.Errorf("node %d has not seen revision %d", i, rev)
			}
			if _, ok := r.nodes[i].rec.Holds("from-2"); ok {
				return fmt.Errorf("node %d still holds from-2", i)
			}
			if r.connected(i, 2) {
				return fmt.Errorf("node %d still connected to the removed node", i)
			}
		}
		return nil
	}))
	r.publish(1, artifact("after", 100))
	must(t, abcasttest.Eventually(10*time.Second, func() error { return r.holdsAll(0, "after") }))
	if r.holdsAll(2, "after") == nil {
		t.Fatal("removed node received an artifact published after its removal")
	}
	if !srcs[2].Current().Contains(r.ids[0].ID) || srcs[2].Current().Contains(r.ids[2].ID) {
		t.Fatalf("removed node's own view: %v", srcs[2].Current().IDs())
	}
	r.checkNoProblems()
}
