// Command node runs one abcast node from a nodeconfig file for the
// multi-process membership tests. It publishes a new artifact on its first
// channel every -every (keeping the newest -live ones, aborting older ones)
// and prints one JSON object per line on stdout:
//
//	{"event":"ready","node":"<id>"}
//	{"event":"members","version":7,"count":3}
//	{"event":"delivered","id":"<publisher short id>-<seq>","from":"<id>"}
//	{"event":"withdrawn","id":"..."}
//
// It runs until stdin is closed or it is killed.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/abcast/abcast/actors"
	"github.com/abcast/abcast/broadcast"
	"github.com/abcast/abcast/examples/abcastctl/nodeconfig"
	"github.com/abcast/abcast/membership"
	"github.com/abcast/abcast/membership/etcdreg"
	"github.com/abcast/abcast/quicremote/transport"
)

func main() {
	config := flag.String("config", "", "node config file")
	every := flag.Duration("every", 20*time.Millisecond, "publish interval")
	live := flag.Int("live", 20, "artifacts kept live")
	flag.Parse()
	if err := run(*config, *every, *live); err != nil {
		fmt.Fprintln(os.Stderr, "node:", err)
		os.Exit(1)
	}
}

var outMu sync.Mutex

func emit(v map[string]any) {
	data, _ := json.Marshal(v)
	outMu.Lock()
	defer outMu.Unlock()
	os.Stdout.Write(append(data, '\n'))
}

func run(path string, every time.Duration, live int) error {
	cfg, err := nodeconfig.Load(path)
	if err != nil {
		return err
	}
	log := zerolog.New(os.Stderr).Level(zerolog.InfoLevel).With().Timestamp().Logger()
	id, err := membership.LoadIdentity(cfg.IdentityKey)
	if err != nil {
		return err
	}
	src, closeSrc, err := openSource(cfg, log)
	if err != nil {
		return err
	}
	defer closeSrc()
	pc, err := net.ListenPacket("udp", cfg.Listen)
	if err != nil {
		return err
	}
	tcfg := transport.DefaultConfig()
	tcfg.ReconnectBackoffMax = time.Second
	acfg := actors.DefaultConfig()
	acfg.Transport = tcfg
	node, err := actors.Start(acfg, id, src, pc, log)
	if err != nil {
		return err
	}
	defer node.Close()
	ch, err := node.OpenChannel(actors.ChannelConfig{Name: cfg.Channels[0], Consume: func(ev actors.Event) {
		switch e := ev.(type) {
		case *actors.Delivered:
			emit(map[string]any{"event": "delivered", "id": string(e.Artifact.ID), "from": e.From.String()})
		case *actors.Withdrawn:
			emit(map[string]any{"event": "withdrawn", "id": string(e.ID)})
		}
	}})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for snap := range src.Watch(ctx) {
			emit(map[string]any{"event": "members", "version": snap.Version, "count": snap.Len()})
		}
	}()
	emit(map[string]any{"event": "ready", "node": id.ID.String()})

	stdinClosed := make(chan struct{})
	go func() { io.Copy(io.Discard, os.Stdin); close(stdinClosed) }()
	tick := time.NewTicker(every)
	defer tick.Stop()
	var published []broadcast.ArtifactID
	for seq := 0; ; seq++ {
		select {
		case <-stdinClosed:
			return nil
		case <-tick.C:
		}
		aid := broadcast.ArtifactID(fmt.Sprintf("%s-%d", id.ID.Short(), seq))
		if err := ch.Publish(broadcast.Artifact{ID: aid, Payload: make([]byte, 2048)}); err != nil {
			continue // busy: skip this tick
		}
		published = append(published, aid)
		if len(published) > live {
			if ch.Abort(published[0]) == nil {
				published = published[1:]
			}
		}
	}
}

func openSource(cfg *nodeconfig.Config, log zerolog.Logger) (membership.Source, func(), error) {
	if cfg.Registry != "" {
		fc := membership.DefaultFileSourceConfig(cfg.Registry)
		fc.Log = log
		if cfg.PollInterval != "" {
			d, err := time.ParseDuration(cfg.PollInterval)
			if err != nil {
				return nil, nil, fmt.Errorf("poll_interval: %w", err)
			}
			fc.PollInterval = d
		}
		s, err := membership.NewFileSource(fc)
		if err != nil {
			return nil, nil, err
		}
		return s, func() { s.Close() }, nil
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: cfg.Etcd.Endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return nil, nil, err
	}
	ec := etcdreg.DefaultConfig(cli, cfg.Etcd.Prefix)
	ec.Log = log
	s, err := etcdreg.New(context.Background(), ec)
	if err != nil {
		cli.Close()
		return nil, nil, err
	}
	return s, func() { s.Close(); cli.Close() }, nil
}
