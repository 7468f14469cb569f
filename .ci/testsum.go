//go:build ignore

// testsum runs the project's `go test` commands and decides whether they
// passed. It exists because a pipe into a summariser loses go's exit
// status, and a summary that only counts test events reads "0 failed" when
// go never got as far as running a test (go.mod asks for a newer Go, a
// go.mod syntax error, -race without cgo, a bad flag, a run cut short).
//
//	go run .ci/testsum.go [-j N] [env NAME=value ...] go test ARGS... [--- [env NAME=value ...] go test ARGS...]...
//
// Each command runs with stdout and stderr on one pipe; -json is added when
// missing. With -j N up to N commands run at once, started in the order
// given; each one's output is still printed whole and in that order (the
// first streams as it comes, the others follow when those before them
// are done), ending with how long it took. testsum prints what plain `go test` would (package
// results, the output of every failing test and a command that replays
// it), then a closing line "tests: N passed, N failed, N skipped" counting
// every test, subtest and fuzz seed of all commands, followed by
// ", N problem(s)" when something other than a test went wrong.
//
// A command fails CI when
//   - a test failed, or a package failed without a failing test (a build
//     or setup failure, a crash outside a test, a bad test flag);
//   - go exited non-zero and no failing test or package explains it (its
//     own error, e.g. "go: go.mod requires go >= ...", is quoted);
//   - it passed or failed no test at all (skips alone do not count);
//   - a package or test started and never reported a result (the binary
//     died, or the output was cut);
//   - it names tests with -run and some |-alternative of the pattern
//     (TestA|TestB/sub) matched, to its full depth, no test that passed or
//     failed: a renamed test, or a subtest that no longer exists under a
//     parent that still passes.
//
// Nothing here knows the project's test names, so new tests need no change.
// The build tag keeps this file out of the module's packages; its test is
// run with `go test .ci/testsum.go .ci/testsum_test.go`.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

func main() {
	args, jobs := os.Args[1:], 1
	if len(args) >= 2 && args[0] == "-j" {
		n, err := strconv.Atoi(args[1])
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "testsum: -j %q: want a positive number\n", args[1])
			os.Exit(2)
		}
		args, jobs = args[2:], n
	}
	specs, err := parseSpecs(args)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testsum:", err)
		os.Exit(2)
	}
	module := modulePath("go.mod")
	os.Exit(finish(os.Stdout, runAll(os.Stdout, specs, jobs, func(w io.Writer, s spec) *result {
		return execute(w, s, module)
	})))
}

// runAll runs up to jobs commands at once, in the order given, and prints
// their output to out whole and in that order.
func runAll(out io.Writer, specs []spec, jobs int, run func(io.Writer, spec) *result) []*result {
	results := make([]*result, len(specs))
	sinks := make([]*sink, len(specs))
	for i := range sinks {
		sinks[i] = newSink()
	}
	printed := make(chan struct{})
	go func() {
		for _, k := range sinks {
			k.drainTo(out)
		}
		close(printed)
	}()
	slots := make(chan struct{}, jobs)
	for i, s := range specs {
		slots <- struct{}{}
		go func() {
			defer func() { <-slots }()
			defer sinks[i].close()
			start := time.Now()
			fmt.Fprintf(sinks[i], "==> %s\n", s)
			results[i] = run(sinks[i], s)
			fmt.Fprintf(sinks[i], "==> took %v: %s\n", time.Since(start).Round(time.Second), s)
		}()
	}
	<-printed
	return results
}

// sink holds one command's output until the printer gets to it; writes
// never wait for the printer.
type sink struct {
	mu     sync.Mutex
	more   *sync.Cond
	buf    []byte
	closed bool
}

func newSink() *sink {
	k := &sink{}
	k.more = sync.NewCond(&k.mu)
	return k
}

func (k *sink) Write(p []byte) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.buf = append(k.buf, p...)
	k.more.Broadcast()
	return len(p), nil
}

func (k *sink) close() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.closed = true
	k.more.Broadcast()
}

// drainTo copies what is written to k to out until k is closed.
func (k *sink) drainTo(out io.Writer) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for {
		for len(k.buf) == 0 && !k.closed {
			k.more.Wait()
		}
		if len(k.buf) == 0 {
			return
		}
		data := k.buf
		k.buf = nil
		k.mu.Unlock()
		out.Write(data)
		k.mu.Lock()
	}
}

// spec is one go test command: extra environment, and the arguments after
// "go test".
type spec struct {
	env  []string
	args []string
}

func (s spec) String() string { return commandLine(s.env, s.args) }

