// Command abcastctl manages node keys and registry files.
//
//	abcastctl keygen -out node.key
//	abcastctl subnet -n 4 -dir ./subnet -base-port 7000 [-host 127.0.0.1] [-channels blocks]
//	abcastctl add    -registry registry.json -key node.key -addr host:port [-replace NODEID]
//	abcastctl remove -registry registry.json -node NODEID
//	abcastctl oldest -registry registry.json -version V
//	abcastctl show   -registry registry.json
//
// Every edit writes a new registry version atomically, so running nodes
// (membership.FileSource) pick it up within one poll interval. add on a key
// that is already a member moves it to the new address; add -replace swaps an
// old member for the key's node in one version (a key rotation). oldest
// declares the versions before V no longer in use: the members in force are
// the union of the versions from the oldest in use to the newest (by default
// only the newest).
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/abcast/abcast/examples/abcastctl/nodeconfig"
	"github.com/abcast/abcast/membership"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "abcastctl:", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

const usage = `usage: abcastctl <command> [flags]

commands:
  keygen  -out FILE                          create a node key, print its NodeID
  subnet  -n N -dir DIR -base-port P         keys, registry.json and node-<i>.json for N local nodes
  add     -registry FILE -key FILE -addr A   add a member (or move it to A); -replace ID rotates a key
  remove  -registry FILE -node ID            remove a member
  oldest  -registry FILE -version V          advance the oldest registry version in use
  show    -registry FILE                     print the registry and the members in force
`

// run executes one command; tests call it in-process.
func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("%w: no command", errUsage)
	}
	cmds := map[string]func([]string, io.Writer, io.Writer) error{
		"keygen": keygen, "subnet": subnet, "add": add, "remove": remove, "oldest": oldest, "show": show,
	}
	cmd, ok := cmds[args[0]]
	if !ok {
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("%w: unknown command %q", errUsage, args[0])
	}
	return cmd(args[1:], stdout, stderr)
}

// parse parses flags and checks that every name in required was set.
func parse(fs *flag.FlagSet, args []string, required ...string) error {
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: %s: unexpected arguments %q", errUsage, fs.Name(), fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for _, name := range required {
		if !set[name] {
			return fmt.Errorf("%w: %s needs -%s", errUsage, fs.Name(), name)
		}
	}
	return nil
}

func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

func keygen(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("keygen", stderr)
	out := fs.String("out", "", "key file to create (PEM PKCS#8, mode 0600); must not exist")
	if err := parse(fs, args, "out"); err != nil {
		return err
	}
	id, err := membership.CreateIdentity(*out)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, id.ID)
	return nil
}

func subnet(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("subnet", stderr)
	n := fs.Int("n", 4, "number of nodes")
	dir := fs.String("dir", "", "directory to create the subnet in")
	basePort := fs.Int("base-port", 7000, "UDP port of node 0; node i listens on base-port+i")
	host := fs.String("host", "127.0.0.1", "host every node listens on")
	channels := fs.String("channels", "blocks", "comma-separated channel names")
	if err := parse(fs, args, "dir"); err != nil {
		return err
	}
	if *n < 1 || *basePort < 1 || *basePort+*n-1 > 65535 {
		return fmt.Errorf("%w: subnet: need n >= 1 and ports within 1..65535", errUsage)
	}
	registry := filepath.Join(*dir, "registry.json")
	if _, err := os.Stat(registry); err == nil {
		return fmt.Errorf("subnet: %s exists; refusing to overwrite a subnet", registry)
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		return fmt.Errorf("subnet: %w", err)
	}
	var members []membership.Member
	for i := range *n {
		key := fmt.Sprintf("node-%d.key", i)
		id, err := membership.CreateIdentity(filepath.Join(*dir, key))
		if err != nil {
			return fmt.Errorf("subnet: node %d: %w", i, err)
		}
		addr := fmt.Sprintf("%s:%d", *host, *basePort+i)
		members = append(members, id.Member(addr))
		cfg := nodeconfig.Config{IdentityKey: key, Listen: addr, Registry: "registry.json", Channels: strings.Split(*channels, ",")}
		if err := cfg.Save(filepath.Join(*dir, fmt.Sprintf("node-%d.json", i))); err != nil {
			return fmt.Errorf("subnet: node %d: %w", i, err)
		}
		fmt.Fprintf(stdout, "node %d  %s  %s\n", i, id.ID, addr)
	}
	r, err := membership.NewRegistryFile(members...)
	if err != nil {
		return fmt.Errorf("subnet: %w", err)
	}
	return membership.WriteRegistryFile(registry, r)
}

// editRegistry loads the registry, applies fn and writes the new version.
func editRegistry(path string, stdout io.Writer, fn func(*membership.RegistryFile) error) error {
	r, err := membership.ReadRegistryFile(path)
	if err != nil {
		return err
	}
	if err := fn(r); err != nil {
		return fmt.Errorf("registry %s: %w", path, err)
	}
	if err := membership.WriteRegistryFile(path, r); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "registry %s: now version %d\n", path, r.Version)
	return nil
}

func add(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("add", stderr)
	reg := fs.String("registry", "", "registry file")
	key := fs.String("key", "", "the new member's key file")
	addr := fs.String("addr", "", "the member's UDP host:port")
	replace := fs.String("replace", "", "NodeID of a member this key replaces (key rotation)")
	if err := parse(fs, args, "registry", "key", "addr"); err != nil {
		return err
	}
	id, err := membership.LoadIdentity(*key)
	if err != nil {
		return err
	}
	m := id.Member(*addr)
	return editRegistry(*reg, stdout, func(r *membership.RegistryFile) error {
		if *replace == "" {
			return r.Put(m)
		}
		old, err := membership.ParseNodeID(*replace)
		if err != nil {
			return fmt.Errorf("-replace: %w", err)
		}
		return r.Replace(old, m)
	})
}

func remove(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("remove", stderr)
	reg := fs.String("registry", "", "registry file")
	node := fs.String("node", "", "NodeID to remove")
	if err := parse(fs, args, "registry", "node"); err != nil {
		return err
	}
	id, err := membership.ParseNodeID(*node)
	if err != nil {
		return fmt.Errorf("-node: %w", err)
	}
	return editRegistry(*reg, stdout, func(r *membership.RegistryFile) error { return r.Remove(id) })
}

func oldest(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("oldest", stderr)
	reg := fs.String("registry", "", "registry file")
	v := fs.Uint64("version", 0, "oldest registry version still in use")
	if err := parse(fs, args, "registry", "version"); err != nil {
		return err
	}
	return editRegistry(*reg, stdout, func(r *membership.RegistryFile) error { return r.AdvanceOldest(*v) })
}

func show(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("show", stderr)
	reg := fs.String("registry", "", "registry file")
	if err := parse(fs, args, "registry"); err != nil {
		return err
	}
	r, err := membership.ReadRegistryFile(*reg)
	if err != nil {
		return err
	}
	snap, err := r.Snapshot()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "version %d, oldest version in use %d, %d member(s) in force\n", r.Version, r.EffectiveOldest(), snap.Len())
	listed := map[membership.NodeID]bool{}
	for _, e := range r.Members {
		if id, err := membership.ParseNodeID(e.NodeID); err == nil {
			listed[id] = true
		}
	}
	for _, id := range snap.IDs() {
		m, _ := snap.Member(id)
		note := ""
		if !listed[id] {
			note = "  (kept from an older version in use)"
		}
		fmt.Fprintf(stdout, "%s  %s%s\n", id, m.Addr, note)
	}
	return nil
}
