package actorkit

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/rs/zerolog"
)

// SlogToZerolog returns a slog.Logger whose records are written by zl.
//
// Levels map to the nearest zerolog level at or below them (Debug, Info,
// Warn, Error; anything under Debug is Trace), and zl's own level, plus
// zerolog's global level, decide what is enabled. Attributes become zerolog
// fields; slog groups become nested JSON objects, and a group that ends up
// with no fields is left out, as slog requires. Errors are written with
// zerolog's error marshalling and fmt.Stringers (such as *actor.PID) as their
// string, everything else through zerolog's interface encoding.
//
// The record's timestamp is not written: timestamps are zl's business
// (zl.With().Timestamp()), which avoids a duplicate "time" key.
func SlogToZerolog(zl zerolog.Logger) *slog.Logger {
	return slog.New(&zerologHandler{zl: zl})
}

// NewActorSystem creates a protoactor ActorSystem whose logs go to zl with a
// "node" field set to nodeID, plus "lib" and "system" (the system's random
// id) as protoactor's default logger has. opts are applied after ours, so a
// caller's own actor.WithLoggerFactory replaces this routing.
func NewActorSystem(zl zerolog.Logger, nodeID string, opts ...actor.ConfigOption) *actor.ActorSystem {
	nodeLogger := zl.With().Str("node", nodeID).Logger()
	all := make([]actor.ConfigOption, 0, len(opts)+1)
	all = append(all, actor.WithLoggerFactory(func(s *actor.ActorSystem) *slog.Logger {
		return SlogToZerolog(nodeLogger).With(slog.String("lib", "protoactor"), slog.String("system", s.ID))
	}))
	all = append(all, opts...)
	return actor.NewActorSystem(all...)
}

// zerologHandler is a slog.Handler on top of a zerolog.Logger.
//
// Attributes added before any group are folded into zl once, at WithAttrs
// time, so they cost nothing per record. Once a group is open, later
// attributes have to land inside that group's object together with the
// record's own, and zerolog cannot reopen an object it has already written,
// so those are kept in groups and written per record.
type zerologHandler struct {
	zl     zerolog.Logger
	groups []groupFrame
}

// groupFrame is one open group and the attributes added while it was the
// innermost.
type groupFrame struct {
	name  string
	attrs []slog.Attr
}

var _ slog.Handler = (*zerologHandler)(nil)

func (h *zerologHandler) Enabled(_ context.Context, l slog.Level) bool {
	zl := zerologLevel(l)
	return zl >= h.zl.GetLevel() && zl >= zerolog.GlobalLevel()
}

func (h *zerologHandler) Handle(_ context.Context, r slog.Record) error {
	e := h.zl.WithLevel(zerologLevel(r.Level))
	if e == nil {
		return nil
	}
	rec := make([]slog.Attr, 0, r.NumAttrs())
	r.Attrs(func(a slog.Attr) bool {
		rec = append(rec, a)
		return true
	})
	writeGroups(e, h.groups, rec)
	e.Msg(r.Message)
	return nil
}

func (h *zerologHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	if len(attrs) == 0 {
		return h
	}
	if len(h.groups) == 0 {
		c := h.zl.With()
		for _, a := range attrs {
			c = addAttr(c, a)
		}
		return &zerologHandler{zl: c.Logger()}
	}
	groups := cloneGroups(h.groups)
	last := &groups[len(groups)-1]
	last.attrs = append(last.attrs[:len(last.attrs):len(last.attrs)], attrs...)
	return &zerologHandler{zl: h.zl, groups: groups}
}

func (h *zerologHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	groups := append(cloneGroups(h.groups), groupFrame{name: name})
	return &zerologHandler{zl: h.zl, groups: groups}
}

func cloneGroups(g []groupFrame) []groupFrame {
	return append(make([]groupFrame, 0, len(g)+1), g...)
}

