package server

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/clock"

	"github.com/capstan-net/capstan/control/controllers/daemonset"
	"github.com/capstan-net/capstan/control/controllers/deployment"
	"github.com/capstan-net/capstan/control/controllers/endpointslice"
	"github.com/capstan-net/capstan/control/controllers/garbagecollector"
	"github.com/capstan-net/capstan/control/controllers/namespace"
	"github.com/capstan-net/capstan/control/controllers/nodeipam"
	"github.com/capstan-net/capstan/control/controllers/nodelifecycle"
	"github.com/capstan-net/capstan/control/controllers/replicaset"
	"github.com/capstan-net/capstan/control/scheduler"
)

// Leader election timing: a dead leader's lease expires 10 s after its
// last renewal and a standby retries every 2 s, so a loop moves to
// another server within about 12 s of its server dying.
const (
	leaseDuration = 10 * time.Second
	renewDeadline = 7 * time.Second
	retryPeriod   = 2 * time.Second
)

// loopDeps is what every control loop is built from.
type loopDeps struct {
	client   kubernetes.Interface
	dynamic  dynamic.Interface
	metadata metadata.Interface
	factory  informers.SharedInformerFactory
	recorder record.EventRecorder
	log      *slog.Logger
}

// loop is one named control loop; start builds it and returns its runner.
type loop struct {
	name  string
	start func(d loopDeps) func(ctx context.Context)
}

// controllerLoops are the loops run under the controller-manager lease.
func controllerLoops(cc ControllersConfig) []loop {
	return []loop{
		{"nodeipam", func(d loopDeps) func(context.Context) {
			c, err := nodeipam.New(d.client, d.factory, d.recorder, cc.ClusterCIDR, cc.NodeCIDRMaskSize, d.log)
			if err != nil {
				d.log.Error("node IPAM disabled", "err", err)
				return func(context.Context) {}
			}
			return c.Run
		}},
		{"nodelifecycle", func(d loopDeps) func(context.Context) {
			c := nodelifecycle.New(d.client, d.factory, d.recorder, clock.RealClock{}, cc.NodeLifecycle, d.log)
			return c.Run
		}},
		{"replicaset", func(d loopDeps) func(context.Context) {
			c := replicaset.New(d.client, d.factory, clock.RealClock{}, d.log)
			return func(ctx context.Context) { c.Run(ctx, 4) }
		}},
		{"deployment", func(d loopDeps) func(context.Context) {
			c := deployment.New(d.client, d.factory, clock.RealClock{}, d.log)
			return func(ctx context.Context) { c.Run(ctx, 4) }
		}},
		{"daemonset", func(d loopDeps) func(context.Context) {
			c := daemonset.New(d.client, d.factory, clock.RealClock{}, d.log)
			return func(ctx context.Context) { c.Run(ctx, 2) }
		}},
		{"garbagecollector", func(d loopDeps) func(context.Context) {
			c := garbagecollector.New(d.metadata, d.client.Discovery(), d.log)
			return func(ctx context.Context) { c.Run(ctx, 2) }
		}},
		{"namespace", func(d loopDeps) func(context.Context) {
			c := namespace.New(d.client, d.dynamic, d.factory, d.log)
			return func(ctx context.Context) { c.Run(ctx, 2) }
		}},
		{"endpointslice", func(d loopDeps) func(context.Context) {
			c := endpointslice.New(d.client, d.factory, d.recorder, d.log)
			return func(ctx context.Context) { c.Run(ctx, 4) }
		}},
	}
}

// schedulerLoops run under their own Lease, as kube-scheduler does.
func schedulerLoops() []loop {
	return []loop{
		{"scheduler", func(d loopDeps) func(context.Context) {
			s := scheduler.New(d.client, d.factory, d.recorder, clock.RealClock{}, rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())), d.log)
			return func(ctx context.Context) { s.Run(ctx, 16) }
		}},
	}
}

// enabled applies a kube-controller-manager style list: "*" is every
// loop, "name" one loop, "-name" switches one off.
func enabled(list []string, name string) bool {
	on := len(list) == 0
	for _, e := range list {
		switch {
		case e == "*":
			on = true
		case e == name:
			return true
		case e == "-"+name:
			return false
		}
	}
	return on
}

