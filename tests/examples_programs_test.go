package tests

import (
	"bytes"
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// runExample runs `go run ./examples/<name> args...` from the module root
// and returns its standard output; a non-zero exit or a timeout fails the
// test with both outputs.
func runExample(t *testing.T, name string, within time.Duration, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", append([]string{"run", "./examples/" + name}, args...)...)
	cmd.Dir = ".."
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("go run ./examples/%s %s: %v\nstdout:\n%s\nstderr:\n%s", name, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// The protoactor user's replica: four nodes, each a consensus actor under
// its own supervisor running the blocks and signatures channels as its
// children, finalizing heights on signature quorums and asking the next
// node's consensus actor for its height over the remote, on the same
// connections.
func TestExamplesConsensusFinalizesEveryHeight(t *testing.T) {
	out := runExample(t, "consensus", 3*time.Minute, "-heights", "8", "-timeout", "90s")
	if !strings.Contains(out, "PASS: every node finalized 8 heights") {
		t.Fatalf("no PASS line:\n%s", out)
	}
	if !strings.Contains(out, "says it is at") {
		t.Fatalf("no answer from a remote replica:\n%s", out)
	}
}

// protoactor-go's own remote examples, ported to abcast nodes: a chat
// server and clients (JSON-serialized Go structs), remote watch (a stop,
// then a node that goes away), remote spawn (a registered kind, request,
// name clash, unknown kind, stop by the spawner).
func TestExamplesRemotePorts(t *testing.T) {
	for _, tc := range []struct{ name, pass string }{
		{"remote-chat", "PASS: each of 3 clients heard all 7 lines"},
		{"remote-watch", "PASS"},
		{"remote-spawn", "PASS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := runExample(t, tc.name, 2*time.Minute)
			if !strings.Contains(out, tc.pass) {
				t.Fatalf("no %q in the output:\n%s", tc.pass, out)
			}
		})
	}
}
