package etcdreg_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/abcast/abcast/internal/poll"
	"github.com/abcast/abcast/membership"
	"github.com/abcast/abcast/membership/etcdreg"
	"github.com/abcast/abcast/membership/etcdreg/etcdtest"
)

const prefix = "/abcast/test/members/"

func member(t *testing.T, port int) membership.Member {
	t.Helper()
	id, err := membership.GenerateIdentity(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return id.Member(fmt.Sprintf("127.0.0.1:%d", port))
}

func newSource(t *testing.T, srv *etcdtest.Server) *etcdreg.Source {
	t.Helper()
	cfg := etcdreg.DefaultConfig(srv.Client(t), prefix)
	cfg.RetryMax = 200 * time.Millisecond
	s, err := etcdreg.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Joins, leaves and address changes written to etcd reach watchers, with
// the etcd revision of the change as the snapshot's version.
func TestEtcdSourceFollowsChanges(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	ctx := context.Background()
	a, b, c := member(t, 9001), member(t, 9002), member(t, 9003)
	for _, m := range []membership.Member{a, b} {
		if _, err := etcdreg.Put(ctx, cli, prefix, m); err != nil {
			t.Fatal(err)
		}
	}
	s := newSource(t, srv)
	if s.Current().Len() != 2 {
		t.Fatalf("loaded %d members", s.Current().Len())
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w := s.Watch(wctx)
	<-w // the current snapshot
	next := func(rev int64) *membership.Snapshot {
		t.Helper()
		select {
		case snap := <-w:
			if snap.Version != uint64(rev) {
				t.Fatalf("version %d, want revision %d", snap.Version, rev)
			}
			return snap
		case <-time.After(10 * time.Second):
			t.Fatalf("no snapshot at revision %d", rev)
			return nil
		}
	}
	rev, err := etcdreg.Put(ctx, cli, prefix, c)
	if err != nil {
		t.Fatal(err)
	}
	if snap := next(rev); !snap.Contains(c.ID) || snap.Len() != 3 {
		t.Fatal("join not applied")
	}
	if rev, err = etcdreg.Delete(ctx, cli, prefix, a.ID); err != nil {
		t.Fatal(err)
	}
	if snap := next(rev); snap.Contains(a.ID) {
		t.Fatal("leave not applied")
	}
	moved := b
	moved.Addr = "127.0.0.1:9999"
	if rev, err = etcdreg.Put(ctx, cli, prefix, moved); err != nil {
		t.Fatal(err)
	}
	if m, _ := next(rev).Member(b.ID); m.Addr != moved.Addr {
		t.Fatalf("address change not applied: %s", m.Addr)
	}
	if _, err := etcdreg.Delete(ctx, cli, prefix, a.ID); !errors.Is(err, membership.ErrBadRegistry) {
		t.Fatalf("deleting a non-member: %v", err)
	}
}

// A bad value keeps the last good snapshot and names the key; so does
// deleting every member; fixing it applies again.
func TestEtcdSourceKeepsLastGoodSnapshot(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	ctx := context.Background()
	a, b := member(t, 9001), member(t, 9002)
	etcdreg.Put(ctx, cli, prefix, a)
	etcdreg.Put(ctx, cli, prefix, b)
	s := newSource(t, srv)
	v0 := s.Current().Version

	refused := func(want string) {
		t.Helper()
		poll.Until(t, 15*time.Second, "refusal: "+want, func() bool {
			err := s.LastError()
			return err != nil && strings.Contains(err.Error(), want)
		})
		if !errors.Is(s.LastError(), membership.ErrBadRegistry) {
			t.Fatalf("%v does not wrap ErrBadRegistry", s.LastError())
		}
		if cur := s.Current(); cur.Version != v0 || cur.Len() != 2 {
			t.Fatalf("snapshot changed to v%d with %d members", cur.Version, cur.Len())
		}
	}
	badKey := etcdreg.Key(prefix, b.ID)
	cli.Put(ctx, badKey, "{not json")
	refused(badKey)
	refused("not a member entry")

	other := member(t, 9003)
	entry := membership.EntryOf(other)
	cli.Put(ctx, badKey, fmt.Sprintf(`{"node_id":%q,"addr":%q,"public_key":%q}`, entry.NodeID, entry.Addr, entry.PublicKey))
	refused("key names node")

	wrong := membership.EntryOf(b)
	wrong.PublicKey = entry.PublicKey
	cli.Put(ctx, badKey, fmt.Sprintf(`{"node_id":%q,"addr":%q,"public_key":%q}`, wrong.NodeID, wrong.Addr, wrong.PublicKey))
	refused("public_key does not match node_id")

	cli.Delete(ctx, prefix, clientv3.WithPrefix())
	refused("no members")

	rev, err := etcdreg.Put(ctx, cli, prefix, a)
	if err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 15*time.Second, "the fixed state", func() bool { return s.Current().Version == uint64(rev) })
	if s.Current().Len() != 1 || s.LastError() != nil {
		t.Fatalf("%d members, err %v", s.Current().Len(), s.LastError())
	}
}

// While etcd is down the source keeps its snapshot; once it is back,
// changes flow again.
func TestEtcdSourceSurvivesAnOutage(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	ctx := context.Background()
	a, b := member(t, 9001), member(t, 9002)
	etcdreg.Put(ctx, cli, prefix, a)
	s := newSource(t, srv)
	before := s.Current()

	srv.Stop()
	// Nothing to wait for: the snapshot must simply still be there.
	if cur := s.Current(); cur != before {
		t.Fatal("snapshot changed when etcd went away")
	}
	srv.Restart()
	var rev int64
	poll.Until(t, 15*time.Second, "a write after the restart", func() bool {
		wctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		r, err := etcdreg.Put(wctx, cli, prefix, b)
		rev = r
		return err == nil
	})
	poll.Until(t, 15*time.Second, "the change made after the outage", func() bool { return s.Current().Version >= uint64(rev) })
	if !s.Current().Contains(b.ID) || !s.Current().Contains(a.ID) {
		t.Fatalf("members after the outage: %v", s.Current().IDs())
	}
}

func TestNewRefusesAnEmptyOrBadPrefix(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	ctx := context.Background()
	if _, err := etcdreg.New(ctx, etcdreg.DefaultConfig(cli, prefix)); !errors.Is(err, membership.ErrBadRegistry) || !strings.Contains(err.Error(), "no members") {
		t.Fatalf("empty prefix: %v", err)
	}
	cfg := etcdreg.DefaultConfig(cli, prefix)
	cfg.AllowEmpty = true
	s, err := etcdreg.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	cli.Put(ctx, prefix+"junk", "x")
	if _, err := etcdreg.New(ctx, etcdreg.DefaultConfig(cli, prefix)); err == nil || !strings.Contains(err.Error(), prefix+"junk") {
		t.Fatalf("bad entry: %v", err)
	}
	if _, err := etcdreg.New(ctx, etcdreg.Config{}); err == nil {
		t.Fatal("empty config accepted")
	}
}
