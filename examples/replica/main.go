// Command replica runs one abcast node as its own process: the node a
// config file describes (the files `abcastctl subnet` writes work as is),
// structured logs, Prometheus metrics, and a small HTTP API to publish and
// abort test artifacts. SIGINT or SIGTERM shut it down cleanly.
//
//	replica -config subnet/node-0.json -http 127.0.0.1:9100
//
// HTTP endpoints (on -http, or the config's "http"):
//
//	GET  /metrics                               Prometheus metrics
//	GET  /status                                node id, peers, per-channel counters (JSON)
//	POST /publish?channel=C&size=N[&id=X][&latency_sensitive=1]
//	                                            publish N random bytes (default 1024) under id X
//	                                            (default: a fresh id); answers {"channel","id","size"}
//	POST /abort?channel=C&id=X                  abort a published artifact
//
// See README.md beside this file.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/examples/abcastctl/nodeconfig"
	"github.com/abcast/abcast/membership"
	"github.com/abcast/abcast/membership/etcdreg"
)

func main() {
	if err := run(os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "replica:", err)
		os.Exit(1)
	}
}

func run(args []string, stderr io.Writer) error {
	flags := flag.NewFlagSet("replica", flag.ContinueOnError)
	flags.SetOutput(stderr)
	flags.Usage = func() {
		fmt.Fprintf(stderr, `replica: one abcast node as a process.

usage: replica -config FILE [-http ADDR] [-log-format console|json] [-log-level LEVEL]

The config file names the identity key, the UDP listen address, the registry
(a registry file, watched for changes, an etcd prefix, or static_members), the channels and
optional limits; `+"`abcastctl subnet`"+` writes one per node. See
examples/replica/README.md.

Flags:
`)
		flags.PrintDefaults()
	}
	configPath := flags.String("config", "", "config file (required)")
	httpAddr := flags.String("http", "", "address for /metrics and the test API (overrides the config's \"http\"; port 0 picks one)")
	logFormat := flags.String("log-format", "", "console or json (overrides the config)")
	logLevel := flags.String("log-level", "", "debug, info, warn or error (overrides the config)")
	readyFile := flags.String("ready-file", "", "once serving, write the HTTP address to this file (for scripts and tests)")
	if err := flags.Parse(args); err != nil {
		return err
	}
	if *configPath == "" {
		flags.Usage()
		return errors.New("-config is required")
	}
	cfg, err := nodeconfig.Load(*configPath)
	if err != nil {
		return err
	}
	if *httpAddr != "" {
		cfg.HTTP = *httpAddr
	}
	if *logFormat != "" {
		cfg.Log.Format = *logFormat
	}
	if *logLevel != "" {
		cfg.Log.Level = *logLevel
	}
	log, err := newLogger(cfg.Log, stderr)
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	r, err := start(cfg, log)
	if err != nil {
		return err
	}
	var srv *http.Server
	if cfg.HTTP != "" {
		ln, err := net.Listen("tcp", cfg.HTTP)
		if err != nil {
			r.close()
			return fmt.Errorf("http: %w", err)
		}
		srv = &http.Server{Handler: r.handler(), ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error().Err(err).Msg("http server failed")
				stop()
			}
		}()
		log.Info().Str("http", ln.Addr().String()).Msg("serving /metrics, /status, /publish, /abort")
		if *readyFile != "" {
			if err := os.WriteFile(*readyFile, []byte(ln.Addr().String()), 0o644); err != nil {
				log.Error().Err(err).Msg("writing the ready file")
			}
		}
	}
	<-ctx.Done()
	log.Info().Msg("signal received; shutting down")
	if srv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := srv.Shutdown(sctx); err != nil {
			log.Warn().Err(err).Msg("http shutdown")
		}
		cancel()
	}
	r.close()
	log.Info().Msg("stopped")
	return nil
}

func newLogger(c nodeconfig.LogConfig, w io.Writer) (zerolog.Logger, error) {
	level := zerolog.InfoLevel
	if c.Level != "" {
		var err error
		if level, err = zerolog.ParseLevel(c.Level); err != nil {
			return zerolog.Nop(), fmt.Errorf("log level %q: %w", c.Level, err)
		}
	}
	switch c.Format {
	case "", "console":
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.StampMilli}
	case "json":
	default:
		return zerolog.Nop(), fmt.Errorf("log format %q: want console or json", c.Format)
	}
	// Millisecond timestamps: a second is too coarse to follow a transfer.
	zerolog.TimeFieldFormat = time.RFC3339Nano
	return zerolog.New(w).Level(level).With().Timestamp().Logger(), nil
}

// replica is a running node with its channels and exporters.
type replica struct {
	cfg      *nodeconfig.Config
	log      zerolog.Logger
	ident    *membership.Identity
	registry membership.Source
	closeReg func() error
	node     *actors.Node
	chans    map[string]*actors.Channel
	order    []*actors.Channel
	metrics  *collector
	promReg  *prometheus.Registry
	held     *heldSet
}

