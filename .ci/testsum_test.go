//go:build ignore

// Run with: go test .ci/testsum.go .ci/testsum_test.go
//
// The streams in testdata/ were recorded from real go test commands by
// testdata/record.sh; the exit statuses below are the ones those commands
// had. Streams that go cannot be made to produce on demand (cut output) are
// made from the recorded ones.

package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

func recorded(t *testing.T, name string) string {
	t.Helper()
	_, self, _, _ := runtime.Caller(0)
	data, err := os.ReadFile(filepath.Join(filepath.Dir(self), "testdata", name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// firstLines keeps the first n lines of s: output cut short.
func firstLines(s string, n int) string {
	lines := strings.SplitAfter(s, "\n")
	return strings.Join(lines[:min(n, len(lines))], "")
}

type run struct {
	cmd    string // go test command line, split at spaces
	stream string
	exit   int
}

// check feeds the runs to the summariser as if the commands had printed
// the streams and exited with the statuses, and returns its exit status
// and everything it printed.
func check(t *testing.T, runs ...run) (int, string) {
	t.Helper()
	var out bytes.Buffer
	var results []*result
	for _, r := range runs {
		s, err := parseSpec(strings.Fields(r.cmd))
		if err != nil {
			t.Fatal(err)
		}
		results = append(results, summarise(&out, s, "example.com/rec", strings.NewReader(r.stream), func() int { return r.exit }))
	}
	return finish(&out, results), out.String()
}

func TestSummariser(t *testing.T) {
	pass := recorded(t, "pass")
	cases := []struct {
		name   string
		runs   []run
		status int
		want   []string // in the output, in this order
		absent []string
	}{
		{
			name:   "a passing run passes",
			runs:   []run{{"go test -count=1 ./ok", pass, 0}},
			status: 0,
			want:   []string{"ok  \texample.com/rec/ok", "tests: 3 passed, 0 failed, 1 skipped\n"},
			absent: []string{"problems", "=== RUN", "in sub", "PASS\n"},
		},
		{
			name:   "a failing test fails, with its output and a replay command for the innermost failure",
			runs:   []run{{"ABCAST_SEED=42 go test -count=1 ./ok ./bad", recorded(t, "testfail"), 1}},
			status: 1,
			want: []string{"seed 42", "boom",
				"replay: ABCAST_SEED=42 go test -count=1 '-run=^TestFails$/^n=13$/^loss=1%$' ./bad\n",
				"failed packages:\n  example.com/rec/bad", "tests: 4 passed, 2 failed, 1 skipped\n"},
			absent: []string{"problems", "-run=^TestFails$ ./bad"},
		},
		{
			name:   "a build failure fails",
			runs:   []run{{"go test -count=1 ./ok ./build", recorded(t, "buildfail"), 1}},
			status: 1,
			want:   []string{"undefined: undefined", "build failed: example.com/rec/build", "tests: 3 passed, 1 failed, 1 skipped\n"},
		},
		{
			name:   "a build failure whose package result was cut off still fails",
			runs:   []run{{"go test -count=1 ./ok ./build", firstLines(recorded(t, "buildfail"), 3), 1}},
			status: 1,
			want:   []string{"build failed: example.com/rec/build", "tests: 0 passed, 1 failed, 0 skipped\n"},
		},
		{
			name:   "a test binary that exits under a test fails, showing what the test printed",
			runs:   []run{{"go test -count=1 ./crash", recorded(t, "crash"), 1}},
			status: 1,
			want: []string{"FAIL\texample.com/rec/crash", "output of unfinished test TestExits", "about to exit", "replay: go test -count=1 ./crash",
				"test TestExits in example.com/rec/crash started but never finished", "tests: 0 passed, 1 failed, 0 skipped, 1 problem\n"},
		},
		{
			name:   "a test timeout fails",
			runs:   []run{{"go test -count=1 -timeout 2s ./hang", recorded(t, "timeout"), 1}},
			status: 1,
			want:   []string{"panic: test timed out after 2s", "h_test.go:9", "replay: go test -count=1 -timeout=2s ./hang", "TestHangs in example.com/rec/hang started but never finished"},
		},
		{
			name:   "a named run that times out names the unfinished test, not an unmatched pattern",
			runs:   []run{{"go test -count=1 -timeout 2s -run ^TestHangs$ ./hang", recorded(t, "timeout"), 1}},
			status: 1,
			want:   []string{"TestHangs in example.com/rec/hang started but never finished"},
			absent: []string{"matched no test"},
		},
		{
			name:   "a bad test flag fails",
			runs:   []run{{"go test -count=1 ./ok -args -bogus", recorded(t, "badtestflag"), 1}},
			status: 1,
			want:   []string{"flag provided but not defined: -bogus", "replay: go test -count=1 ./ok -args -bogus", "tests: 0 passed, 1 failed, 0 skipped\n"},
		},
		{
			name:   "a bad go test flag fails",
			runs:   []run{{"go test -count=1 -timeout=banana ./ok", recorded(t, "badgoflag"), 2}},
			status: 1,
			want:   []string{"go test exited with status 2, but no test or package failed", `invalid value "banana" for flag -timeout`, "no test ran"},
		},
		{
			name:   "-race without cgo fails",
			runs:   []run{{"CGO_ENABLED=0 go test -race -count=1 ./ok", recorded(t, "racenocgo"), 2}},
			status: 1,
			want:   []string{"exited with status 2", "go: -race requires cgo", "no test ran", "in: CGO_ENABLED=0 go test -json -race -count=1 ./ok"},
		},
		{
			name:   "a go.mod asking for a newer Go fails",
			runs:   []run{{"GOTOOLCHAIN=local go test -count=1 ./...", recorded(t, "newergo"), 1}},
			status: 1,
			want:   []string{"exited with status 1, but no test or package failed", "go: go.mod requires go >= 1.99.0", "no test ran", "0 passed, 0 failed, 0 skipped, 2 problems"},
		},
		{
			name:   "a go.mod syntax error fails",
			runs:   []run{{"go test -count=1 ./...", recorded(t, "gomodsyntax"), 1}},
			status: 1,
			want:   []string{"exited with status 1", "go.mod:4: unknown directive: requir", "no test ran"},
		},
		{
			name:   "empty output fails even with exit status 0",
			runs:   []run{{"go test -count=1 ./...", "", 0}},
			status: 1,
			want:   []string{"no test ran", "tests: 0 passed, 0 failed, 0 skipped, 1 problem"},
			absent: []string{"exited with status"},
		},
		{
			name:   "output cut inside a test fails",
			runs:   []run{{"go test -count=1 ./ok", firstLines(pass, 6), 0}},
			status: 1,
			want: []string{"output of unfinished test TestA/sub_one", "in sub",
				"package example.com/rec/ok started but never reported a result",
				"test TestA in example.com/rec/ok started but never finished"},
		},
		{
			name:   "output cut in the middle of a line fails",
			runs:   []run{{"go test -count=1 ./ok", pass[:len(pass)-20], 0}},
			status: 1,
			want:   []string{"package example.com/rec/ok started but never reported a result"},
		},
		{
			name:   "a go test killed by a signal fails even when every test passed",
			runs:   []run{{"go test -count=1 ./ok", pass, -1}},
			status: 1,
			want:   []string{"go test was killed"},
		},
		{
			name:   "a non-zero exit without any failure fails even when tests passed",
			runs:   []run{{"go test -count=1 ./ok", pass, 1}},
			status: 1,
			want:   []string{"go test exited with status 1, but no test or package failed"},
		},
		{
			name:   "a run of skipped tests only fails",
			runs:   []run{{"go test -count=1 ./ok", firstLines(pass, 0) + strings.Join(skipOnly(pass), ""), 0}},
			status: 1,
			want:   []string{"no test ran", "0 passed, 0 failed, 1 skipped"},
		},
		{
			name:   "a named run that matches no test fails",
			runs:   []run{{"go test -count=1 -run TestGone ./ok", recorded(t, "runnomatch"), 0}},
			status: 1,
			want:   []string{"testing: warning: no tests to run", "-run TestGone: no test ran"},
		},
		{
			name:   "a named run where one alternative matches no test fails",
			runs:   []run{{"go test -count=1 -run TestA|TestGone ./ok", recorded(t, "runpartial"), 0}},
			status: 1,
			want:   []string{`-run 'TestA|TestGone': "TestGone" matched no test`},
			absent: []string{`"TestA"`},
		},
		{
			name:   "a named subtest that matches nothing fails though its parent passed",
			runs:   []run{{"go test -count=1 -run TestA/gone ./ok", recorded(t, "runsubnomatch"), 0}},
			status: 1,
			want:   []string{`-run TestA/gone: "TestA/gone" matched no test`, "1 passed"},
		},
		{
			name:   "a named test that only skipped fails",
			runs:   []run{{"go test -count=1 -run TestA|TestSkip ./ok", recorded(t, "runskipped"), 0}},
			status: 1,
			want:   []string{`"TestSkip" matched only skipped tests`},
		},
		{
			name:   "a named run that matches every alternative passes",
			runs:   []run{{"go test -count=1 -run TestA/sub_one|TestA/sub_two ./ok", recorded(t, "runok"), 0}},
			status: 0,
			want:   []string{"tests: 3 passed, 0 failed, 0 skipped\n"},
			absent: []string{"problems"},
		},
		{
			name: "one bad command among good ones fails the whole, and the totals add up",
			runs: []run{
				{"go test -count=1 ./ok", pass, 0},
				{"GOTOOLCHAIN=local go test -count=1 -run TestA ./...", recorded(t, "newergo"), 1},
				{"go test -count=1 ./ok", pass, 0},
			},
			status: 1,
			want:   []string{"go.mod requires go >= 1.99.0", "in: GOTOOLCHAIN=local go test -json -count=1 -run TestA ./...", "tests: 6 passed, 0 failed, 2 skipped, 2 problems\n"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status, out := check(t, c.runs...)
			if status != c.status {
				t.Errorf("exit status %d, want %d", status, c.status)
			}
			rest := out
			for _, w := range c.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Errorf("output lacks %q (or has it out of order)", w)
					continue
				}
				rest = rest[i+len(w):]
			}
			for _, a := range c.absent {
				if strings.Contains(out, a) {
					t.Errorf("output has %q", a)
				}
			}
			if t.Failed() {
				t.Logf("output:\n%s", out)
			}
		})
	}
}

// skipOnly is the recorded passing stream without its passing tests.
func skipOnly(stream string) []string {
	var kept []string
	for _, l := range strings.SplitAfter(stream, "\n") {
		if !strings.Contains(l, `"Test":"TestA`) {
			kept = append(kept, l)
		}
	}
	return kept
}

func TestParseSpecs(t *testing.T) {
	specs, err := parseSpecs(strings.Fields("env A=1 B=x=y go test -race -run X ./a --- go test -json=true ./b -args -v"))
	if err != nil {
		t.Fatal(err)
	}
	if len(specs) != 2 {
		t.Fatalf("%d specs, want 2", len(specs))
	}
	if got, want := specs[0].String(), "A=1 B=x=y go test -json -race -run X ./a"; got != want {
		t.Errorf("first: %q, want %q", got, want)
	}
	if got, want := specs[1].String(), "go test -json=true ./b -args -v"; got != want {
		t.Errorf("second: %q, want %q (-json given, not added)", got, want)
	}
	if p := specs[0].runPattern(); p != "X" {
		t.Errorf("run pattern %q, want X", p)
	}
	if got, want := specs[1].replay("m", "m/b", "T/x y"), `go test '-run=^T$/^x y$' ./b -args -v`; got != want {
		t.Errorf("replay %q, want %q", got, want)
	}
	for _, bad := range []string{"", "go vet ./...", "A=1 go", "---", "go test ./a ---"} {
		if _, err := parseSpecs(strings.Fields(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestSplitRun(t *testing.T) {
	for in, want := range map[string]string{
		`A|B`:             "A ; B",
		`A/x|B/y/z`:       "A,x ; B,y,z",
		`(A|B)/x|C`:       "(A|B),x ; C",
		`[|/]x|y`:         "[|/]x ; y",
		`a\|b|c`:          `a\|b ; c`,
		`]|a`:             "] ; a",
		`^TestX$/^n=13$/`: "^TestX$,^n=13$,",
		``:                "",
	} {
		var alts []string
		for _, a := range splitRun(in) {
			alts = append(alts, strings.Join(a, ","))
		}
		if got := strings.Join(alts, " ; "); got != want {
			t.Errorf("splitRun(%q) = %q, want %q", in, got, want)
		}
	}
}

// With -j 2 the second command runs while the first is still going, yet
// the output comes out whole and in command order.
func TestRunAllConcurrentInOrder(t *testing.T) {
	specs, err := parseSpecs(strings.Fields("go test ./a --- go test ./b --- go test ./c"))
	if err != nil {
		t.Fatal(err)
	}
	secondStarted := make(chan struct{})
	var out bytes.Buffer
	results := runAll(&out, specs, 2, func(w io.Writer, s spec) *result {
		pkg := s.args[len(s.args)-1]
		switch pkg {
		case "./a":
			fmt.Fprintln(w, "a1")
			select {
			case <-secondStarted:
			case <-time.After(time.Minute):
				t.Error("the second command did not start while the first ran")
			}
			fmt.Fprintln(w, "a2")
		case "./b":
			fmt.Fprintln(w, "b1")
			close(secondStarted)
			fmt.Fprintln(w, "b2")
		default:
			fmt.Fprintln(w, "c1")
		}
		return newResult(s, "")
	})
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		if !strings.HasPrefix(l, "==> took") {
			got = append(got, l)
		}
	}
	want := []string{"==> go test -json ./a", "a1", "a2", "==> go test -json ./b", "b1", "b2", "==> go test -json ./c", "c1"}
	if !slices.Equal(got, want) {
		t.Errorf("output:\n%s\nwant the lines %q", out.String(), want)
	}
	for i, r := range results {
		if r == nil || r.spec.String() != specs[i].String() {
			t.Errorf("result %d is %v, want the one of %s", i, r, specs[i])
		}
	}
}