// parseSpecs splits the command line at "---" into go test commands.
func parseSpecs(argv []string) ([]spec, error) {
	if len(argv) == 0 {
		return nil, errors.New("usage: testsum [env NAME=value ...] go test ARGS... [--- ...]")
	}
	var specs []spec
	for {
		cmd, rest, more := argv, []string(nil), false
		if i := slices.Index(argv, "---"); i >= 0 {
			cmd, rest, more = argv[:i], argv[i+1:], true
		}
		s, err := parseSpec(cmd)
		if err != nil {
			return nil, err
		}
		specs = append(specs, s)
		if !more {
			return specs, nil
		}
		argv = rest
	}
}

func parseSpec(cmd []string) (spec, error) {
	var s spec
	if len(cmd) > 0 && cmd[0] == "env" {
		cmd = cmd[1:]
	}
	for len(cmd) > 0 && strings.Contains(cmd[0], "=") && !strings.HasPrefix(cmd[0], "-") {
		s.env = append(s.env, cmd[0])
		cmd = cmd[1:]
	}
	if len(cmd) < 2 || cmd[0] != "go" || cmd[1] != "test" {
		return s, fmt.Errorf("not a go test command: %q", strings.Join(cmd, " "))
	}
	s.args = slices.Clone(cmd[2:])
	if s.flag("json") == "" {
		s.args = append([]string{"-json"}, s.args...)
	}
	return s, nil
}

// valueFlags are the go test and build flags that take the next argument
// as their value when written without "=".
var valueFlags = map[string]bool{
	"run": true, "skip": true, "bench": true, "benchtime": true, "count": true, "cpu": true,
	"timeout": true, "parallel": true, "p": true, "tags": true, "ldflags": true, "gcflags": true,
	"asmflags": true, "coverprofile": true, "covermode": true, "coverpkg": true, "o": true,
	"exec": true, "fuzz": true, "fuzztime": true, "fuzzminimizetime": true, "list": true,
	"shuffle": true, "vet": true, "mod": true, "modfile": true, "overlay": true, "pkgdir": true,
	"toolexec": true, "C": true, "outputdir": true, "memprofile": true, "cpuprofile": true,
	"blockprofile": true, "mutexprofile": true, "trace": true, "memprofilerate": true,
	"blockprofilerate": true, "mutexprofilefraction": true,
}

// split sorts the arguments into flags (a value-taking flag's value stays
// with it, "-run X" becoming one "-run=X" entry), package patterns, and
// what follows -args.
func (s spec) split() (flags, pkgs, rest []string) {
	for i := 0; i < len(s.args); i++ {
		a := s.args[i]
		if a == "-args" || a == "--args" {
			return flags, pkgs, s.args[i:]
		}
		if !strings.HasPrefix(a, "-") {
			pkgs = append(pkgs, a)
			continue
		}
		name := strings.TrimLeft(a, "-")
		if !strings.Contains(name, "=") && valueFlags[name] && i+1 < len(s.args) {
			i++
			a = "-" + name + "=" + s.args[i]
		}
		flags = append(flags, a)
	}
	return flags, pkgs, nil
}

// flag is the value of the last flag called name ("true" for a boolean
// flag given without a value), or "" when it is absent.
func (s spec) flag(name string) string {
	flags, _, _ := s.split()
	v := ""
	for _, f := range flags {
		n, value, ok := strings.Cut(strings.TrimLeft(f, "-"), "=")
		if n == name || n == "test."+name {
			v = value
			if !ok {
				v = "true"
			}
		}
	}
	return v
}

// runPattern is the -run value, or "" when the command does not name tests.
func (s spec) runPattern() string { return s.flag("run") }

// replay is the command that runs test (a full name, "" for the whole
// package) of pkg alone, with the same environment and flags.
func (s spec) replay(module, pkg, test string) string {
	flags, _, rest := s.split()
	var args []string
	for _, f := range flags {
		name, _, _ := strings.Cut(strings.TrimLeft(f, "-"), "=")
		if name == "json" || name == "run" || name == "test.run" {
			continue
		}
		args = append(args, f)
	}
	run := s.runPattern()
	if test != "" {
		parts := strings.Split(test, "/")
		for i, p := range parts {
			parts[i] = "^" + regexp.QuoteMeta(p) + "$"
		}
		run = strings.Join(parts, "/")
	}
	if run != "" {
		args = append(args, "-run="+run)
	}
	if rel, ok := strings.CutPrefix(pkg, module); ok && module != "" && (rel == "" || rel[0] == '/') {
		pkg = "." + rel
	}
	args = append(append(args, pkg), rest...)
	return commandLine(s.env, args)
}

