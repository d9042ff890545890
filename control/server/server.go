// Package server runs `capstan server`: etcd (embedded or external), the
// API server over HTTPS, storage compaction and the built-in controllers.
package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	"k8s.io/kubernetes/pkg/api/legacyscheme"

	"github.com/capstan-net/capstan/control/apiserver"
	"github.com/capstan-net/capstan/control/etcd"
	"github.com/capstan-net/capstan/control/pki"
	"github.com/capstan-net/capstan/control/registry"
	"github.com/capstan-net/capstan/control/storage"
)

// Config is `capstan server`'s configuration.
type Config struct {
	DataDir     string
	BindAddress string
	// SecurePort to listen on; 0 picks a free port (tests).
	SecurePort   int
	EtcdServers  []string
	EtcdCertFile string
	EtcdKeyFile  string
	EtcdCAFile   string
	EtcdPrefix   string
	// ServiceCIDR for ClusterIPs and NodePortRange "30000-32767".
	ServiceCIDR   string
	NodePortRange string
	// CompactionInterval between etcd compactions (0 disables).
	CompactionInterval time.Duration
	// BookmarkInterval between watch bookmarks.
	BookmarkInterval time.Duration
	// AdvertiseAddress is put in kubeconfigs and the kubernetes Service.
	AdvertiseAddress string
	// Controllers selects and elects the built-in control loops.
	Controllers ControllersConfig
	// Ready is closed once the server serves (tests use it).
	Ready chan<- struct{}
}

// Defaults fills unset fields with the documented defaults.
func (c *Config) Defaults() {
	if c.DataDir == "" {
		c.DataDir = "/var/lib/capstan"
	}
	if c.BindAddress == "" {
		c.BindAddress = "0.0.0.0"
	}
	if c.ServiceCIDR == "" {
		c.ServiceCIDR = "10.96.0.0/16"
	}
	if c.NodePortRange == "" {
		c.NodePortRange = "30000-32767"
	}
	if c.Controllers.ClusterCIDR == "" {
		c.Controllers.ClusterCIDR = "10.244.0.0/16"
	}
	if c.Controllers.NodeCIDRMaskSize == 0 {
		c.Controllers.NodeCIDRMaskSize = 24
	}
	if c.CompactionInterval == 0 {
		c.CompactionInterval = 5 * time.Minute
	}
	if c.BookmarkInterval == 0 {
		c.BookmarkInterval = time.Minute
	}
}

// AdminKubeconfig is the path of the admin kubeconfig in a data dir.
func AdminKubeconfig(dataDir string) string { return filepath.Join(dataDir, "admin.kubeconfig") }

// JoinTokenPath is the path of the node join token in a data dir.
func JoinTokenPath(dataDir string) string { return filepath.Join(dataDir, "join-token") }

