package membership

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
)

// ErrBadRegistry: a registry document (file or etcd entries) is malformed or
// would be an unsafe update. Errors name the entry and the reason.
var ErrBadRegistry = errors.New("membership: bad registry")

// MaxRegistryFileSize bounds what ReadRegistryFile and FileSource read; a
// registry of thousands of members is well under it.
const MaxRegistryFileSize = 16 << 20

// RegistryFile is the on-disk registry document (JSON):
//
//	{
//	  "version": 7,
//	  "oldest_version": 6,
//	  "members": [{"node_id": "…64 hex…", "addr": "10.0.0.1:7000", "public_key": "…base64…"}],
//	  "history": [{"version": 6, "members": [ … ]}]
//	}
//
// Members is the member list at Version. OldestVersion is the oldest version
// still in use; zero (the default) means Version itself. The members in
// force are the union of Members and of every History entry whose version is
// at least OldestVersion (see RegistryFile.Snapshot). History entries older
// than OldestVersion are ignored and pruned by the editing methods.
// AllowEmpty must be set for an empty Members list to be accepted.
type RegistryFile struct {
	Version       uint64            `json:"version"`
	OldestVersion uint64            `json:"oldest_version,omitempty"`
	AllowEmpty    bool              `json:"allow_empty,omitempty"`
	Members       []RegistryEntry   `json:"members"`
	History       []RegistryVersion `json:"history,omitempty"`
}

// RegistryVersion is the member list of an older version kept in History.
type RegistryVersion struct {
	Version uint64          `json:"version"`
	Members []RegistryEntry `json:"members"`
}

// RegistryEntry is one member as written in a registry: its NodeID in
// canonical hex, its UDP host:port and its raw Ed25519 public key in
// standard base64. The key must hash to the NodeID.
type RegistryEntry struct {
	NodeID    string `json:"node_id"`
	Addr      string `json:"addr"`
	PublicKey string `json:"public_key"`
}

// EntryOf writes m as a registry entry.
func EntryOf(m Member) RegistryEntry {
	return RegistryEntry{NodeID: m.ID.String(), Addr: m.Addr, PublicKey: base64.StdEncoding.EncodeToString(m.PublicKey)}
}

// Member parses and checks the entry: a canonical NodeID, a 32-byte base64
// key that hashes to it, and a host:port address. The error says which part
// is wrong; callers add where the entry sits.
func (e RegistryEntry) Member() (Member, error) {
	id, err := ParseNodeID(e.NodeID)
	if err != nil {
		return Member{}, fmt.Errorf("node_id: %w", err)
	}
	key, err := base64.StdEncoding.DecodeString(e.PublicKey)
	if err != nil {
		return Member{}, fmt.Errorf("public_key is not standard base64: %w", err)
	}
	if len(key) != ed25519.PublicKeySize {
		return Member{}, fmt.Errorf("public_key has %d bytes, want %d", len(key), ed25519.PublicKeySize)
	}
	if got := NodeIDFromPublicKey(key); got != id {
		return Member{}, fmt.Errorf("public_key does not match node_id (the key's NodeID is %s)", got)
	}
	if err := validateAddr(e.Addr); err != nil {
		return Member{}, err
	}
	return Member{ID: id, Addr: e.Addr, PublicKey: ed25519.PublicKey(key)}, nil
}

