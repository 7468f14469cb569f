package broadcast_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The core must stay free of I/O: everything it imports, directly or not,
// must come from the standard library, and not from its networking or
// logging packages either.
func TestCoreImportsOnlyPureStandardLibrary(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, line := range strings.Fields(string(out)) {
		if line != "github.com/abcast/abcast/broadcast" {
			t.Errorf("broadcast depends on non-standard package %s", line)
		}
	}
	out, err = exec.Command("go", "list", "-f", `{{join .Imports "\n"}}`, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	banned := map[string]bool{"net": true, "os": true, "log": true, "log/slog": true, "math/rand": true,
		"math/rand/v2": true, "crypto/rand": true, "sync": true, "syscall": true}
	for _, imp := range strings.Fields(string(out)) {
		if banned[imp] || strings.HasPrefix(imp, "net/") {
			t.Errorf("broadcast imports %s; the core must not do I/O, logging, locking or draw randomness", imp)
		}
	}
}