// runControllers bootstraps objects, then runs the enabled loops, each
// group under its own Lease so that of several servers on one etcd only
// one runs each loop.
func runControllers(ctx context.Context, cfg *rest.Config, bc bootstrapConfig, cc ControllersConfig, log *slog.Logger) {
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		log.Error("controllers: client", "err", err)
		return
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		log.Error("controllers: dynamic client", "err", err)
		return
	}
	for {
		err := bootstrapObjects(ctx, client, bc.serviceCIDR, bc.firstIP, bc.advertise, bc.port)
		if err == nil {
			break
		}
		log.Warn("bootstrap objects, retrying", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
	md, err := metadata.NewForConfig(cfg)
	if err != nil {
		log.Error("controllers: metadata client", "err", err)
		return
	}
	groups := []struct {
		lease     string
		component string
		loops     []loop
	}{
		{"capstan-controller-manager", "capstan-controller-manager", controllerLoops(cc)},
		{"capstan-scheduler", scheduler.Name, schedulerLoops()},
	}
	id := cc.identity()
	var wg sync.WaitGroup
	for _, g := range groups {
		var loops []loop
		for _, l := range g.loops {
			if enabled(cc.Enabled, l.name) {
				loops = append(loops, l)
			}
		}
		if len(loops) == 0 {
			continue
		}
		run := func(ctx context.Context) {
			bc := record.NewBroadcaster(record.WithContext(ctx))
			bc.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
			defer bc.Shutdown()
			d := loopDeps{client: client, dynamic: dyn, metadata: md, factory: informers.NewSharedInformerFactory(client, 0),
				recorder: bc.NewRecorder(scheme.Scheme, corev1.EventSource{Component: g.component})}
			var runners []func(context.Context)
			for _, l := range loops {
				d.log = log.With("controller", l.name)
				runners = append(runners, l.start(d))
			}
			d.factory.Start(ctx.Done())
			for _, r := range runners {
				go r(ctx)
			}
			<-ctx.Done()
			d.factory.Shutdown()
		}
		wg.Add(1)
		go func(lease string) {
			defer wg.Done()
			if !cc.LeaderElect {
				run(ctx)
				return
			}
			lead(ctx, client, lease, id, log, run)
		}(g.lease)
	}
	wg.Wait()
}

// lead runs fn while this process holds the named Lease in kube-system,
// and campaigns again whenever it loses it, until ctx ends.
func lead(ctx context.Context, client kubernetes.Interface, name, id string, log *slog.Logger, fn func(context.Context)) {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: name, Namespace: "kube-system"},
		Client:     client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: id},
	}
	for ctx.Err() == nil {
		leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   leaseDuration,
			RenewDeadline:   renewDeadline,
			RetryPeriod:     retryPeriod,
			ReleaseOnCancel: true,
			Name:            name,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(ctx context.Context) {
					log.Info("leading", "lease", name, "identity", id)
					fn(ctx)
				},
				OnStoppedLeading: func() { log.Info("stopped leading", "lease", name, "identity", id) },
			},
		})
	}
}

// ControllersConfig selects the built-in control loops.
type ControllersConfig struct {
	// Enabled is like kube-controller-manager's --controllers; empty is "*".
	Enabled []string
	// LeaderElect makes loops run only in the server holding their Lease.
	LeaderElect bool
	// Identity in the Lease; empty is hostname plus a random suffix.
	Identity string
	// ClusterCIDR is carved into one NodeCIDRMaskSize range per Node.
	ClusterCIDR      string
	NodeCIDRMaskSize int
	// NodeLifecycle tunes when silent nodes are marked unreachable and their pods evicted.
	NodeLifecycle nodelifecycle.Config
}

func (c ControllersConfig) identity() string {
	if c.Identity != "" {
		return c.Identity
	}
	h, _ := os.Hostname()
	return fmt.Sprintf("%s_%s", h, strings.SplitN(string(uuid.NewUUID()), "-", 2)[0])
}