func commandLine(env, args []string) string {
	var b strings.Builder
	for _, e := range env {
		name, value, _ := strings.Cut(e, "=")
		b.WriteString(name + "=" + shellQuote(value) + " ")
	}
	b.WriteString("go test")
	for _, a := range args {
		b.WriteString(" " + shellQuote(a))
	}
	return b.String()
}

var shellSafe = regexp.MustCompile(`^[A-Za-z0-9_./=:,+@%^-]+$`)

func shellQuote(s string) string {
	if shellSafe.MatchString(s) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// modulePath reads the module path from go.mod, for short replay commands.
func modulePath(gomod string) string {
	data, err := os.ReadFile(gomod)
	if err != nil {
		return ""
	}
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "module "); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`)
		}
	}
	return ""
}

// execute runs one command and summarises its output as it arrives.
func execute(out io.Writer, s spec, module string) *result {
	cmd := exec.Command("go", append([]string{"test"}, s.args...)...)
	cmd.Env = append(os.Environ(), s.env...)
	pr, pw, err := os.Pipe()
	if err != nil {
		r := newResult(s, module)
		r.problem("cannot run %s: %v", s, err)
		return r
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	startErr := cmd.Start()
	pw.Close()
	if startErr != nil {
		pr.Close()
		r := newResult(s, module)
		r.problem("cannot run %s: %v", s, startErr)
		return r
	}
	return summarise(out, s, module, pr, func() int {
		err := cmd.Wait()
		pr.Close()
		if err == nil {
			return 0
		}
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return exit.ExitCode() // -1 when killed by a signal
		}
		return -1
	})
}

type event struct {
	Action      string
	Package     string
	ImportPath  string
	Test        string
	Output      string
	FailedBuild string
}

// result is what one command did.
type result struct {
	spec   spec
	module string

	passed, failed, skipped int
	problems                []string
	replays                 []string

	pkgs       []string          // packages in the order they started
	pkgEnd     map[string]string // package → its final action
	pkgFail    []string          // failed packages, in order
	buildFail  map[string]bool   // packages whose build or setup failed
	testFailed map[string]bool   // packages with a failing test

	running     map[string]bool     // tests started and not finished, by key
	output      map[string][]string // output of running tests
	failedBelow map[string]bool     // tests with a failed subtest, by key
	ran         map[string]bool     // names of tests that passed or failed
	skippedOnly map[string]bool     // names of tests that only skipped
	unfinished  map[string]bool     // names of tests that started and have not ended
	goErrors    []string            // the last lines that were not JSON
}

func newResult(s spec, module string) *result {
	return &result{
		spec: s, module: module,
		pkgEnd: map[string]string{}, buildFail: map[string]bool{}, testFailed: map[string]bool{},
		running: map[string]bool{}, output: map[string][]string{}, failedBelow: map[string]bool{},
		ran: map[string]bool{}, skippedOnly: map[string]bool{}, unfinished: map[string]bool{},
	}
}

func (r *result) problem(format string, args ...any) {
	r.problems = append(r.problems, fmt.Sprintf(format, args...))
}

const keptGoErrors = 20

// summarise reads one command's output from in, prints it to out, and
// judges it once wait returns the command's exit status.
func summarise(out io.Writer, s spec, module string, in io.Reader, wait func() int) *result {
	r := newResult(s, module)
	w := bufio.NewWriter(out)
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		r.line(w, sc.Bytes())
		w.Flush()
	}
	readErr := sc.Err()
	if readErr != nil {
		// Drain so that the command is not blocked on a full pipe.
		io.Copy(io.Discard, in)
	}
	status := wait()
	if readErr != nil {
		r.problem("reading the output of %s: %v", s, readErr)
	}
	r.judge(w, status)
	w.Flush()
	return r
}

func (r *result) line(w io.Writer, line []byte) {
	var e event
	if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil || e.Action == "" {
		fmt.Fprintf(w, "%s\n", line)
		if len(r.goErrors) == keptGoErrors {
			r.goErrors = r.goErrors[1:]
		}
		r.goErrors = append(r.goErrors, string(line))
		return
	}
	key := e.Package + "\x00" + e.Test
	switch {
	case e.Action == "build-output":
		fmt.Fprint(w, e.Output)
	case e.Action == "build-fail":
		// ImportPath names the test variant, "pkg [pkg.test]".
		pkg, _, _ := strings.Cut(e.ImportPath, " ")
		r.buildFail[pkg] = true
	case e.Test == "":
		r.packageEvent(w, e)
	case e.Action == "run":
		r.running[key] = true
		r.unfinished[e.Test] = true
	case e.Action == "output":
		if r.running[key] {
			r.output[key] = append(r.output[key], e.Output)
		} else {
			fmt.Fprint(w, e.Output)
		}
	case e.Action == "pass" || e.Action == "fail" || e.Action == "skip":
		r.testEnd(w, e, key)
	}
}

func (r *result) packageEvent(w io.Writer, e event) {
	switch e.Action {
	case "start":
		if _, seen := r.pkgEnd[e.Package]; !seen {
			r.pkgs = append(r.pkgs, e.Package)
			r.pkgEnd[e.Package] = ""
		}
	case "output":
		// Under -json the test binary runs verbose; its bare PASS line is
		// noise plain go test does not print.
		if e.Output != "PASS\n" {
			fmt.Fprint(w, e.Output)
		}
	case "pass", "skip", "fail":
		if _, seen := r.pkgEnd[e.Package]; !seen {
			r.pkgs = append(r.pkgs, e.Package)
		}
		r.pkgEnd[e.Package] = e.Action
		if e.FailedBuild != "" {
			r.buildFail[e.Package] = true
		}
		r.endPackage(w, e.Package, e.Action == "fail")
	}
}

// endPackage shows the tests of pkg that never finished (the binary died
// under them) and counts a package that failed without a failing test (a
// build or setup failure, a crash outside a test, a bad flag) as one
// failure.
func (r *result) endPackage(w io.Writer, pkg string, failed bool) {
	for _, k := range slices.Sorted(maps.Keys(r.running)) {
		if p, test, _ := strings.Cut(k, "\x00"); p == pkg {
			fmt.Fprintf(w, "--- output of unfinished test %s in %s\n%s", test, pkg, strings.Join(r.output[k], ""))
			r.problem("test %s in %s started but never finished", test, pkg)
			delete(r.running, k)
			delete(r.output, k)
		}
	}
	if !failed || slices.Contains(r.pkgFail, pkg) {
		return
	}
	r.pkgFail = append(r.pkgFail, pkg)
	if r.testFailed[pkg] {
		return
	}
	r.failed++
	if r.buildFail[pkg] {
		fmt.Fprintf(w, "build failed: %s\n", pkg)
		return
	}
	cmd := r.spec.replay(r.module, pkg, "")
	fmt.Fprintf(w, "    replay: %s\n", cmd)
	r.replays = append(r.replays, cmd)
}

func (r *result) testEnd(w io.Writer, e event, key string) {
	delete(r.running, key)
	delete(r.unfinished, e.Test)
	out := r.output[key]
	delete(r.output, key)
	switch e.Action {
	case "pass":
		r.passed++
		r.ran[e.Test] = true
	case "skip":
		r.skipped++
		if !r.ran[e.Test] {
			r.skippedOnly[e.Test] = true
		}
	case "fail":
		r.failed++
		r.ran[e.Test] = true
		r.testFailed[e.Package] = true
		fmt.Fprint(w, strings.Join(out, ""))
		if !r.failedBelow[key] {
			// The innermost failure is the one worth replaying; its
			// parents fail because of it.
			cmd := r.spec.replay(r.module, e.Package, e.Test)
			fmt.Fprintf(w, "    replay: %s\n", cmd)
			r.replays = append(r.replays, cmd)
		}
		for t := e.Test; strings.Contains(t, "/"); {
			t = t[:strings.LastIndex(t, "/")]
			r.failedBelow[e.Package+"\x00"+t] = true
		}
	}
	if e.Action != "skip" {
		delete(r.skippedOnly, e.Test)
	}
}

// judge adds the problems that only the whole output and the exit status
// reveal.
func (r *result) judge(w io.Writer, status int) {
	for _, pkg := range slices.Sorted(maps.Keys(r.buildFail)) {
		// A build failure whose package result never came (output cut).
		r.endPackage(w, pkg, true)
	}
	for _, pkg := range r.pkgs {
		if r.pkgEnd[pkg] == "" {
			r.problem("package %s started but never reported a result (the test binary died or the output was cut)", pkg)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(r.running)) {
		pkg, _, _ := strings.Cut(k, "\x00")
		r.endPackage(w, pkg, false)
	}
	explained := r.failed > 0
	switch {
	case status < 0:
		r.problem("go test was killed (no exit status)%s", r.quoteGoErrors())
	case status != 0 && !explained:
		r.problem("go test exited with status %d, but no test or package failed%s", status, r.quoteGoErrors())
	}
	if r.passed+r.failed == 0 {
		what := "no test ran"
		if p := r.spec.runPattern(); p != "" {
			what = fmt.Sprintf("-run %s: no test ran", shellQuote(p))
		}
		r.problem("%s%s", what, r.quoteGoErrors())
	} else if p := r.spec.runPattern(); p != "" {
		for _, miss := range r.unmatched(p) {
			r.problem("-run %s: %s", shellQuote(p), miss)
		}
	}
}

func (r *result) quoteGoErrors() string {
	if len(r.goErrors) == 0 {
		return ""
	}
	return "; go said:\n        " + strings.Join(r.goErrors, "\n        ")
}

// unmatched checks a -run pattern the way the testing package applies it:
// alternatives at unbracketed "|", each split at unbracketed "/" into one
// regexp per level of a test's name. Every alternative must match, at its
// full depth, at least one test that passed or failed; a test that only
// skipped does not count.
func (r *result) unmatched(pattern string) []string {
	var missing []string
	for _, alt := range splitRun(pattern) {
		levels := make([]*regexp.Regexp, len(alt))
		for i, l := range alt {
			re, err := regexp.Compile(strings.ReplaceAll(l, " ", "_"))
			if err != nil {
				return []string{fmt.Sprintf("invalid pattern: %v", err)}
			}
			levels[i] = re
		}
		if !matchesAny(levels, r.ran) {
			if matchesAny(levels, r.unfinished) {
				// It matched a test that never finished, a problem
				// reported already.
				continue
			}
			what := "matched no test"
			if matchesAny(levels, r.skippedOnly) {
				what = "matched only skipped tests"
			}
			missing = append(missing, fmt.Sprintf("%q %s", strings.Join(alt, "/"), what))
		}
	}
	return missing
}

func matchesAny(levels []*regexp.Regexp, names map[string]bool) bool {
	for name := range names {
		parts := strings.Split(name, "/")
		if len(parts) < len(levels) {
			continue
		}
		ok := true
		for i, re := range levels {
			ok = ok && re.MatchString(parts[i])
		}
		if ok {
			return true
		}
	}
	return false
}

// splitRun splits a -run pattern into alternatives and each into levels,
// as the testing package does (match.go, splitRegexp): "|" and "/" split
// only outside brackets and parentheses, and a backslash escapes.
func splitRun(s string) [][]string {
	var alts [][]string
	var levels []string
	class, paren, start := 0, 0, 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '[':
			class++
		case ']':
			class = max(class-1, 0) // an unmatched ']' is legal
		case '(':
			if class == 0 {
				paren++
			}
		case ')':
			if class == 0 {
				paren--
			}
		case '\\':
			i++
		case '/', '|':
			if class == 0 && paren == 0 {
				levels = append(levels, s[start:i])
				if s[i] == '|' {
					alts, levels = append(alts, levels), nil
				}
				start = i + 1
			}
		}
	}
	return append(alts, append(levels, s[start:]))
}

// finish prints the problems, the replay commands and the closing line,
// and returns the exit status.
func finish(out io.Writer, results []*result) int {
	var passed, failed, skipped int
	var problems, replays, failedPkgs []string
	for _, r := range results {
		passed += r.passed
		failed += r.failed
		skipped += r.skipped
		for _, p := range r.problems {
			problems = append(problems, fmt.Sprintf("%s\n      in: %s", p, r.spec))
		}
		replays = append(replays, r.replays...)
		for _, p := range r.pkgFail {
			if !slices.Contains(failedPkgs, p) {
				failedPkgs = append(failedPkgs, p)
			}
		}
	}
	if len(failedPkgs) > 0 {
		fmt.Fprintf(out, "\nfailed packages:\n  %s\n", strings.Join(failedPkgs, "\n  "))
	}
	if len(replays) > 0 {
		fmt.Fprintf(out, "\nreplay the failures:\n  %s\n", strings.Join(replays, "\n  "))
	}
	if len(problems) > 0 {
		fmt.Fprintf(out, "\nproblems (each fails the run):\n  - %s\n", strings.Join(problems, "\n  - "))
	}
	fmt.Fprintf(out, "\ntests: %d passed, %d failed, %d skipped", passed, failed, skipped)
	switch len(problems) {
	case 0:
	case 1:
		fmt.Fprint(out, ", 1 problem")
	default:
		fmt.Fprintf(out, ", %d problems", len(problems))
	}
	fmt.Fprintln(out)
	if failed > 0 || len(problems) > 0 {
		return 1
	}
	return 0
}