// ParseRegistry decodes a registry document strictly (unknown fields and
// trailing data are errors) and checks it with Validate.
func ParseRegistry(data []byte) (*RegistryFile, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var r RegistryFile
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("%w: malformed JSON: %w", ErrBadRegistry, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: malformed JSON: trailing data after the registry object", ErrBadRegistry)
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

// Validate checks the document: version at least 1, oldest_version not past
// version, every entry of every listed version well formed (see
// RegistryEntry.Member), no NodeID or address twice within one version,
// history versions distinct and older than version, and a non-empty member
// list unless allow_empty is set. Errors wrap ErrBadRegistry and name the
// version and the entry (position, node_id and addr).
func (r *RegistryFile) Validate() error {
	if r.Version == 0 {
		return fmt.Errorf("%w: version must be at least 1", ErrBadRegistry)
	}
	if r.OldestVersion > r.Version {
		return fmt.Errorf("%w: oldest_version %d is newer than version %d", ErrBadRegistry, r.OldestVersion, r.Version)
	}
	if len(r.Members) == 0 && !r.AllowEmpty {
		return fmt.Errorf("%w: version %d lists no members; set \"allow_empty\": true if an empty subnet is really meant", ErrBadRegistry, r.Version)
	}
	if _, err := parseEntries(r.Version, r.Members); err != nil {
		return err
	}
	seen := map[uint64]bool{}
	for i, h := range r.History {
		if h.Version >= r.Version {
			return fmt.Errorf("%w: history entry #%d: version %d is not older than the registry's version %d", ErrBadRegistry, i, h.Version, r.Version)
		}
		if seen[h.Version] {
			return fmt.Errorf("%w: history entry #%d: version %d appears twice", ErrBadRegistry, i, h.Version)
		}
		seen[h.Version] = true
		if _, err := parseEntries(h.Version, h.Members); err != nil {
			return err
		}
	}
	return nil
}

// parseEntries checks one version's list and returns its members in order.
func parseEntries(version uint64, entries []RegistryEntry) ([]Member, error) {
	ids := make(map[NodeID]int, len(entries))
	addrs := make(map[string]int, len(entries))
	out := make([]Member, 0, len(entries))
	for i, e := range entries {
		where := fmt.Sprintf("version %d, member #%d (node_id %s, addr %q)", version, i, shorten(e.NodeID), e.Addr)
		m, err := e.Member()
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrBadRegistry, where, err)
		}
		if j, dup := ids[m.ID]; dup {
			return nil, fmt.Errorf("%w: %s: duplicate node_id (also member #%d)", ErrBadRegistry, where, j)
		}
		if j, dup := addrs[m.Addr]; dup {
			return nil, fmt.Errorf("%w: %s: duplicate addr (also member #%d)", ErrBadRegistry, where, j)
		}
		ids[m.ID], addrs[m.Addr] = i, i
		out = append(out, m)
	}
	return out, nil
}

// shorten keeps error messages readable when a field holds junk.
func shorten(s string) string {
	if len(s) > 16 {
		return fmt.Sprintf("%q…", s[:16])
	}
	return fmt.Sprintf("%q", s)
}

// EffectiveOldest is the oldest version in force: OldestVersion, or Version
// when it is zero.
func (r *RegistryFile) EffectiveOldest() uint64 {
	if r.OldestVersion == 0 {
		return r.Version
	}
	return r.OldestVersion
}

// Snapshot returns the member set in force, at the document's version: the
// union of the members of every listed version from EffectiveOldest to
// Version. Where versions disagree the newer one wins: a NodeID takes its
// newest address, and an older-only member whose address a newer version
// gives to another node is left out (its process was replaced at that
// address, as in a key rotation, and two members cannot share an address).
func (r *RegistryFile) Snapshot() (*Snapshot, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	lists := []RegistryVersion{{Version: r.Version, Members: r.Members}}
	oldest := r.EffectiveOldest()
	for _, h := range r.History {
		if h.Version >= oldest {
			lists = append(lists, h)
		}
	}
	slices.SortFunc(lists, func(a, b RegistryVersion) int { return -cmpU64(a.Version, b.Version) })
	var members []Member
	ids := map[NodeID]bool{}
	addrs := map[string]bool{}
	for _, l := range lists {
		ms, err := parseEntries(l.Version, l.Members)
		if err != nil {
			return nil, err // Validate already checked; kept for safety
		}
		for _, m := range ms {
			if ids[m.ID] || addrs[m.Addr] {
				continue
			}
			ids[m.ID], addrs[m.Addr] = true, true
			members = append(members, m)
		}
	}
	snap, err := NewSnapshot(r.Version, members...)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadRegistry, err)
	}
	return snap, nil
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// ReadRegistryFile reads and parses a registry file. Errors name the path.
func ReadRegistryFile(path string) (*RegistryFile, error) {
	data, err := readBounded(path)
	if err != nil {
		return nil, err
	}
	r, err := ParseRegistry(data)
	if err != nil {
		return nil, fmt.Errorf("registry %s: %w", path, err)
	}
	return r, nil
}

func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("registry %s: %w", path, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxRegistryFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("registry %s: %w", path, err)
	}
	if len(data) > MaxRegistryFileSize {
		return nil, fmt.Errorf("registry %s: %w: larger than %d bytes", path, ErrBadRegistry, MaxRegistryFileSize)
	}
	return data, nil
}

