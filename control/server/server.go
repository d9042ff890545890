// Package server runs `capstan server`: the upstream kube-apiserver,
// kube-controller-manager and kube-scheduler in one process, on an embedded
// etcd member or an external etcd cluster, with the PKI, the kubeconfigs and
// the join token they need, created on first start under the data dir.
package server

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/capstan-net/capstan/control/addons"
	"github.com/capstan-net/capstan/control/bootstrap"
	"github.com/capstan-net/capstan/control/components"
	"github.com/capstan-net/capstan/control/csrapprover"
	"github.com/capstan-net/capstan/control/etcd"
)

// Config is `capstan server`'s configuration.
type Config struct {
	DataDir     string
	BindAddress string
	SecurePort  int
	// AdvertiseAddress is the address nodes and kubeconfigs use, and the
	// endpoint of the kubernetes Service.
	AdvertiseAddress string
	// ExtraSANs are further names for the API server's certificate.
	ExtraSANs []string

	EtcdEndpoints                         []string
	EtcdCertFile, EtcdKeyFile, EtcdCAFile string
	EtcdPrefix                            string

	ServiceCIDR      string
	ClusterCIDR      string
	NodeCIDRMaskSize int
	NodePortRange    string
	ClusterDomain    string
	// ClusterDNS is the kube-dns Service's address; empty means the tenth
	// of ServiceCIDR.
	ClusterDNS string
	// UpstreamDNS is where cluster DNS sends names outside the cluster
	// (addresses, or "none"); empty means the nodes' resolv.conf.
	UpstreamDNS []string
	// DisableAddons names add-ons not to deploy (and to remove if they were).
	DisableAddons []string
	// LeaderElect runs kube-controller-manager's and kube-scheduler's loops
	// only in the server holding their Lease (several servers on one etcd).
	LeaderElect bool

	// "name=value" flags for each upstream component, over Capstan's defaults.
	APIServerArgs, ControllerManagerArgs, SchedulerArgs []string

	Log *slog.Logger

	firstServiceIP net.IP
	addons         addons.Config
}

// Defaults for `capstan server`.
const (
	DefaultDataDir       = "/var/lib/capstan"
	DefaultServiceCIDR   = "10.96.0.0/16"
	DefaultClusterCIDR   = "10.244.0.0/16"
	DefaultNodePortRange = "30000-32767"
	DefaultClusterDomain = "cluster.local"
)

