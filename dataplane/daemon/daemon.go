// Package daemon runs the dataplane as a kube-proxy replacement on one node: it loads and
// pins the eBPF datapath, attaches it, watches the API and syncs the maps to what it sees.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/clock"

	"github.com/capstan-net/capstan/dataplane"
	"github.com/capstan-net/capstan/dataplane/ebpf"
	"github.com/capstan-net/capstan/dataplane/healthcheck"
	"github.com/capstan-net/capstan/dataplane/iptables"
	"github.com/capstan-net/capstan/dataplane/proxyhealth"
)

// DefaultPinRoot is where nodes' pin directories live: <root>/<node>.
const DefaultPinRoot = "/sys/fs/bpf/capstan"

// Config is what Run needs. Kubeconfig (or RestConfig) and NodeName are required.
type Config struct {
	Kubeconfig string
	// RestConfig, when set, is used instead of Kubeconfig.
	RestConfig *rest.Config
	NodeName   string

	// PinDir defaults to DefaultPinRoot/<node>; it must be on a bpf filesystem.
	PinDir string
	// CgroupDir is the cgroup v2 directory the socket load balancer attaches to: the node's
	// subtree, not the root, since simulated nodes share a kernel. Empty attaches none.
	CgroupDir string
	// Devices are the node devices (by name) that get the tc NodePort programs.
	Devices []string
	// Netns is the path of the network namespace the devices live in; empty is the daemon's.
	Netns string
	// Mode is who implements Services: ModeEBPF (default), ModeIPTables or ModeNone.
	Mode string
	// Routing is how pods reach other nodes' pods: RoutingNative (a kernel
	// route per remote podCIDR via its node) or RoutingVXLAN (a
	// collect-metadata VXLAN device, tunnel endpoint chosen in BPF).
	// Empty leaves inter-node routing alone (kube-proxy-replacement use).
	Routing string
	// ClusterCIDR is the cluster's pod range; with Masquerade, pod
	// traffic leaving it (and ServiceCIDR) is SNATed to the node address.
	ClusterCIDR netip.Prefix
	ServiceCIDR netip.Prefix
	Masquerade  bool
	// EndpointsDir is where the CNI plugin records pod endpoints; the pod
	// programs are attached to each one's host veth. Empty attaches none.
	EndpointsDir string
	// NodeAddrs, when set, replace the addresses of this node's Node object;
	// empty takes the Node's InternalIPs (waiting for it to register).
	NodeAddrs []netip.Addr
	// ProcDir is where the node's /proc is seen, "/proc" by default; a
	// container whose own /proc/sys is read-only gives the host's.
	ProcDir string
	// CNI, when its ConfDir is set, makes Run write the node's CNI
	// configuration once the programs are attached and the node has its
	// pod CIDRs, so the node turns Ready only when pods get a network.
	CNI CNIConfig
	// DaemonSet ("namespace/name") is the DaemonSet running this daemon,
	// if any: when Run ends because that DaemonSet is gone (helm
	// uninstall, kubectl delete), it removes all it installed on the node
	// (Uninstall); while it exists (a rolling update) everything stays.
	DaemonSet string

	DefaultAlgorithm string
	MaglevSeed       uint32
	// Map sizes; zero takes ebpf's defaults (64k services and backends,
	// 512k connections).
	ServiceEntries int
	BackendEntries int
	Connections    int
	// SNATAddr is the source of traffic reaching an externalIP or load-balancer IP from a
	// node device, bound for a backend on another node: replies must come back through
	// this node. It defaults to the first IPv4 address of NodeAddrs.
	SNATAddr netip.Addr
	// NetworkPolicy map sizes (pods isolated, peer-prefix entries, port entries); zero takes
	// ebpf's defaults. A policy that does not fit gets a PolicyMapFull event.
	PolicyEndpoints, PolicyRules, PolicyPorts int

	// MinSyncInterval defaults to 250ms in eBPF mode, where a sync writes only what changed
	// in the maps, and to 1s (kube-proxy's) in the iptables modes, where each sync is a
	// whole iptables-restore. SyncPeriod (full resync) defaults to 30s.
	MinSyncInterval time.Duration
	SyncPeriod      time.Duration
	// PolicySyncInterval is the least time between policy syncs, 100ms by default: a change
	// to a policy, a pod's labels or a namespace's must hold within a second.
	PolicySyncInterval time.Duration

	// MetricsAddr serves /metrics and kube-proxy's /proxyMode when set, e.g. kube-proxy's
	// "127.0.0.1:10249".
	MetricsAddr string
	// HealthzAddr serves kube-proxy's /healthz and /livez in the node's network namespace
	// when set, e.g. its "0.0.0.0:10256", where load balancers probe a node's service proxy.
	HealthzAddr string
	// Registry receives the metrics; nil makes a new one.
	Registry *prometheus.Registry

	Logger *slog.Logger
	Clock  clock.WithTicker
}

