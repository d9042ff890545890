// Package etcd starts the embedded etcd member or connects to an external
// etcd cluster, and hands back a client either way.
package etcd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/namespace"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Config selects embedded or external etcd.
type Config struct {
	// DataDir holds the embedded member's data (ignored with Endpoints).
	DataDir string
	// Endpoints of an external etcd cluster; empty means embedded.
	Endpoints []string
	// Client TLS files for an external cluster (all optional).
	CertFile, KeyFile, CAFile string
	// Prefix isolates this server's keys inside a shared etcd (like
	// kube-apiserver's --etcd-prefix, applied below "/registry").
	Prefix string
	// ProgressNotifyInterval is how often the embedded member reports watch
	// progress; watch bookmarks ride on it.
	ProgressNotifyInterval time.Duration
}

// Etcd is a connected client plus, when embedded, the member it runs.
type Etcd struct {
	Client *clientv3.Client
	member *embed.Etcd
}

// Start connects to etcd, starting the embedded member first if needed.
func Start(ctx context.Context, cfg Config, log *slog.Logger) (*Etcd, error) {
	var e *Etcd
	var err error
	if len(cfg.Endpoints) > 0 {
		e, err = connect(ctx, cfg)
	} else {
		e, err = startEmbedded(ctx, cfg, log)
	}
	if err != nil || cfg.Prefix == "" {
		return e, err
	}
	c := e.Client
	c.KV = namespace.NewKV(c.KV, cfg.Prefix)
	c.Watcher = namespace.NewWatcher(c.Watcher, cfg.Prefix)
	c.Lease = namespace.NewLease(c.Lease, cfg.Prefix)
	return e, nil
}

// Close stops the client and the embedded member.
func (e *Etcd) Close() error {
	err := e.Client.Close()
	if e.member != nil {
		e.member.Close()
		<-e.member.Server.StopNotify()
	}
	return err
}

func connect(ctx context.Context, cfg Config) (*Etcd, error) {
	var tlsCfg *tls.Config
	if cfg.CertFile != "" || cfg.CAFile != "" {
		info := transport.TLSInfo{CertFile: cfg.CertFile, KeyFile: cfg.KeyFile, TrustedCAFile: cfg.CAFile}
		c, err := info.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("etcd client tls: %w", err)
		}
		tlsCfg = c
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: 10 * time.Second,
		TLS:         tlsCfg,
		Logger:      zap.NewNop(),
		Context:     ctx,
	})
	if err != nil {
		return nil, fmt.Errorf("connect to etcd %v: %w", cfg.Endpoints, err)
	}
	if err := ping(ctx, cli); err != nil {
		cli.Close()
		return nil, fmt.Errorf("etcd %v: %w", cfg.Endpoints, err)
	}
	return &Etcd{Client: cli}, nil
}

// ping waits until a read succeeds, so callers see a dead cluster at start-up.
func ping(ctx context.Context, cli *clientv3.Client) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	_, err := cli.Get(ctx, "/registry/health", clientv3.WithCountOnly())
	return err
}

func startEmbedded(ctx context.Context, cfg Config, log *slog.Logger) (*Etcd, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("embedded etcd needs a data dir")
	}
	clientURL, err := freeLoopbackURL()
	if err != nil {
		return nil, err
	}
	peerURL, err := freeLoopbackURL()
	if err != nil {
		return nil, err
	}
	ec := embed.NewConfig()
	ec.Name = "capstan"
	ec.Dir = filepath.Join(cfg.DataDir, "etcd")
	ec.ListenClientUrls = []url.URL{*clientURL}
	ec.AdvertiseClientUrls = []url.URL{*clientURL}
	ec.ListenPeerUrls = []url.URL{*peerURL}
	ec.AdvertisePeerUrls = []url.URL{*peerURL}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	ec.LogLevel = "error"
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	ec.QuotaBackendBytes = 8 << 30
	// The API server compacts on its own schedule, like kube-apiserver.
	ec.AutoCompactionRetention = "0"
	if cfg.ProgressNotifyInterval > 0 {
		ec.WatchProgressNotifyInterval = cfg.ProgressNotifyInterval
	}
	member, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd: %w", err)
	}
	select {
	case <-member.Server.ReadyNotify():
	case err := <-member.Err():
		member.Close()
		return nil, fmt.Errorf("embedded etcd: %w", err)
	case <-time.After(60 * time.Second):
		member.Close()
		return nil, errors.New("embedded etcd did not become ready in 60s")
	case <-ctx.Done():
		member.Close()
		return nil, ctx.Err()
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{clientURL.String()},
		DialTimeout: 10 * time.Second,
		Logger:      zap.NewNop(),
		// Large lists of pods exceed the 2 MiB default.
		MaxCallRecvMsgSize: 512 << 20,
	})
	if err != nil {
		member.Close()
		return nil, fmt.Errorf("embedded etcd client: %w", err)
	}
	log.Info("embedded etcd ready", "dir", ec.Dir, "client", clientURL.String())
	return &Etcd{Client: cli, member: member}, nil
}

// freeLoopbackURL picks a free port on loopback; several servers (tests run
// in parallel) must not collide on etcd's fixed default ports.
func freeLoopbackURL() (*url.URL, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("pick etcd port: %w", err)
	}
	addr := l.Addr().String()
	l.Close()
	return &url.URL{Scheme: "http", Host: addr}, nil
}