// WriteRegistryFile validates r and replaces path atomically (a temporary
// file in the same directory, synced, then renamed), so a watching
// FileSource never reads half a file.
func WriteRegistryFile(path string, r *RegistryFile) error {
	if err := r.Validate(); err != nil {
		return fmt.Errorf("registry %s: %w", path, err)
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("registry %s: %w", path, err)
	}
	data = append(data, '\n')
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("registry %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // no-op once renamed
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("registry %s: %w", path, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("registry %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("registry %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("registry %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("registry %s: %w", path, err)
	}
	return nil
}

// NewRegistryFile starts a document at version 1 with the given members.
func NewRegistryFile(members ...Member) (*RegistryFile, error) {
	r := &RegistryFile{Version: 1}
	for _, m := range members {
		r.Members = append(r.Members, EntryOf(m))
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return r, nil
}

// Put adds m, or moves it to m.Addr if its NodeID is already listed, as a
// new version. The document is unchanged on error.
func (r *RegistryFile) Put(m Member) error {
	return r.edit(func(ms []RegistryEntry) ([]RegistryEntry, error) {
		for i, e := range ms {
			if e.NodeID == m.ID.String() {
				if e.Addr == m.Addr {
					return nil, fmt.Errorf("%w: node %s is already a member at %s", ErrBadRegistry, m.ID.Short(), m.Addr)
				}
				ms[i] = EntryOf(m)
				return ms, nil
			}
		}
		return append(ms, EntryOf(m)), nil
	})
}

// Remove removes the member id as a new version. With OldestVersion set,
// the member stays in force until OldestVersion passes the current version.
func (r *RegistryFile) Remove(id NodeID) error {
	return r.edit(func(ms []RegistryEntry) ([]RegistryEntry, error) {
		for i, e := range ms {
			if e.NodeID == id.String() {
				return slices.Delete(ms, i, i+1), nil
			}
		}
		return nil, fmt.Errorf("%w: node %s is not a member", ErrBadRegistry, id.Short())
	})
}

// Replace swaps member old for m in one new version: a key rotation (m has
// the new key, hence a new NodeID, and typically old's address).
func (r *RegistryFile) Replace(old NodeID, m Member) error {
	return r.edit(func(ms []RegistryEntry) ([]RegistryEntry, error) {
		for i, e := range ms {
			if e.NodeID == old.String() {
				ms[i] = EntryOf(m)
				return ms, nil
			}
		}
		return nil, fmt.Errorf("%w: node %s is not a member", ErrBadRegistry, old.Short())
	})
}

// AdvanceOldest declares versions before v no longer in use, as a new
// version (the member set in force may shrink, so it needs one). v may not
// go back and may not pass the current version.
func (r *RegistryFile) AdvanceOldest(v uint64) error {
	if v > r.Version {
		return fmt.Errorf("%w: oldest version %d is newer than version %d", ErrBadRegistry, v, r.Version)
	}
	if v < r.OldestVersion {
		return fmt.Errorf("%w: oldest version %d would go back from %d", ErrBadRegistry, v, r.OldestVersion)
	}
	return r.editOldest(v, func(ms []RegistryEntry) ([]RegistryEntry, error) { return ms, nil })
}

func (r *RegistryFile) edit(fn func([]RegistryEntry) ([]RegistryEntry, error)) error {
	return r.editOldest(r.OldestVersion, fn)
}

// editOldest produces version+1: the current list moves to History, fn
// edits a copy, and History entries older than the oldest version in force
// are pruned. On any error the document is left as it was.
func (r *RegistryFile) editOldest(oldest uint64, fn func([]RegistryEntry) ([]RegistryEntry, error)) error {
	ms, err := fn(slices.Clone(r.Members))
	if err != nil {
		return err
	}
	next := RegistryFile{Version: r.Version + 1, OldestVersion: oldest, AllowEmpty: r.AllowEmpty, Members: ms}
	keepFrom := next.EffectiveOldest()
	for _, h := range append(slices.Clone(r.History), RegistryVersion{Version: r.Version, Members: r.Members}) {
		if h.Version >= keepFrom {
			next.History = append(next.History, h)
		}
	}
	if err := next.Validate(); err != nil {
		return err
	}
	if _, err := next.Snapshot(); err != nil {
		return err
	}
	*r = next
	return nil
}