func (c *Config) setDefaults() error {
	if c.NodeName == "" {
		return errors.New("node name is required")
	}
	if c.Mode == "" {
		c.Mode = ModeEBPF
	}
	if err := validMode(c.Mode); err != nil {
		return err
	}
	switch c.Routing {
	case "", RoutingNative, RoutingVXLAN:
	default:
		return fmt.Errorf("routing %q: want %q or %q", c.Routing, RoutingNative, RoutingVXLAN)
	}
	if c.Kubeconfig == "" && c.RestConfig == nil {
		return errors.New("kubeconfig is required")
	}
	if c.PinDir == "" {
		c.PinDir = filepath.Join(DefaultPinRoot, c.NodeName)
	}
	if c.DefaultAlgorithm == "" {
		c.DefaultAlgorithm = dataplane.AlgorithmRandom
	}
	if c.MinSyncInterval == 0 {
		c.MinSyncInterval = time.Second
		if c.Mode == ModeEBPF {
			c.MinSyncInterval = 250 * time.Millisecond
		}
	}
	if c.SyncPeriod == 0 {
		c.SyncPeriod = 30 * time.Second
	}
	if c.PolicySyncInterval == 0 {
		c.PolicySyncInterval = 100 * time.Millisecond
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.ProcDir == "" {
		c.ProcDir = "/proc"
	}
	if c.DaemonSet != "" {
		if ns, name, ok := strings.Cut(c.DaemonSet, "/"); !ok || ns == "" || name == "" {
			return fmt.Errorf("daemonset %q: want namespace/name", c.DaemonSet)
		}
	}
	if c.Clock == nil {
		c.Clock = clock.RealClock{}
	}
	if c.Registry == nil {
		c.Registry = prometheus.NewRegistry()
	}
	if c.Mode == ModeNone {
		// The upstream kube-proxy beside us owns its own ports.
		if c.HealthzAddr == proxyhealth.HealthzAddr {
			c.HealthzAddr = ""
		}
		if c.MetricsAddr == proxyhealth.StatusAddr {
			c.MetricsAddr = ""
		}
	}
	return nil
}

// Run runs the dataplane until ctx ends. On the way out it closes its handles but leaves maps
// and links pinned, so connections and service load balancing carry on until the next Run on
// the same pin directory takes them over.
func Run(ctx context.Context, cfg Config) (err error) {
	if err := cfg.setDefaults(); err != nil {
		return fmt.Errorf("dataplane config: %w", err)
	}
	log := cfg.Logger.With("node", cfg.NodeName)
	if err := checkBPFFS(cfg.PinDir); err != nil {
		return err
	}

	rc := cfg.RestConfig
	if rc == nil {
		rc, err = clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
		if err != nil {
			return fmt.Errorf("load kubeconfig: %w", err)
		}
	}
	rc = rest.CopyConfig(rc)
	rc.UserAgent = "capstan-dataplane/" + cfg.NodeName
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("create client: %w", err)
	}

	if err := resolveNode(ctx, cs, &cfg, log); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	if cfg.DaemonSet != "" {
		owner := watchOwner(ctx, cs, cfg.DaemonSet, log)
		defer func() {
			if err == nil && ctx.Err() != nil && owner.Removed() {
				err = uninstallAfter(cfg, log)
			}
		}()
	}
	if !cfg.SNATAddr.IsValid() {
		for _, a := range cfg.NodeAddrs {
			if a.Is4() {
				cfg.SNATAddr = a
				break
			}
		}
		if !cfg.SNATAddr.IsValid() && len(cfg.Devices) > 0 {
			log.Warn("no SNAT address (--snat-addr or node addresses): externalIP and load-balancer traffic to backends on other nodes will get no reply")
		}
	}
	ecfg := ebpf.Config{
		PinDir:         cfg.PinDir,
		MaglevSeed:     cfg.MaglevSeed,
		ServiceEntries: cfg.ServiceEntries,
		BackendEntries: cfg.BackendEntries,
		Connections:    cfg.Connections,
		SNATAddr:       cfg.SNATAddr,
		Masquerade:     cfg.Masquerade,

		PolicyOnly:      cfg.Mode != ModeEBPF,
		PolicyEndpoints: cfg.PolicyEndpoints,
		PolicyRules:     cfg.PolicyRules,
		PolicyPorts:     cfg.PolicyPorts,
		ClusterCIDR:     cfg.ClusterCIDR,
		ServiceCIDR:     cfg.ServiceCIDR,
		Logger:          log,
	}
	if cfg.Routing == RoutingVXLAN {
		var idx int
		if err := inNetns(cfg.Netns, func() (err error) { idx, err = ensureVXLAN(cfg.ProcDir); return err }); err != nil {
			return err
		}
		ecfg.Routing, ecfg.VXLANIfindex = ebpf.RoutingVXLAN, idx
	}
	dp, err := ebpf.Load(ecfg)
	if err != nil {
		return fmt.Errorf("load datapath: %w", err)
	}
	defer dp.Close()

	if len(cfg.Devices) > 0 || cfg.Routing != "" {
		// A node forwards: NodePort traffic to backends on other nodes (the FIB lookups
		// that send it refuse while forwarding is off) and pods' traffic through the stack.
		// The CNI plugin turns it on too, but only once a pod lands on the node.
		if err := inNetns(cfg.Netns, func() error {
			return os.WriteFile(filepath.Join(cfg.ProcDir, "sys/net/ipv4/ip_forward"), []byte("1"), 0o644)
		}); err != nil {
			return fmt.Errorf("enable forwarding: %w", err)
		}
	}
	ebpfMode := cfg.Mode == ModeEBPF
	if cfg.Mode != ModeNone { // the upstream kube-proxy sets them itself
		if err := setConntrackTimeouts(cfg.Netns, cfg.ProcDir, log); err != nil {
			log.Warn("set conntrack timeouts", "err", err)
		}
	}
	iptCfg := iptables.Config{Netns: cfg.Netns, ClusterCIDR: cfg.ClusterCIDR, ServiceCIDR: cfg.ServiceCIDR, Masquerade: cfg.Masquerade, Logger: log}
	if ebpfMode {
		// A node that ran in iptables or none mode leaves no rules behind, and no
		// policy-only programs beside the full ones.
		if err := iptables.Cleanup(ctx, iptCfg); err != nil {
			log.Warn("remove iptables mode rules", "err", err)
		}
		if _, err := dp.DetachPinned("policy-"); err != nil {
			return fmt.Errorf("detach policy-only programs: %w", err)
		}
	} else if err := leaveEBPFMode(ctx, dp, cfg.NodeName, log); err != nil {
		return err
	}

	var atts []*ebpf.Attachment
	defer func() {
		for _, a := range atts {
			if rerr := a.Release(); rerr != nil {
				log.Warn("release attachment", "err", rerr)
			}
		}
	}()
	if cfg.CgroupDir != "" && ebpfMode {
		a, err := dp.AttachSocketLBPinned(cfg.CgroupDir)
		if err != nil {
			return fmt.Errorf("attach socket lb: %w", err)
		}
		atts = append(atts, a)
	}
	// In every mode: the node programs are policy-only ones outside eBPF mode.
	if len(cfg.Devices) > 0 {
		err := inNetns(cfg.Netns, func() error {
			for _, name := range cfg.Devices {
				ifc, err := net.InterfaceByName(name)
				if err != nil {
					return fmt.Errorf("find device %s: %w", name, err)
				}
				a, err := dp.AttachNodePinned(ifc.Index)
				if err != nil {
					return fmt.Errorf("attach device %s: %w", name, err)
				}
				atts = append(atts, a)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	if ecfg.VXLANIfindex != 0 {
		// Decapsulated packets reach local pods through this program.
		a, err := dp.AttachTunnelPinned(ecfg.VXLANIfindex)
		if err != nil {
			return fmt.Errorf("attach vxlan device: %w", err)
		}
		atts = append(atts, a)
	}
	if n, err := dp.PruneLinks(); err != nil {
		log.Warn("prune stale links", "err", err)
	} else if n > 0 {
		log.Info("pruned stale links", "count", n)
	}

	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	defer broadcaster.Shutdown()
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: cs.CoreV1().Events("")})
	recorder := broadcaster.NewRecorder(scheme.Scheme, v1.EventSource{Component: "capstan-dataplane", Host: cfg.NodeName})

	factory := informers.NewSharedInformerFactory(cs, 0)
	// The tracker calls Changed only once the informers run, after runner is set below.
	var runner *dataplane.Runner
	tracker, err := dataplane.NewTracker(dataplane.TrackerConfig{
		NodeName:         cfg.NodeName,
		DefaultAlgorithm: cfg.DefaultAlgorithm,
		NodeAddrs:        cfg.NodeAddrs,
		Recorder:         recorder,
		Changed:          func() { runner.Trigger() },
		Logger:           log,
	})
	if err != nil {
		return err
	}
	metrics, err := dataplane.NewMetrics(cfg.Registry)
	if err != nil {
		return err
	}
	if err := registerDatapathMetrics(cfg.Registry, dp); err != nil {
		return err
	}
	ctSwept := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "capstan_dataplane_conntrack_swept_total",
		Help: "Expired conntrack entries removed by the daemon's sweep rather than their BPF timers.",
	})
	if err := cfg.Registry.Register(ctSwept); err != nil {
		return fmt.Errorf("register metrics: %w", err)
	}
	// Health checks answer in the node's namespace, where load balancers reach the node.
	hc := healthcheck.New(healthcheck.Config{
		Listen: func(port uint16) (ln net.Listener, err error) {
			err = inNetns(cfg.Netns, func() error {
				ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
				return err
			})
			return ln, err
		},
		Logger: log,
	})
	defer hc.Close()
	var backend dataplane.Backends
	switch cfg.Mode {
	case ModeEBPF:
		backend = dataplane.Backends{ebpf.NewSyncer(dp, log), hc}
	case ModeIPTables:
		ipt, err := iptables.New(iptCfg)
		if err != nil {
			return err
		}
		warner := newAlgorithmWarner(factory.Core().V1().Services().Lister(), recorder)
		backend = dataplane.Backends{warner, ipt, hc}
	case ModeNone:
		ipt, err := iptables.New(iptCfg)
		if err != nil {
			return err
		}
		backend = dataplane.Backends{withoutServices{ipt}}
	}
	health := proxyhealth.New(cfg.Clock, 2*time.Minute)
	syncFn := dataplane.SyncFunc(backend, tracker.Snapshot, metrics, cfg.Clock, log)
	runner, err = dataplane.NewRunner("dataplane", func(ctx context.Context) error {
		health.Queued()
		if err := syncFn(ctx); err != nil {
			return err
		}
		health.Updated()
		return nil
	},
		dataplane.RunnerConfig{
			MinInterval: cfg.MinSyncInterval,
			MaxInterval: cfg.SyncPeriod,
			Clock:       cfg.Clock,
			Logger:      log,
		})
	if err != nil {
		return err
	}

	if cfg.MetricsAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(cfg.Registry, promhttp.HandlerOpts{}))
		mux.Handle("/proxyMode", proxyhealth.ModeHandler(cfg.Mode))
		stop, err := serve(cfg.MetricsAddr, "", mux, log)
		if err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
		defer stop()
	}
	if cfg.HealthzAddr != "" {
		stop, err := serve(cfg.HealthzAddr, cfg.Netns, health, log)
		if err != nil {
			return fmt.Errorf("healthz: %w", err)
		}
		defer stop()
	}

	if err := tracker.Register(factory); err != nil {
		return err
	}
	// NetworkPolicy lives in the pod programs, which every mode attaches.
	var polRunner *dataplane.Runner
	synced := []cache.InformerSynced{tracker.HasSynced}
	ps := newPolicySyncer(cfg.NodeName, cfg.NodeAddrs, dp, factory, recorder, log)
	polRunner, err = dataplane.NewRunner("policy", ps.sync, dataplane.RunnerConfig{
		MinInterval: cfg.PolicySyncInterval,
		MaxInterval: cfg.SyncPeriod,
		Clock:       cfg.Clock,
		Logger:      log,
	})
	if err != nil {
		return err
	}
	polSynced, err := registerPolicyInformers(factory, func() { polRunner.Trigger() })
	if err != nil {
		return err
	}
	synced = append(synced, polSynced...)
	routesKick := make(chan struct{}, 1)
	kick := func() {
		select {
		case routesKick <- struct{}{}:
		default:
		}
	}
	nodeInf := factory.Core().V1().Nodes()
	if cfg.Routing != "" {
		nodeInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: func(any) { kick() }, UpdateFunc: func(_, _ any) { kick() }, DeleteFunc: func(any) { kick() },
		})
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return nil // ctx ended
	}
	// Only now is the first snapshot complete: syncing earlier would delete the services a
	// previous daemon left in the maps, breaking new connections until the caches fill.
	if cfg.EndpointsDir != "" {
		w := newEndpointWatcher(cfg.EndpointsDir, cfg.Netns, dp, log)
		// Policy-only programs route nothing: pods are reached through the stack.
		w.redirect = ebpfMode
		go w.run(ctx)
	}
	sweepDone := make(chan struct{})
	defer func() { <-sweepDone }() // before dp.Close
	go func() {
		defer close(sweepDone)
		sweepConntrack(ctx, dp, cfg.Clock, conntrackSweepInterval, ctSwept, log)
	}()
	switch cfg.Routing {
	case RoutingNative:
		r := &nativeRouter{netns: cfg.Netns, nodes: nodeInf.Lister(), self: cfg.NodeName, log: log}
		go syncLoop(ctx, routesKick, r.sync, log, "node routes")
	case RoutingVXLAN:
		r := &tunnelRouter{netns: cfg.Netns, dp: dp, nodes: nodeInf.Lister(), self: cfg.NodeName, log: log}
		go syncLoop(ctx, routesKick, r.sync, log, "tunnel routes")
	}
	log.Info("dataplane running", "mode", cfg.Mode, "pin_dir", cfg.PinDir, "cgroup", cfg.CgroupDir, "devices", cfg.Devices)
	if cfg.CNI.ConfDir != "" {
		go writeCNIConfig(ctx, cs, &cfg, log)
	}
	polDone := make(chan struct{})
	// Wait for it on the way out: the datapath's maps close after Run returns.
	defer func() { <-polDone }()
	polRunner.Trigger()
	go func() {
		defer close(polDone)
		polRunner.Run(ctx)
	}()
	runner.Trigger()
	runner.Run(ctx)
	log.Info("dataplane stopping; maps and links stay pinned")
	return nil
}