// writeGroups writes frames (outermost first) as nested objects, the record's
// attributes going into the innermost.
func writeGroups(e *zerolog.Event, frames []groupFrame, rec []slog.Attr) {
	if len(frames) == 0 {
		for _, a := range rec {
			e = addAttr(e, a)
		}
		return
	}
	if !groupsHaveFields(frames, rec) {
		return
	}
	f := frames[0]
	d := zerolog.Dict()
	for _, a := range f.attrs {
		d = addAttr(d, a)
	}
	writeGroups(d, frames[1:], rec)
	e.Dict(f.name, d)
}

func groupsHaveFields(frames []groupFrame, rec []slog.Attr) bool {
	for _, f := range frames {
		for _, a := range f.attrs {
			if !attrIsEmpty(a) {
				return true
			}
		}
	}
	for _, a := range rec {
		if !attrIsEmpty(a) {
			return true
		}
	}
	return false
}

// attrIsEmpty reports whether slog says a should produce no output: an empty
// attribute, or a group with nothing in it.
func attrIsEmpty(a slog.Attr) bool {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return true
	}
	if a.Value.Kind() != slog.KindGroup {
		return false
	}
	for _, g := range a.Value.Group() {
		if !attrIsEmpty(g) {
			return false
		}
	}
	return true
}

// fieldSink is what zerolog.Context and *zerolog.Event have in common, so one
// function can write attributes to a logger being built, an event, or a
// dictionary inside an event.
type fieldSink[T any] interface {
	Str(key, val string) T
	Int64(key string, i int64) T
	Uint64(key string, i uint64) T
	Float64(key string, f float64) T
	Bool(key string, b bool) T
	Dur(key string, d time.Duration) T
	Time(key string, t time.Time) T
	AnErr(key string, err error) T
	Interface(key string, i interface{}) T
	Dict(key string, dict *zerolog.Event) T
}

func addAttr[T fieldSink[T]](s T, a slog.Attr) T {
	a.Value = a.Value.Resolve()
	if attrIsEmpty(a) {
		return s
	}
	v := a.Value
	switch v.Kind() {
	case slog.KindGroup:
		if a.Key == "" {
			// An unnamed group's members are inlined, per slog.
			for _, g := range v.Group() {
				s = addAttr(s, g)
			}
			return s
		}
		d := zerolog.Dict()
		for _, g := range v.Group() {
			d = addAttr(d, g)
		}
		return s.Dict(a.Key, d)
	case slog.KindString:
		return s.Str(a.Key, v.String())
	case slog.KindInt64:
		return s.Int64(a.Key, v.Int64())
	case slog.KindUint64:
		return s.Uint64(a.Key, v.Uint64())
	case slog.KindFloat64:
		return s.Float64(a.Key, v.Float64())
	case slog.KindBool:
		return s.Bool(a.Key, v.Bool())
	case slog.KindDuration:
		return s.Dur(a.Key, v.Duration())
	case slog.KindTime:
		return s.Time(a.Key, v.Time())
	}
	x := v.Any()
	if isNilPointer(x) {
		return s.Interface(a.Key, nil)
	}
	switch x := x.(type) {
	case error:
		return s.AnErr(a.Key, x)
	case fmt.Stringer:
		return s.Str(a.Key, x.String())
	default:
		return s.Interface(a.Key, x)
	}
}

// isNilPointer catches typed nil pointers, whose String or Error method
// would likely panic.
func isNilPointer(x interface{}) bool {
	if x == nil {
		return true
	}
	rv := reflect.ValueOf(x)
	return rv.Kind() == reflect.Pointer && rv.IsNil()
}

// zerologLevel maps a slog level to the zerolog level at or below it.
func zerologLevel(l slog.Level) zerolog.Level {
	switch {
	case l >= slog.LevelError:
		return zerolog.ErrorLevel
	case l >= slog.LevelWarn:
		return zerolog.WarnLevel
	case l >= slog.LevelInfo:
		return zerolog.InfoLevel
	case l >= slog.LevelDebug:
		return zerolog.DebugLevel
	default:
		return zerolog.TraceLevel
	}
}
