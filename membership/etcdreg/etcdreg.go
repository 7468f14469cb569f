// Package etcdreg is a membership.Source kept in etcd, for subnets that span
// machines. It lives apart from package membership so that programs using
// the file registry do not link etcd's client.
//
// # Layout
//
// Each member is one key, Prefix + NodeID (canonical hex), whose value is the
// JSON of a membership.RegistryEntry:
//
//	/abcast/subnet-1/members/3f9a…  →  {"node_id":"3f9a…","addr":"10.0.0.7:7000","public_key":"…base64…"}
//
// Put and Delete write such keys. A snapshot's version is the etcd revision
// at which the member set was read, so versions increase with every change
// (and may skip numbers: other keys share the revision counter).
//
// # Updates and failures
//
// The source reads the prefix once, then watches it from the next revision.
// Every change builds a candidate snapshot from all keys under the prefix;
// it is installed only if every entry is valid (its key names its node_id,
// the key hashes to the node_id, the address parses, no address twice) and
// the set is not empty (unless Config.AllowEmpty). Otherwise the last good
// snapshot stays in force and the refusal, naming the key and the reason, is
// logged and kept for LastError: one corrupt value must not silently remove
// a member. When the watch breaks (etcd unreachable, revision compacted) the
// source keeps its snapshot, re-reads the prefix with backoff and watches
// again; no change made meanwhile is lost because the re-read sees the state
// as it is.
package etcdreg

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/abcast/abcast/membership"
)

// Config configures a Source.
type Config struct {
	// Client is an etcd client the caller created and closes after the
	// Source. Required.
	Client *clientv3.Client
	// Prefix holds one key per member, e.g. "/abcast/subnet-1/members/".
	// Required; it should end with a separator so that one subnet's prefix
	// is not a prefix of another's.
	Prefix string
	// AllowEmpty accepts a prefix with no members. Default false: an empty
	// set is almost always a mistake (a wrong prefix, a wiped cluster), and
	// accepting it would disconnect every peer.
	AllowEmpty bool
	// RequestTimeout bounds each read of the whole prefix. Default 5 s.
	RequestTimeout time.Duration
	// RetryMin and RetryMax bound the pause between attempts to re-read
	// and re-watch after a failure; it doubles per failed attempt.
	// Defaults 100 ms and 5 s.
	RetryMin, RetryMax time.Duration
	// Log receives applied and refused changes and connection trouble. The
	// zero value logs nothing.
	Log zerolog.Logger
}

// DefaultConfig returns the defaults for client and prefix.
func DefaultConfig(client *clientv3.Client, prefix string) Config {
	return Config{Client: client, Prefix: prefix, RequestTimeout: 5 * time.Second, RetryMin: 100 * time.Millisecond, RetryMax: 5 * time.Second}
}

// Validate reports the first field out of range.
func (c Config) Validate() error {
	switch {
	case c.Client == nil:
		return errors.New("etcdreg: Config.Client is nil")
	case c.Prefix == "":
		return errors.New("etcdreg: Config.Prefix is empty")
	case c.RequestTimeout <= 0:
		return errors.New("etcdreg: Config.RequestTimeout must be positive")
	case c.RetryMin <= 0 || c.RetryMax < c.RetryMin:
		return errors.New("etcdreg: need 0 < RetryMin <= RetryMax")
	}
	return nil
}

// Source is a membership.Source that follows a prefix in etcd.
type Source struct {
	cfg    Config
	static *membership.StaticSource

	mu      sync.Mutex
	lastErr error
	resyncs int

	cancel context.CancelFunc
	done   chan struct{}
}

var _ membership.Source = (*Source)(nil)

// New reads the prefix and starts watching it. It fails if etcd cannot be
// read within RequestTimeout or the members there are invalid: there is no
// earlier snapshot to fall back on. Close stops the watch.
func New(ctx context.Context, cfg Config) (*Source, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Source{cfg: cfg, done: make(chan struct{})}
	state, rev, err := s.read(ctx)
	if err != nil {
		return nil, err
	}
	snap, err := s.build(state, rev)
	if err != nil {
		return nil, err
	}
	if s.static, err = membership.NewStaticSource(snap); err != nil {
		return nil, fmt.Errorf("etcd prefix %q: %w", cfg.Prefix, err)
	}
	cfg.Log.Info().Str("prefix", cfg.Prefix).Uint64("version", snap.Version).Int("members", snap.Len()).Msg("etcd registry loaded")
	runCtx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go s.run(runCtx, state, rev)
	return s, nil
}