// checkBPFFS fails unless dir (or its nearest existing parent) is on a bpf filesystem, where
// pins outlive the daemon; anywhere else Load's pinning fails with a less helpful error.
func checkBPFFS(dir string) error {
	for p := dir; ; p = filepath.Dir(p) {
		var st unix.Statfs_t
		err := unix.Statfs(p, &st)
		if errors.Is(err, unix.ENOENT) && p != "/" {
			continue
		}
		if err != nil {
			return fmt.Errorf("check pin dir %s: %w", dir, err)
		}
		if st.Type != unix.BPF_FS_MAGIC {
			return fmt.Errorf("pin dir %s is not on a bpf filesystem (mount one: mount -t bpf bpffs /sys/fs/bpf)", dir)
		}
		return nil
	}
}

// inNetns runs fn in the network namespace at path on a locked OS thread, then puts the thread
// back, like containernetworking's ns.Do. A thread that cannot go back stays locked, so Go
// ends it with the goroutine rather than letting other goroutines run in that namespace.
// Threads are not simply thrown away: a child started with Pdeathsig dies with the thread
// that forked it, and Go may have forked one from any thread.
func inNetns(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open own netns: %w", err)
			return
		}
		defer orig.Close()
		target, err := os.Open(path)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open netns %s: %w", path, err)
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", path, err)
			return
		}
		err = fn()
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

