// Package etcd starts the embedded etcd member, or checks that an external
// etcd cluster answers, and says how kube-apiserver reaches either.
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
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Config selects embedded or external etcd.
type Config struct {
	// DataDir holds the embedded member's data (ignored with Endpoints).
	DataDir string
	// Endpoints of an external etcd cluster; empty means embedded.
	Endpoints []string
	// TLS files: for an external cluster, the client's (all optional); for
	// the embedded member, the client certificate kube-apiserver presents.
	CertFile, KeyFile, CAFile string
	// The embedded member's serving certificate; it requires clients to
	// present a certificate signed by CAFile, so only the API server reads
	// the cluster's secrets.
	ServerCertFile, ServerKeyFile string
}

// Etcd is where kube-apiserver finds the store.
type Etcd struct {
	Endpoints                 []string
	CertFile, KeyFile, CAFile string
	member                    *embed.Etcd
}

// Start starts the embedded member, or checks that the external cluster
// answers, so that a dead cluster is reported at start-up in our words.
func Start(ctx context.Context, cfg Config, log *slog.Logger) (*Etcd, error) {
	if len(cfg.Endpoints) > 0 {
		if err := ping(ctx, cfg); err != nil {
			return nil, fmt.Errorf("etcd %v: %w", cfg.Endpoints, err)
		}
		return &Etcd{Endpoints: cfg.Endpoints, CertFile: cfg.CertFile, KeyFile: cfg.KeyFile, CAFile: cfg.CAFile}, nil
	}
	return startEmbedded(ctx, cfg, log)
}

// Close stops the embedded member, if any, waiting at most timeout: a
// graceful stop waits for clients' watches to end, and an API server being
// shut down may hold some open. etcd syncs its log on every commit, so a
// member cut short loses nothing.
func (e *Etcd) Close(timeout time.Duration) {
	if e.member == nil {
		return
	}
	done := make(chan struct{})
	go func() {
		e.member.Close()
		<-e.member.Server.StopNotify()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(timeout):
	}
}

func ping(ctx context.Context, cfg Config) error {
	var tlsCfg *tls.Config
	if cfg.CertFile != "" || cfg.CAFile != "" {
		info := transport.TLSInfo{CertFile: cfg.CertFile, KeyFile: cfg.KeyFile, TrustedCAFile: cfg.CAFile}
		c, err := info.ClientConfig()
		if err != nil {
			return fmt.Errorf("client tls: %w", err)
		}
		tlsCfg = c
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: cfg.Endpoints, DialTimeout: 10 * time.Second, TLS: tlsCfg, Logger: zap.NewNop(), Context: ctx,
	})
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	_, err = cli.Get(ctx, "/registry/health", clientv3.WithCountOnly())
	return err
}

func startEmbedded(ctx context.Context, cfg Config, log *slog.Logger) (*Etcd, error) {
	if cfg.DataDir == "" || cfg.ServerCertFile == "" || cfg.CAFile == "" {
		return nil, errors.New("embedded etcd needs a data dir, a serving certificate and a client CA")
	}
	clientURL, err := freeLoopbackURL("https")
	if err != nil {
		return nil, err
	}
	peerURL, err := freeLoopbackURL("http")
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
	ec.ClientTLSInfo = transport.TLSInfo{
		CertFile: cfg.ServerCertFile, KeyFile: cfg.ServerKeyFile, TrustedCAFile: cfg.CAFile, ClientCertAuth: true,
	}
	ec.LogLevel = "error"
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	ec.QuotaBackendBytes = 8 << 30
	// kube-apiserver compacts on its own schedule.
	ec.AutoCompactionRetention = "0"
	// kube-apiserver's watch cache asks for progress; answer often enough
	// that consistent reads from the cache stay fast.
	ec.WatchProgressNotifyInterval = 5 * time.Second
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
	log.Info("embedded etcd ready", "dir", ec.Dir, "client", clientURL.String())
	return &Etcd{
		Endpoints: []string{clientURL.String()},
		CertFile:  cfg.CertFile, KeyFile: cfg.KeyFile, CAFile: cfg.CAFile,
		member: member,
	}, nil
}

// freeLoopbackURL picks a free port on loopback: several servers (tests, HA
// pairs) on one machine must not collide on etcd's fixed default ports.
func freeLoopbackURL(scheme string) (*url.URL, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("pick etcd port: %w", err)
	}
	addr := l.Addr().String()
	l.Close()
	return &url.URL{Scheme: scheme, Host: addr}, nil
}
