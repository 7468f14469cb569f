package main

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/examples/abcastctl/nodeconfig"
)

// maxTestPayload bounds what /publish generates, so a typo cannot make the
// process allocate gigabytes.
const maxTestPayload = 128 << 20

var publishSeq atomic.Uint64

func (r *replica) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(r.promReg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /status", r.serveStatus)
	mux.HandleFunc("GET /peers", r.servePeers)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if err := r.node.Health(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("POST /publish", r.servePublish)
	mux.HandleFunc("POST /abort", r.serveAbort)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "abcast replica: GET /metrics, GET /status, POST /publish?channel=C&size=N[&id=X][&latency_sensitive=1], POST /abort?channel=C&id=X")
	})
	return mux
}

func (r *replica) channel(w http.ResponseWriter, req *http.Request) (*actors.Channel, bool) {
	name := req.URL.Query().Get("channel")
	ch, ok := r.chans[name]
	if !ok {
		http.Error(w, fmt.Sprintf("unknown channel %q (this node opens %s)", name, strings.Join(r.cfg.Channels, ", ")), http.StatusNotFound)
	}
	return ch, ok
}

// servePublish publishes size random bytes. The attribute carries the
// publish time, so receivers can measure delivery latency.
func (r *replica) servePublish(w http.ResponseWriter, req *http.Request) {
	ch, ok := r.channel(w, req)
	if !ok {
		return
	}
	q := req.URL.Query()
	size := 1024
	if s := q.Get("size"); s != "" {
		v, err := nodeconfig.ParseSize(s)
		if err != nil || v > maxTestPayload {
			http.Error(w, fmt.Sprintf("size %q: want a byte count up to %d", s, maxTestPayload), http.StatusBadRequest)
			return
		}
		size = v
	}
	id := q.Get("id")
	if id == "" {
		id = fmt.Sprintf("%s-%d", r.ident.ID.Short(), publishSeq.Add(1))
	}
	payload := make([]byte, size)
	rand.Read(payload)
	a := broadcast.Artifact{
		ID:               broadcast.ArtifactID(id),
		Attribute:        []byte(attrPrefix + strconv.FormatInt(time.Now().UnixNano(), 10)),
		Payload:          payload,
		LatencySensitive: q.Get("latency_sensitive") == "1" || q.Get("latency_sensitive") == "true",
	}
	if err := ch.Publish(a); err != nil {
		http.Error(w, err.Error(), statusOf(err))
		return
	}
	r.log.Info().Str("channel", ch.Name()).Str("id", id).Int("bytes", size).Msg("published")
	writeJSON(w, map[string]any{"channel": ch.Name(), "id": id, "size": size})
}

func (r *replica) serveAbort(w http.ResponseWriter, req *http.Request) {
	ch, ok := r.channel(w, req)
	if !ok {
		return
	}
	id := req.URL.Query().Get("id")
	if err := ch.Abort(broadcast.ArtifactID(id)); err != nil {
		http.Error(w, err.Error(), statusOf(err))
		return
	}
	r.log.Info().Str("channel", ch.Name()).Str("id", id).Msg("aborted")
	writeJSON(w, map[string]any{"channel": ch.Name(), "id": id, "aborted": true})
}

func statusOf(err error) int {
	switch {
	case errors.Is(err, broadcast.ErrUnknownID):
		return http.StatusNotFound
	case errors.Is(err, broadcast.ErrDuplicate):
		return http.StatusConflict
	case errors.Is(err, broadcast.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, broadcast.ErrSlotsExhausted), errors.Is(err, actors.ErrBusy):
		return http.StatusTooManyRequests
	}
	return http.StatusServiceUnavailable
}

// status is what /status answers.
type status struct {
	ID      string `json:"id"`
	Listen  string `json:"listen"`
	Members int    `json:"members"`
	// RegistryVersion is the version of the membership snapshot in use.
	RegistryVersion uint64                   `json:"registry_version"`
	Peers           []string                 `json:"peers"`
	Channels        map[string]channelStatus `json:"channels"`
	Restarts        uint64                   `json:"restarts"`
}