func registerDatapathMetrics(reg prometheus.Registerer, dp *ebpf.Datapath) error {
	cs := []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "capstan_dataplane_map_entries", Help: "Entries userspace keeps in a BPF map.",
			ConstLabels: prometheus.Labels{"map": "services"},
		}, func() float64 { return float64(dp.Stats().Services) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "capstan_dataplane_map_entries", Help: "Entries userspace keeps in a BPF map.",
			ConstLabels: prometheus.Labels{"map": "backends"},
		}, func() float64 { return float64(dp.Stats().Backends) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "capstan_dataplane_map_writes_total", Help: "BPF map updates and deletions made by syncs.",
		}, func() float64 { return float64(dp.MapWrites()) }),
		&packetCounters{dp: dp, desc: prometheus.NewDesc("capstan_dataplane_packets_total",
			"Packets the BPF programs counted, by path or drop reason.", []string{"reason"}, nil)},
		newPolicyCounters(dp),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register metrics: %w", err)
		}
	}
	return nil
}

// packetCounters exports the datapath's per-CPU packet counters (summed
// by the reader) at scrape time.
type packetCounters struct {
	dp   *ebpf.Datapath
	desc *prometheus.Desc
}

func (c *packetCounters) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *packetCounters) Collect(ch chan<- prometheus.Metric) {
	counts, err := c.dp.Counters()
	if err != nil {
		return
	}
	for reason, n := range counts {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(n), reason)
	}
}

// serve serves h on addr, listening in netns ("" is the daemon's own).
func serve(addr, netns string, h http.Handler, log *slog.Logger) (stop func(), err error) {
	var ln net.Listener
	err = inNetns(netns, func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server", "addr", addr, "err", err)
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}, nil
}