func (c *Config) setDefaults() error {
	for _, d := range []struct {
		field *string
		value string
	}{
		{&c.DataDir, DefaultDataDir}, {&c.BindAddress, "0.0.0.0"}, {&c.ServiceCIDR, DefaultServiceCIDR},
		{&c.ClusterCIDR, DefaultClusterCIDR}, {&c.NodePortRange, DefaultNodePortRange}, {&c.ClusterDomain, DefaultClusterDomain},
	} {
		if *d.field == "" {
			*d.field = d.value
		}
	}
	if c.SecurePort == 0 {
		c.SecurePort = 6443
	}
	if c.NodeCIDRMaskSize == 0 {
		c.NodeCIDRMaskSize = 24
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.SecurePort < 1 || c.SecurePort > 65535 {
		return fmt.Errorf("--secure-port %d: want 1-65535", c.SecurePort)
	}
	if net.ParseIP(c.BindAddress) == nil {
		return fmt.Errorf("--bind-address %q: want an IP address", c.BindAddress)
	}
	svc, err := netip.ParsePrefix(c.ServiceCIDR)
	if err != nil {
		return fmt.Errorf("--service-cidr: %w", err)
	}
	if _, err := netip.ParsePrefix(c.ClusterCIDR); err != nil {
		return fmt.Errorf("--cluster-cidr: %w", err)
	}
	// The kubernetes Service takes the range's first address, as upstream.
	c.firstServiceIP = net.IP(svc.Masked().Addr().Next().AsSlice())
	c.addons, err = c.addonConfig(svc)
	return err
}

// AdminKubeconfig is the path of the admin kubeconfig in a data dir.
func AdminKubeconfig(dataDir string) string { return filepath.Join(dataDir, "admin.kubeconfig") }

// JoinTokenPath is the path of the node join token in a data dir.
func JoinTokenPath(dataDir string) string { return filepath.Join(dataDir, "join-token") }

// advertise is the address given to clients: the flag, else the bind
// address, else the address of the default route.
func advertise(cfg *Config) (string, error) {
	if cfg.AdvertiseAddress != "" {
		if ip := net.ParseIP(cfg.AdvertiseAddress); ip == nil || ip.IsUnspecified() || ip.IsLoopback() {
			return "", fmt.Errorf("--advertise-address %q: want an address nodes and pods can reach (not loopback)", cfg.AdvertiseAddress)
		}
		return cfg.AdvertiseAddress, nil
	}
	if ip := net.ParseIP(cfg.BindAddress); !ip.IsUnspecified() && !ip.IsLoopback() {
		return cfg.BindAddress, nil
	}
	c, err := net.Dial("udp4", "192.0.2.1:9") // no packet is sent: this picks the route's source
	if err != nil {
		return "", fmt.Errorf("no default route to pick an advertise address from; set --advertise-address: %w", err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).IP.String(), nil
}

// Run serves until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.setDefaults(); err != nil {
		return err
	}
	if os.Getenv("GOGC") == "" {
		// The API server allocates heavily per request: memory is cheaper
		// than the CPU a tight GC target costs it (10-20% more requests/s).
		debug.SetGCPercent(400)
	}
	ov, err := parseOverrides(&cfg)
	if err != nil {
		return err
	}
	if err := checkLayout(cfg.DataDir); err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	adv, err := advertise(&cfg)
	if err != nil {
		return err
	}
	f, err := ensureCerts(&cfg, adv)
	if err != nil {
		return err
	}
	token, err := bootstrap.LoadOrCreateToken(JoinTokenPath(cfg.DataDir))
	if err != nil {
		return err
	}
	if err := writeLayout(cfg.DataDir); err != nil {
		return err
	}
	e, err := startEtcd(ctx, &cfg, f)
	if err != nil {
		return err
	}
	defer e.Close(2 * time.Second)
	return serve(ctx, &cfg, f, e, adv, ov, token)
}

func startEtcd(ctx context.Context, cfg *Config, f *files) (*etcd.Etcd, error) {
	ec := etcd.Config{DataDir: cfg.DataDir, Endpoints: cfg.EtcdEndpoints,
		CertFile: cfg.EtcdCertFile, KeyFile: cfg.EtcdKeyFile, CAFile: cfg.EtcdCAFile}
	if len(cfg.EtcdEndpoints) == 0 {
		ec.CertFile, ec.KeyFile, ec.CAFile = f.etcdClientCert, f.etcdClientKey, f.etcdCA.CertFile
		ec.ServerCertFile, ec.ServerKeyFile = f.etcdServerCert, f.etcdServerKey
	}
	return etcd.Start(ctx, ec, cfg.Log)
}

// serve runs the three components and Capstan's own loops. The API server
// stops with ctx; the controller manager and scheduler get a context that
// does not end, since on losing their lease they exit the process (upstream
// behaviour), which must not preempt the API server's graceful shutdown.
func serve(ctx context.Context, cfg *Config, f *files, e *etcd.Etcd, adv string, ov *overrides, token string) error {
	runAPI, err := components.APIServer().Parse(components.Merge(apiserverArgs(cfg, f, e, adv), ov.apiserver))
	if err != nil {
		return err
	}
	runKCM, err := components.ControllerManager().Parse(components.Merge(controllerManagerArgs(cfg, f), ov.controllerManager))
	if err != nil {
		return err
	}
	runSched, err := components.Scheduler().Parse(components.Merge(schedulerArgs(cfg, f), ov.scheduler))
	if err != nil {
		return err
	}
	errc := make(chan error, 3)
	apiDone := make(chan struct{})
	go func() {
		defer close(apiDone)
		if err := runAPI(ctx); err != nil {
			errc <- err
		}
	}()
	rc, err := localConfig(f.serverKubeconfig)
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	if err := waitReady(ctx, cs, errc); err != nil {
		return stoppedEarly(ctx, err)
	}
	if err := ensureObjects(ctx, cs, token, errc); err != nil {
		return stoppedEarly(ctx, err)
	}
	if err := deployAddons(ctx, cfg, rc, errc); err != nil {
		return stoppedEarly(ctx, err)
	}
	if err := writeAdminKubeconfig(cfg, f); err != nil {
		return err
	}
	forever := context.WithoutCancel(ctx)
	go func() { errc <- stopped("kube-controller-manager", runKCM(forever)) }()
	go func() { errc <- stopped("kube-scheduler", runSched(forever)) }()
	go csrapprover.Run(ctx, cs)
	cfg.Log.Info("capstan server ready", "url", "https://"+net.JoinHostPort(adv, fmt.Sprint(cfg.SecurePort)),
		"kubeconfig", f.adminKubeconfig, "joinToken", JoinTokenPath(cfg.DataDir))
	select {
	case <-ctx.Done():
	case err := <-errc:
		return err
	}
	return shutdown(cfg, apiDone)
}