func start(cfg *nodeconfig.Config, log zerolog.Logger) (*replica, error) {
	acfg, tcfg, static, err := cfg.NodeConfigs()
	if err != nil {
		return nil, err
	}
	ident, err := membership.LoadOrCreateIdentity(cfg.IdentityKey)
	if err != nil {
		return nil, err
	}
	r := &replica{cfg: cfg, log: log.With().Str("node", ident.ID.Short()).Logger(), ident: ident, chans: map[string]*actors.Channel{}, held: newHeldSet()}
	switch {
	case cfg.Etcd != nil:
		cli, err := clientv3.New(clientv3.Config{Endpoints: cfg.Etcd.Endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			return nil, fmt.Errorf("etcd: %w", err)
		}
		ecfg := etcdreg.DefaultConfig(cli, cfg.Etcd.Prefix)
		ecfg.Log = r.log.With().Str("etcd_prefix", cfg.Etcd.Prefix).Logger()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		src, err := etcdreg.New(ctx, ecfg)
		cancel()
		if err != nil {
			cli.Close()
			return nil, fmt.Errorf("etcd registry: %w", err)
		}
		r.registry, r.closeReg = src, func() error {
			err := src.Close()
			if cerr := cli.Close(); err == nil {
				err = cerr
			}
			return err
		}
	case static != nil:
		src, err := membership.NewStaticSource(static)
		if err != nil {
			return nil, err
		}
		r.registry, r.closeReg = src, func() error { return nil }
	default:
		fcfg := membership.DefaultFileSourceConfig(cfg.Registry)
		if cfg.PollInterval != "" {
			fcfg.PollInterval, _ = time.ParseDuration(cfg.PollInterval) // validated
		}
		fcfg.Log = r.log.With().Str("registry", cfg.Registry).Logger()
		src, err := membership.NewFileSource(fcfg)
		if err != nil {
			return nil, err
		}
		r.registry, r.closeReg = src, src.Close
	}
	snap := r.registry.Current()
	if m, ok := snap.Member(ident.ID); !ok {
		r.log.Warn().Msg("this node is not in the registry; peers will refuse it until it is added")
	} else if m.Addr != cfg.Listen {
		r.log.Warn().Str("registry_addr", m.Addr).Str("listen", cfg.Listen).Msg("the registry lists another address for this node")
	}
	udp, err := net.ListenPacket("udp", cfg.Listen)
	if err != nil {
		r.closeReg()
		return nil, fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	acfg.Transport = tcfg
	acfg.Remote.Messages = append(acfg.Remote.Messages, &wrapperspb.StringValue{}) // the status actor's requests and answers
	// One node, one bus: the actor system, the QUIC transport and the
	// remote. Our actors and channels are set up before it dials.
	r.node, err = actors.NewNode(acfg, ident, r.registry, udp, r.log)
	if err != nil {
		r.closeReg()
		return nil, err
	}
	if _, err := r.node.System().Root.SpawnNamed(actor.PropsFromFunc(r.serveStatusActor), statusActor); err != nil {
		r.close()
		return nil, err
	}
	r.metrics = newCollector(r.node, nil)
	for _, name := range cfg.Channels {
		ch, err := r.node.OpenChannel(actors.ChannelConfig{Name: name, Admit: broadcast.AdmitAll, Consume: r.consumer(name)})
		if err != nil {
			r.close()
			return nil, err
		}
		r.chans[name] = ch
		r.order = append(r.order, ch)
	}
	r.metrics.chans = r.order
	r.promReg = prometheus.NewRegistry()
	r.promReg.MustRegister(r.metrics, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if err := r.node.Start(); err != nil {
		r.close()
		return nil, err
	}
	r.log.Info().Str("id", ident.ID.String()).Str("listen", cfg.Listen).Int("members", snap.Len()).Strs("channels", cfg.Channels).Msg("node started")
	return r, nil
}

func (r *replica) close() {
	if err := r.node.Close(); err != nil {
		r.log.Warn().Err(err).Msg("closing the node")
	}
	if err := r.closeReg(); err != nil {
		r.log.Warn().Err(err).Msg("closing the registry")
	}
}

// consumer logs and measures deliveries; it takes each artifact at once
// (this replica has nothing to apply them to).
func (r *replica) consumer(channel string) func(actors.Event) {
	return func(ev actors.Event) {
		switch e := ev.(type) {
		case *actors.Delivered:
			r.metrics.sizes.WithLabelValues(channel).Observe(float64(len(e.Artifact.Payload)))
			if at, ok := publishTime(e.Artifact.Attribute); ok {
				r.metrics.latency.WithLabelValues(channel).Observe(time.Since(at).Seconds())
			}
			r.held.add(channel)
			r.log.Debug().Str("channel", channel).Str("id", string(e.Artifact.ID)).Int("bytes", len(e.Artifact.Payload)).Str("from", e.From.Short()).Msg("delivered")
		case *actors.Withdrawn:
			r.held.remove(channel)
			r.log.Debug().Str("channel", channel).Str("id", string(e.ID)).Msg("withdrawn")
		}
	}
}
