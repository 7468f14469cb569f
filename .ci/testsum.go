//go:build ignore

// testsum reads `go test -json` on standard input and prints what plain
// `go test` would (package results, and the full output of every failing
// test), then a closing line "tests: N passed, N failed, N skipped" counting
// every test, subtest and fuzz seed across all packages. A package that
// failed without a failing test (a build error, a crash outside a test) is
// counted as one failure. Lines that are not JSON are printed as they are.
// It exits 1 if anything failed.
//
// It is run with `go run .ci/testsum.go`; the build tag keeps it out of the
// module's packages.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
)

type event struct {
	Action     string
	Package    string
	ImportPath string
	Test       string
	Output     string
}

func main() {
	var passed, failed, skipped int
	buffered := map[string][]string{} // test output held until its result
	testFailed := map[string]bool{}   // packages with a failing test
	var failedPkgs []string           // packages whose build or run failed, in order
	pkgFailed := map[string]bool{}
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()

	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 64<<20)
	for in.Scan() {
		line := in.Bytes()
		var e event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil {
			fmt.Fprintln(out, string(line))
			continue
		}
		key := e.Package + " " + e.Test
		switch {
		case e.Action == "build-output":
			fmt.Fprint(out, e.Output)
		case e.Action == "build-fail":
			// ImportPath names the test variant, "pkg [pkg.test]".
			pkg, _, _ := strings.Cut(e.ImportPath, " ")
			if !pkgFailed[pkg] {
				pkgFailed[pkg] = true
				failedPkgs = append(failedPkgs, pkg)
			}
		case e.Test == "" && e.Action == "output":
			// The test binary runs in verbose mode under -json; its bare
			// PASS line is noise that plain go test does not print.
			if e.Output != "PASS\n" {
				fmt.Fprint(out, e.Output)
			}
		case e.Test == "" && e.Action == "fail":
			if !pkgFailed[e.Package] {
				pkgFailed[e.Package] = true
				failedPkgs = append(failedPkgs, e.Package)
			}
		case e.Test == "":
		case e.Action == "output":
			buffered[key] = append(buffered[key], e.Output)
		case e.Action == "pass":
			passed++
			delete(buffered, key)
		case e.Action == "skip":
			skipped++
			delete(buffered, key)
		case e.Action == "fail":
			failed++
			testFailed[e.Package] = true
			fmt.Fprint(out, strings.Join(buffered[key], ""))
			delete(buffered, key)
		}
		out.Flush()
	}
	if err := in.Err(); err != nil {
		fmt.Fprintln(out, "testsum: reading go test output:", err)
		failed++
	}
	// Output of tests that never finished (the binary died under them).
	keys := make([]string, 0, len(buffered))
	for k := range buffered {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(out, "--- output of unfinished test %s\n%s", k, strings.Join(buffered[k], ""))
	}
	for _, p := range failedPkgs {
		if !testFailed[p] {
			failed++
		}
	}
	if len(failedPkgs) > 0 {
		fmt.Fprintf(out, "\nfailed packages:\n  %s\n", strings.Join(failedPkgs, "\n  "))
	}
	fmt.Fprintf(out, "\ntests: %d passed, %d failed, %d skipped\n", passed, failed, skipped)
	out.Flush()
	if failed > 0 || len(failedPkgs) > 0 {
		os.Exit(1)
	}
}