// shutdown waits a little for the API server to finish. The controller
// manager and scheduler exit the process with status 1 when they lose their
// leases, which a stopping API server makes them do; once the server is
// asked to stop, that exit is the clean one it was asked for.
func shutdown(cfg *Config, apiDone <-chan struct{}) error {
	klog.OsExit = func(int) { os.Exit(0) }
	// The API server stops listening at once, then drains requests in
	// flight, which the in-process controller manager keeps making. Bound the
	// wait, with etcd's, below the controller manager's lease renewal
	// deadline (10 s): past it, it would exit the process with an error.
	select {
	case <-apiDone:
	case <-time.After(3 * time.Second):
		cfg.Log.Info("kube-apiserver still draining requests after 3s; exiting")
	}
	return nil
}

// stopped is the error of a component that should never return.
func stopped(name string, err error) error {
	if err == nil {
		return fmt.Errorf("%s stopped", name)
	}
	return err
}

// stoppedEarly is err, unless the server was asked to stop while starting.
func stoppedEarly(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func localConfig(kubeconfig string) (*rest.Config, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("server kubeconfig: %w", err)
	}
	rc.UserAgent = "capstan-server"
	return rc, nil
}

// waitReady waits for the API server's /readyz, or for it to fail.
func waitReady(ctx context.Context, cs kubernetes.Interface, errc <-chan error) error {
	deadline := time.Now().Add(3 * time.Minute)
	var last error
	for time.Now().Before(deadline) {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, last = cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(rctx)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case err := <-errc:
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	return fmt.Errorf("kube-apiserver not ready after 3m: %w", last)
}

// ensureObjects creates the join token's Secret and the RBAC nodes need,
// retrying while the API server settles.
func ensureObjects(ctx context.Context, cs kubernetes.Interface, token string, errc <-chan error) error {
	return retry(ctx, errc, "bootstrap objects", func() error {
		if err := bootstrap.EnsureTokenSecret(ctx, cs, token); err != nil {
			return err
		}
		return bootstrap.EnsureRBAC(ctx, cs)
	}, nil)
}

// deployAddons applies the add-ons and removes the disabled ones. An
// add-on the API server refuses (its DNS address taken by another Service,
// say) fails the start with the reason, rather than leaving a cluster
// without DNS that looks healthy.
func deployAddons(ctx context.Context, cfg *Config, rc *rest.Config, errc <-chan error) error {
	a, err := addons.NewApplier(rc, cfg.Log)
	if err != nil {
		return err
	}
	err = retry(ctx, errc, "add-ons", func() error { return a.Sync(ctx, cfg.addons, cfg.DisableAddons) }, addons.Permanent)
	if addons.Permanent(err) {
		return fmt.Errorf("%w (--disable-addon leaves an add-on out)", err)
	}
	return err
}

// retry calls f once a second for up to a minute, while the API server
// settles, until it succeeds, returns an error permanent says is final, or
// a component fails.
func retry(ctx context.Context, errc <-chan error, what string, f func() error, permanent func(error) bool) error {
	var err error
	for range 60 {
		if err = f(); err == nil || permanent != nil && permanent(err) {
			return err
		}
		select {
		case e := <-errc:
			return e
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
	return fmt.Errorf("%s: %w", what, err)
}