// Current implements membership.Source.
func (s *Source) Current() *membership.Snapshot { return s.static.Current() }

// Watch implements membership.Source.
func (s *Source) Watch(ctx context.Context) <-chan *membership.Snapshot { return s.static.Watch(ctx) }

// LastError is why the latest state seen in etcd was refused or could not
// be read, or nil if the snapshot in force matches it.
func (s *Source) LastError() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
}

// Resyncs counts how often the watch broke and the prefix was re-read.
func (s *Source) Resyncs() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.resyncs
}

// Close stops watching. It does not close the client.
func (s *Source) Close() error {
	s.cancel()
	<-s.done
	return nil
}

// read fetches every key under the prefix and the revision it was read at.
func (s *Source) read(ctx context.Context) (map[string][]byte, int64, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	resp, err := s.cfg.Client.Get(ctx, s.cfg.Prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("etcd prefix %q: read: %w", s.cfg.Prefix, err)
	}
	state := make(map[string][]byte, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		state[string(kv.Key)] = kv.Value
	}
	return state, resp.Header.Revision, nil
}

// build turns the keys under the prefix into a validated snapshot at rev.
// Keys are checked in sorted order so the error is deterministic.
func (s *Source) build(state map[string][]byte, rev int64) (*membership.Snapshot, error) {
	if len(state) == 0 && !s.cfg.AllowEmpty {
		return nil, fmt.Errorf("etcd prefix %q at revision %d: %w: no members; set AllowEmpty if an empty subnet is really meant", s.cfg.Prefix, rev, membership.ErrBadRegistry)
	}
	keys := make([]string, 0, len(state))
	for k := range state {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	members := make([]membership.Member, 0, len(keys))
	addrs := map[string]string{}
	for _, k := range keys {
		m, err := parseValue(s.cfg.Prefix, k, state[k])
		if err != nil {
			return nil, fmt.Errorf("etcd prefix %q at revision %d: %w: key %q: %w", s.cfg.Prefix, rev, membership.ErrBadRegistry, k, err)
		}
		if other, dup := addrs[m.Addr]; dup {
			return nil, fmt.Errorf("etcd prefix %q at revision %d: %w: key %q: addr %q is also used by key %q", s.cfg.Prefix, rev, membership.ErrBadRegistry, k, m.Addr, other)
		}
		addrs[m.Addr] = k
		members = append(members, m)
	}
	snap, err := membership.NewSnapshot(uint64(rev), members...)
	if err != nil {
		return nil, fmt.Errorf("etcd prefix %q at revision %d: %w", s.cfg.Prefix, rev, err)
	}
	return snap, nil
}

func parseValue(prefix, key string, value []byte) (membership.Member, error) {
	var e membership.RegistryEntry
	dec := json.NewDecoder(strings.NewReader(string(value)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		return membership.Member{}, fmt.Errorf("value is not a member entry: %w", err)
	}
	if name := strings.TrimPrefix(key, prefix); name != e.NodeID {
		return membership.Member{}, fmt.Errorf("key names node %q but its value says node_id %q", name, e.NodeID)
	}
	return e.Member()
}

// run keeps the snapshot in step with etcd until ctx ends.
func (s *Source) run(ctx context.Context, state map[string][]byte, rev int64) {
	defer close(s.done)
	backoff := s.cfg.RetryMin
	for {
		progressed := s.follow(ctx, state, &rev)
		if ctx.Err() != nil {
			return
		}
		if progressed {
			backoff = s.cfg.RetryMin
		}
		// The watch broke: keep the snapshot, re-read with backoff.
		for {
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			backoff = min(2*backoff, s.cfg.RetryMax)
			fresh, frev, err := s.read(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				s.setErr(err)
				s.cfg.Log.Warn().Err(err).Str("prefix", s.cfg.Prefix).Uint64("keeping_version", s.Current().Version).Dur("retry_in", backoff).Msg("etcd unreachable; keeping the last good snapshot")
				continue
			}
			s.mu.Lock()
			s.resyncs++
			s.mu.Unlock()
			state, rev = fresh, frev
			s.apply(state, rev)
			break
		}
	}
}

// follow watches from rev+1, applying each batch of events, until the watch
// ends; it reports whether any batch arrived.
func (s *Source) follow(ctx context.Context, state map[string][]byte, rev *int64) bool {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	progressed := false
	for resp := range s.cfg.Client.Watch(wctx, s.cfg.Prefix, clientv3.WithPrefix(), clientv3.WithRev(*rev+1)) {
		if err := resp.Err(); err != nil {
			if ctx.Err() == nil {
				err = fmt.Errorf("etcd prefix %q: watch from revision %d: %w", s.cfg.Prefix, *rev+1, err)
				s.setErr(err)
				s.cfg.Log.Warn().Err(err).Str("prefix", s.cfg.Prefix).Msg("etcd watch broke; re-reading")
			}
			return progressed
		}
		if len(resp.Events) == 0 {
			continue
		}
		progressed = true
		for _, ev := range resp.Events {
			switch ev.Type {
			case clientv3.EventTypePut:
				state[string(ev.Kv.Key)] = ev.Kv.Value
			case clientv3.EventTypeDelete:
				delete(state, string(ev.Kv.Key))
			}
			*rev = max(*rev, ev.Kv.ModRevision)
		}
		s.apply(state, *rev)
	}
	return progressed
}

// apply installs the state as a new snapshot if it is valid and changes the
// member set; a refusal keeps the snapshot in force.
func (s *Source) apply(state map[string][]byte, rev int64) {
	cur := s.Current()
	snap, err := s.build(state, rev)
	if err != nil {
		s.setErr(err)
		s.cfg.Log.Error().Err(err).Uint64("keeping_version", cur.Version).Msg("etcd registry change refused; keeping the last good snapshot")
		return
	}
	s.setErr(nil)
	if sameMembers(cur, snap) || snap.Version <= cur.Version {
		return // a re-read that found nothing new
	}
	if err := s.static.Update(snap); err != nil {
		s.setErr(err)
		return
	}
	d := membership.DiffSnapshots(cur, snap)
	s.cfg.Log.Info().Str("prefix", s.cfg.Prefix).Uint64("from_version", cur.Version).Uint64("version", snap.Version).
		Int("members", snap.Len()).Int("joined", len(d.Joined)).Int("left", len(d.Left)).Int("moved", len(d.Moved)).Msg("etcd registry change applied")
}

func (s *Source) setErr(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastErr = err
}

func sameMembers(a, b *membership.Snapshot) bool {
	if a.Len() != b.Len() {
		return false
	}
	for id, m := range a.Members {
		o, ok := b.Members[id]
		if !ok || o.Addr != m.Addr {
			return false
		}
	}
	return true
}

// Key is the etcd key of node id under prefix.
func Key(prefix string, id membership.NodeID) string { return prefix + id.String() }

// Put writes member m under prefix and returns the revision of the write.
func Put(ctx context.Context, cli *clientv3.Client, prefix string, m membership.Member) (int64, error) {
	if _, err := membership.NewSnapshot(1, m); err != nil {
		return 0, err
	}
	v, err := json.Marshal(membership.EntryOf(m))
	if err != nil {
		return 0, err
	}
	resp, err := cli.Put(ctx, Key(prefix, m.ID), string(v))
	if err != nil {
		return 0, fmt.Errorf("etcd: put member %s: %w", m.ID.Short(), err)
	}
	return resp.Header.Revision, nil
}

// Delete removes member id from prefix and returns the revision of the
// delete; deleting a non-member is an error.
func Delete(ctx context.Context, cli *clientv3.Client, prefix string, id membership.NodeID) (int64, error) {
	resp, err := cli.Delete(ctx, Key(prefix, id))
	if err != nil {
		return 0, fmt.Errorf("etcd: delete member %s: %w", id.Short(), err)
	}
	if resp.Deleted == 0 {
		return 0, fmt.Errorf("etcd: delete member %s: %w: not a member", id.Short(), membership.ErrBadRegistry)
	}
	return resp.Header.Revision, nil
}
