package main

import (
	"io"
	"log/slog"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/asynkron/protoactor-go/remote"
)

// grpcSide is one node on protoactor-go's default gRPC remote.
type grpcSide struct {
	sys    *actor.ActorSystem
	remote *remote.Remote
}

func quietSystem() *actor.ActorSystem {
	return actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}))
}

func startGRPCSide() *grpcSide {
	sys := quietSystem()
	r := remote.NewRemote(sys, remote.Configure("127.0.0.1", 0))
	r.Start()
	return &grpcSide{sys: sys, remote: r}
}

func (s *grpcSide) System() *actor.ActorSystem { return s.sys }
func (s *grpcSide) Describe() string           { return "" }
func (s *grpcSide) Close()                     { s.remote.Shutdown(false) }

func grpcServer() (side, string, error) {
	s := startGRPCSide()
	return s, s.sys.Address(), nil
}

type grpcClient struct{ *grpcSide }

func newGRPCClient() (*grpcClient, error) { return &grpcClient{startGRPCSide()}, nil }
