package actorkit

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/rs/zerolog"
)

// decodeLines parses one JSON object per line of buf.
func decodeLines(t *testing.T, buf interface{ String() string }) []map[string]interface{} {
	t.Helper()
	var out []map[string]interface{}
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]interface{}
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line %q is not JSON: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

func decodeOne(t *testing.T, buf *bytes.Buffer) map[string]interface{} {
	t.Helper()
	lines := decodeLines(t, buf)
	if len(lines) != 1 {
		t.Fatalf("want 1 log line, got %d: %q", len(lines), buf.String())
	}
	return lines[0]
}

func TestSlogToZerologFieldsKeepTheirTypes(t *testing.T) {
	var buf bytes.Buffer
	log := SlogToZerolog(zerolog.New(&buf))
	pid := actor.NewPID("127.0.0.1:1", "peer/7")
	var nilPID *actor.PID
	log.Info("hello",
		slog.String("s", "x"),
		slog.Int("i", -3),
		slog.Uint64("u", 7),
		slog.Float64("f", 1.5),
		slog.Bool("b", true),
		slog.Duration("d", 2*time.Millisecond),
		slog.Any("err", errors.New("boom")),
		slog.Any("pid", pid),
		slog.Any("nilpid", nilPID),
		slog.Any("list", []int{1, 2}),
		slog.Attr{}, // empty attributes are dropped
	)
	m := decodeOne(t, &buf)
	want := map[string]interface{}{
		"level": "info", "message": "hello",
		"s": "x", "i": -3.0, "u": 7.0, "f": 1.5, "b": true, "d": 2.0,
		"err": "boom", "pid": pid.String(), "nilpid": nil,
		"list": []interface{}{1.0, 2.0},
	}
	assertJSON(t, m, want)
}

func TestSlogToZerologMapsLevels(t *testing.T) {
	cases := []struct {
		level slog.Level
		want  string
	}{
		{slog.LevelDebug - 4, "trace"},
		{slog.LevelDebug, "debug"},
		{slog.LevelInfo, "info"},
		{slog.LevelInfo + 2, "info"},
		{slog.LevelWarn, "warn"},
		{slog.LevelError, "error"},
		{slog.LevelError + 4, "error"},
	}
	for _, c := range cases {
		var buf bytes.Buffer
		log := SlogToZerolog(zerolog.New(&buf).Level(zerolog.TraceLevel))
		log.Log(t.Context(), c.level, "m")
		if got := decodeOne(t, &buf)["level"]; got != c.want {
			t.Errorf("slog level %v: got zerolog level %v, want %s", c.level, got, c.want)
		}
	}
}

func TestSlogToZerologRespectsZerologLevel(t *testing.T) {
	var buf bytes.Buffer
	log := SlogToZerolog(zerolog.New(&buf).Level(zerolog.WarnLevel))
	if log.Enabled(t.Context(), slog.LevelInfo) {
		t.Error("info is enabled on a warn-level zerolog logger")
	}
	if !log.Enabled(t.Context(), slog.LevelError) {
		t.Error("error is disabled on a warn-level zerolog logger")
	}
	log.Info("dropped")
	log.Warn("kept")
	if m := decodeOne(t, &buf); m["message"] != "kept" {
		t.Errorf("got %v", m)
	}
}

func TestSlogToZerologGroupsNest(t *testing.T) {
	var buf bytes.Buffer
	log := SlogToZerolog(zerolog.New(&buf)).
		With("top", 1).
		WithGroup("g").
		With("a", 2).
		WithGroup("h").
		With("b", 3)
	log.Info("m", "c", 4, slog.Group("inner", "d", 5), slog.Group("", "inl", 6))
	want := map[string]interface{}{
		"level": "info", "message": "m", "top": 1.0,
		"g": map[string]interface{}{
			"a": 2.0,
			"h": map[string]interface{}{
				"b": 3.0, "c": 4.0, "inl": 6.0,
				"inner": map[string]interface{}{"d": 5.0},
			},
		},
	}
	assertJSON(t, decodeOne(t, &buf), want)
}

func TestSlogToZerologOmitsEmptyGroups(t *testing.T) {
	var buf bytes.Buffer
	log := SlogToZerolog(zerolog.New(&buf)).WithGroup("g").WithGroup("h")
	log.Info("m", slog.Group("empty"))
	assertJSON(t, decodeOne(t, &buf), map[string]interface{}{"level": "info", "message": "m"})
}

func TestSlogToZerologDerivedLoggersDoNotShareAttrs(t *testing.T) {
	var buf bytes.Buffer
	base := SlogToZerolog(zerolog.New(&buf)).WithGroup("g").With("x", 1)
	a := base.With("a", 1)
	b := base.With("b", 2)
	a.Info("a")
	b.Info("b")
	lines := decodeLines(t, &buf)
	if len(lines) != 2 {
		t.Fatalf("want 2 lines, got %d", len(lines))
	}
	assertJSON(t, lines[0], map[string]interface{}{"level": "info", "message": "a", "g": map[string]interface{}{"x": 1.0, "a": 1.0}})
	assertJSON(t, lines[1], map[string]interface{}{"level": "info", "message": "b", "g": map[string]interface{}{"x": 1.0, "b": 2.0}})
}

func TestNewActorSystemRoutesProtoactorLogsWithNode(t *testing.T) {
	var buf syncBuffer
	sys := NewActorSystem(zerolog.New(&buf), "node-1")
	defer sys.Shutdown()
	sys.Logger().Warn("probe")

	lines := decodeLines(t, &buf)
	var sawStart, sawProbe bool
	for _, m := range lines {
		if m["node"] != "node-1" || m["lib"] != "protoactor" || m["system"] != sys.ID {
			t.Errorf("log line lacks node/lib/system fields: %v", m)
		}
		switch m["message"] {
		case "actor system started":
			sawStart = true
		case "probe":
			sawProbe = m["level"] == "warn"
		}
	}
	if !sawStart || !sawProbe {
		t.Errorf("want the start line and a warn probe, got %v", lines)
	}
}

// syncBuffer is a bytes.Buffer safe for the actor system's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func assertJSON(t *testing.T, got, want map[string]interface{}) {
	t.Helper()
	g, _ := json.Marshal(got)
	w, _ := json.Marshal(want)
	if !bytes.Equal(g, w) {
		t.Errorf("log line\n got: %s\nwant: %s", g, w)
	}
}