type channelStatus struct {
	Live          int    `json:"live"`
	Held          int    `json:"held"`
	Published     uint64 `json:"published"`
	Aborted       uint64 `json:"aborted"`
	Delivered     uint64 `json:"delivered"`
	Withdrawn     uint64 `json:"withdrawn"`
	ActiveFetches int    `json:"active_fetches"`
	BytesSent     uint64 `json:"bytes_sent"`
}

func (r *replica) serveStatus(w http.ResponseWriter, _ *http.Request) { writeJSON(w, r.status()) }

func (r *replica) status() status {
	snap := r.registry.Current()
	s := status{ID: r.ident.ID.String(), Listen: r.cfg.Listen, Members: snap.Len(), RegistryVersion: snap.Version, Peers: []string{}, Channels: map[string]channelStatus{}, Restarts: r.node.Stats().Restarts}
	for _, p := range r.node.Transport().Peers() {
		s.Peers = append(s.Peers, p.String())
	}
	for _, ch := range r.order {
		st := ch.Stats()
		s.Channels[ch.Name()] = channelStatus{Live: st.Live, Held: r.held.count(ch.Name()), Published: st.Sender.Published, Aborted: st.Sender.Aborted,
			Delivered: st.Delivered, Withdrawn: st.Withdrawn, ActiveFetches: st.ActiveFetches, BytesSent: st.UpdateBytesSent + st.FetchBytesServed}
	}
	return s
}

// statusActor is the name of every replica's status actor: the other
// replicas ask it for this one's status over the actor remote, on the same
// QUIC connections as the broadcast.
const statusActor = "status"

// serveStatusActor answers a StringValue "status" with this replica's
// status as JSON.
func (r *replica) serveStatusActor(ctx actor.Context) {
	if m, ok := ctx.Message().(*wrapperspb.StringValue); ok && m.Value == "status" {
		b, _ := json.Marshal(r.status())
		ctx.Respond(wrapperspb.String(string(b)))
	}
}

// servePeers asks every other member's status actor, by actor message, for
// its status, and answers with what each said (or why it did not).
func (r *replica) servePeers(w http.ResponseWriter, req *http.Request) {
	type answer struct {
		Status *status `json:"status,omitempty"`
		Error  string  `json:"error,omitempty"`
	}
	ids := r.registry.Current().IDs()
	out := make(map[string]answer, len(ids))
	futures := map[string]*actor.Future{}
	for _, id := range ids {
		if id == r.ident.ID {
			continue
		}
		futures[id.String()] = r.node.System().Root.RequestFuture(r.node.PID(id, statusActor), wrapperspb.String("status"), 2*time.Second)
	}
	for id, f := range futures {
		res, err := f.Result()
		switch v := res.(type) {
		case *wrapperspb.StringValue:
			var s status
			if err := json.Unmarshal([]byte(v.Value), &s); err != nil {
				out[id] = answer{Error: "bad answer: " + err.Error()}
			} else {
				out[id] = answer{Status: &s}
			}
		default:
			if err == nil {
				err = fmt.Errorf("unexpected answer %T", res)
			}
			out[id] = answer{Error: err.Error()}
		}
	}
	writeJSON(w, out)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// attrPrefix marks attributes that carry a publish time (Unix ns).
const attrPrefix = "published_unix_nano="

func publishTime(attr []byte) (time.Time, bool) {
	s, ok := strings.CutPrefix(string(attr), attrPrefix)
	if !ok {
		return time.Time{}, false
	}
	ns, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(0, ns), true
}

// heldSet counts artifacts delivered and not withdrawn, per channel.
type heldSet struct {
	mu sync.Mutex
	n  map[string]int
}

func newHeldSet() *heldSet { return &heldSet{n: map[string]int{}} }

func (h *heldSet) add(ch string) {
	h.mu.Lock()
	h.n[ch]++
	h.mu.Unlock()
}

func (h *heldSet) remove(ch string) {
	h.mu.Lock()
	h.n[ch]--
	h.mu.Unlock()
}

func (h *heldSet) count(ch string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n[ch]
}
