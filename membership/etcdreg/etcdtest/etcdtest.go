// Package etcdtest runs a real, single-member etcd server for tests, from the
// etcd binary on PATH (Debian: apt-get install etcd-server). The server
// listens on free loopback ports with its data in a temporary directory and
// is stopped by t.Cleanup.
//
// Without the binary, Start skips the test with a message saying how to
// install it, unless the CI environment variable is set: CI installs etcd,
// so there a missing binary fails the test instead of hiding it.
package etcdtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Server is one etcd process. Stop and Restart let a test take it away and
// bring it back with the same data and ports.
type Server struct {
	t          testing.TB
	bin        string
	dir        string
	clientPort int
	peerPort   int
	// Endpoint is the client URL, e.g. "http://127.0.0.1:40123".
	Endpoint string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan error // receives cmd.Wait's result
	log    *os.File
}

// Binary returns the etcd binary's path, skipping or failing t (see the
// package doc) when there is none.
func Binary(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err == nil {
		return bin
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("etcd binary not found but CI is set: .ci/test installs Debian's etcd-server; install it (apt-get install etcd-server): %v", err)
	}
	t.Skipf("etcd binary not found on PATH; install Debian's etcd-server (apt-get install etcd-server) to run the etcd registry tests")
	return ""
}

// Start runs an etcd server and waits until it answers.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{t: t, bin: Binary(t), dir: t.TempDir()}
	t.Cleanup(s.Stop)
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		// Free ports are found by binding and releasing them; another
		// process can grab one in between, hence the retries.
		if s.clientPort, err = freePort(); err != nil {
			t.Fatal(err)
		}
		if s.peerPort, err = freePort(); err != nil {
			t.Fatal(err)
		}
		s.Endpoint = fmt.Sprintf("http://127.0.0.1:%d", s.clientPort)
		if err = s.start(); err == nil {
			return s
		}
		s.Stop()
		os.RemoveAll(filepath.Join(s.dir, "data"))
	}
	t.Fatalf("etcd did not start: %v\n%s", err, s.logTail())
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *Server) start() error {
	peer := fmt.Sprintf("http://127.0.0.1:%d", s.peerPort)
	logf, err := os.OpenFile(filepath.Join(s.dir, "etcd.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(s.bin,
		"--name", "test",
		"--data-dir", filepath.Join(s.dir, "data"),
		"--listen-client-urls", s.Endpoint,
		"--advertise-client-urls", s.Endpoint,
		"--listen-peer-urls", peer,
		"--initial-advertise-peer-urls", peer,
		"--initial-cluster", "test="+peer,
		"--initial-cluster-state", "new",
	)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	s.mu.Lock()
	s.cmd, s.exited, s.log = cmd, exited, logf
	s.mu.Unlock()

	cli, err := s.newClient()
	if err != nil {
		return err
	}
	defer cli.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		_, gerr := cli.Get(ctx, "health-check")
		cancel()
		if gerr == nil {
			return nil
		}
		select {
		case werr := <-exited:
			exited <- werr
			return fmt.Errorf("etcd exited during startup: %v", werr)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("etcd not answering at %s: %w", s.Endpoint, gerr)
		}
		time.Sleep(20 * time.Millisecond) // polling interval while etcd boots
	}
}

// Stop kills the server (as a crash would) and waits for it to exit. The
// data directory stays for Restart. Stopping a stopped server is a no-op.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd, exited, logf := s.cmd, s.exited, s.log
	s.cmd, s.exited, s.log = nil, nil, nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-exited
	logf.Close()
}

// Restart starts the server again on the same ports with the same data.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	if err := s.start(); err != nil {
		s.t.Fatalf("etcd restart: %v\n%s", err, s.logTail())
	}
}

func (s *Server) logTail() string {
	data, _ := os.ReadFile(filepath.Join(s.dir, "etcd.log"))
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return strings.Join(lines, "\n")
}

func (s *Server) newClient() (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:   []string{s.Endpoint},
		DialTimeout: 2 * time.Second,
		Logger:      zap.NewNop(),
	})
}

// Client returns a client of the server, closed by t.Cleanup.
func (s *Server) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := s.newClient()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}