// Run serves until ctx ends.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	cfg.Defaults()
	if os.Getenv("GOGC") == "" {
		// The server allocates heavily per request; memory is cheaper
		// than the CPU a tight GC target costs it.
		debug.SetGCPercent(300)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	pkiDir := filepath.Join(cfg.DataDir, "pki")
	ca, err := pki.LoadOrCreateCA(pkiDir)
	if err != nil {
		return fmt.Errorf("certificate authority: %w", err)
	}
	token, err := pki.LoadOrCreateToken(JoinTokenPath(cfg.DataDir))
	if err != nil {
		return fmt.Errorf("join token: %w", err)
	}
	advertise := cfg.AdvertiseAddress
	if advertise == "" {
		advertise = cfg.BindAddress
		if ip := net.ParseIP(advertise); ip == nil || ip.IsUnspecified() {
			advertise = "127.0.0.1"
		}
	}
	hosts := []string{"127.0.0.1", "localhost", advertise, "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}
	if first, err := registry.FirstServiceIP(cfg.ServiceCIDR); err == nil {
		hosts = append(hosts, first.String())
	}
	if h, err := os.Hostname(); err == nil {
		hosts = append(hosts, h)
	}
	certFile, keyFile, err := pki.EnsureServingCert(pkiDir, ca, hosts)
	if err != nil {
		return fmt.Errorf("serving certificate: %w", err)
	}

	ec, err := etcd.Start(ctx, etcd.Config{
		DataDir: cfg.DataDir, Endpoints: cfg.EtcdServers,
		CertFile: cfg.EtcdCertFile, KeyFile: cfg.EtcdKeyFile, CAFile: cfg.EtcdCAFile, Prefix: cfg.EtcdPrefix,
		ProgressNotifyInterval: cfg.BookmarkInterval,
	}, log)
	if err != nil {
		return err
	}
	defer ec.Close()

	// Stored bytes are versioned JSON; decoding neither converts nor defaults.
	jsonSer := json.NewSerializerWithOptions(json.DefaultMetaFactory, legacyscheme.Scheme, legacyscheme.Scheme, json.SerializerOptions{})
	codec := runtime.NewCodec(
		legacyscheme.Codecs.EncoderForVersion(jsonSer, schema.GroupVersions(storageVersions())),
		legacyscheme.Codecs.UniversalDeserializer())
	store := storage.New(ec.Client, codec, log)
	reg := registry.New()
	alloc, err := registry.NewAllocator(ec.Client, cfg.ServiceCIDR, cfg.NodePortRange)
	if err != nil {
		return err
	}
	proxy, err := nodeProxy(ca, store, reg, log)
	if err != nil {
		return err
	}
	api, err := apiserver.New(apiserver.Config{
		Registry: reg, Store: store, Log: log, Hooks: alloc, NodeProxy: proxy,
		Auth:             &apiserver.Authenticator{CA: ca, JoinToken: token},
		Metrics:          apiserver.NewMetrics(),
		BookmarkInterval: cfg.BookmarkInterval,
		Ready: func(ctx context.Context) error {
			_, err := store.CurrentRevision(ctx)
			return err
		},
		ExternalAddress: net.JoinHostPort(advertise, strconv.Itoa(cfg.SecurePort)),
	})
	if err != nil {
		return err
	}

	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	listener, err := net.Listen("tcp", net.JoinHostPort(cfg.BindAddress, strconv.Itoa(cfg.SecurePort)))
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	port := listener.Addr().(*net.TCPAddr).Port
	srv := &http.Server{
		Handler:           api.Handler(),
		ReadHeaderTimeout: 30 * time.Second,
		TLSConfig: &tls.Config{
			ClientAuth: tls.VerifyClientCertIfGiven,
			ClientCAs:  pool,
			MinVersion: tls.VersionTLS12,
			NextProtos: []string{"h2", "http/1.1"},
		},
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}

	adminCert, adminKey, err := ca.NewKeyPair("kubernetes-admin", []string{apiserver.GroupMasters}, false, nil)
	if err != nil {
		return err
	}
	serverURL := "https://" + net.JoinHostPort(advertise, strconv.Itoa(port))
	if err := pki.WriteKubeconfig(AdminKubeconfig(cfg.DataDir), pki.Kubeconfig{
		Server: serverURL, CAPEM: ca.CertPEM, CertPEM: adminCert, KeyPEM: adminKey, User: "admin",
	}); err != nil {
		return fmt.Errorf("write admin kubeconfig: %w", err)
	}

	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(listener, certFile, keyFile) }()
	go store.RunCompactor(ctx, cfg.CompactionInterval)
	log.Info("capstan server listening", "url", serverURL, "kubeconfig", AdminKubeconfig(cfg.DataDir))

	loopback, err := loopbackConfig(AdminKubeconfig(cfg.DataDir))
	if err != nil {
		return err
	}
	first, _ := registry.FirstServiceIP(cfg.ServiceCIDR)
	go runControllers(ctx, loopback, bootstrapConfig{serviceCIDR: cfg.ServiceCIDR, firstIP: first.String(), advertise: advertise, port: port}, cfg.Controllers, log)
	if cfg.Ready != nil {
		close(cfg.Ready)
	}

	select {
	case <-ctx.Done():
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve: %w", err)
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	return nil
}

// storageVersions are the versions objects are written in.
func storageVersions() []schema.GroupVersion {
	return []schema.GroupVersion{
		{Version: "v1"}, {Group: "apps", Version: "v1"}, {Group: "discovery.k8s.io", Version: "v1"},
		{Group: "networking.k8s.io", Version: "v1"}, {Group: "coordination.k8s.io", Version: "v1"},
		{Group: "events.k8s.io", Version: "v1"},
	}
}
