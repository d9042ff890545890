// Package kubelet is Capstan's kubelet: it registers the Node, keeps its
// Lease and status, and runs the pods bound to the node on containerd, with
// networking from the CNI plugin, probes, volumes and status reporting as
// upstream's kubelet does.
package kubelet

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/clock"

	"github.com/capstan-net/capstan/kubelet/container"
)

// Config is what a Kubelet needs; everything is passed in.
type Config struct {
	NodeName string
	// NodeIPs are the node's InternalIP addresses.
	NodeIPs []net.IP
	Client  kubernetes.Interface
	Runtime *container.Runtime
	Network Network
	// NodeDir holds this node's pod directories (volumes, sandbox records).
	NodeDir string
	// LogDir holds container logs, <ns>_<pod>_<uid>/<container>/<n>.log.
	LogDir string
	// NetnsDir is where pod network namespaces are pinned.
	NetnsDir string
	// CgroupParent is the cgroup path under which pod cgroups are made.
	CgroupParent string
	// KubeletPort is advertised in the Node's daemonEndpoints.
	KubeletPort int
	// RestartBackoff is the first crash-loop delay; it doubles up to
	// RestartBackoffMax (upstream: 10s and 5m).
	RestartBackoff    time.Duration
	RestartBackoffMax time.Duration
	MaxPods           int
	// RuntimeVersion is reported in nodeInfo (containerd://x.y.z).
	RuntimeVersion string
	// CNIConfDir receives the node's CNI configuration once the node has
	// a podCIDR; IPAMDir and EndpointsDir go into that configuration.
	CNIConfDir   string
	IPAMDir      string
	EndpointsDir string
	MTU          int
	Clock        clock.Clock
	Recorder     record.EventRecorder
	Log          *slog.Logger
}

// Kubelet runs one node's pods.
type Kubelet struct {
	cfg  Config
	pods corelisters.PodLister

	mu      sync.Mutex
	workers map[types.UID]*podWorker
	probes  *probeManager
	ctx     context.Context
}

// New returns a Kubelet.
func New(cfg Config) *Kubelet {
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.RestartBackoff == 0 {
		cfg.RestartBackoff = 10 * time.Second
	}
	if cfg.RestartBackoffMax == 0 {
		cfg.RestartBackoffMax = 5 * time.Minute
	}
	if cfg.MaxPods == 0 {
		cfg.MaxPods = 110
	}
	k := &Kubelet{cfg: cfg, workers: map[types.UID]*podWorker{}}
	k.probes = newProbeManager(k)
	return k
}

// Run registers the node and runs pods until ctx ends. Pods keep running
// after Run returns: a restarted agent adopts them.
func (k *Kubelet) Run(ctx context.Context) error {
	k.ctx = ctx
	for _, d := range []string{k.cfg.NodeDir, k.cfg.LogDir, k.cfg.NetnsDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("kubelet dir: %w", err)
		}
	}
	if err := k.registerNode(ctx); err != nil {
		return err
	}
	go k.runNodeStatus(ctx)
	go k.cfg.Runtime.Run(ctx)
	if err := k.cfg.Runtime.Adopt(ctx); err != nil {
		return err
	}

	factory := informers.NewSharedInformerFactoryWithOptions(k.cfg.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", k.cfg.NodeName).String()
		}))
	inf := factory.Core().V1().Pods()
	k.pods = inf.Lister()
	inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { k.podChanged(obj) },
		UpdateFunc: func(_, obj any) { k.podChanged(obj) },
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			k.podChanged(obj)
		},
	})
	factory.Start(ctx.Done())
	for !inf.Informer().HasSynced() {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(50 * time.Millisecond):
		}
	}
	// Only now, with the full list of our pods known, is it safe to
	// remove what deleted pods left behind.
	if err := k.cleanupOrphans(ctx); err != nil {
		k.cfg.Log.Warn("cleanup orphans", "err", err)
	}
	tick := time.NewTicker(30 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			k.stopWorkers()
			return nil
		case <-tick.C:
			if err := k.cleanupOrphans(ctx); err != nil {
				k.cfg.Log.Warn("cleanup orphans", "err", err)
			}
		}
	}
}

func (k *Kubelet) podChanged(obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	w := k.workers[pod.UID]
	if w == nil {
		if k.ctx == nil || k.ctx.Err() != nil {
			return
		}
		w = newPodWorker(k, pod)
		k.workers[pod.UID] = w
		go w.run(k.ctx)
	}
	w.kick()
}

// workerDone forgets a pod's worker once the pod is gone.
func (k *Kubelet) workerDone(uid types.UID) {
	k.mu.Lock()
	delete(k.workers, uid)
	k.mu.Unlock()
}

func (k *Kubelet) stopWorkers() {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, w := range k.workers {
		w.cancel()
	}
}

// kickPod asks the pod's worker to sync now.
func (k *Kubelet) kickPod(uid types.UID) {
	k.mu.Lock()
	w := k.workers[uid]
	k.mu.Unlock()
	if w != nil {
		w.kick()
	}
}

// podFromCache returns the newest copy of the pod, or nil once it is gone
// from the API.
func (k *Kubelet) podFromCache(ns, name string, uid types.UID) *corev1.Pod {
	p, err := k.pods.Pods(ns).Get(name)
	if err != nil || p.UID != uid {
		return nil
	}
	return p
}

// podDir is where a pod's volumes and sandbox record live.
func (k *Kubelet) podDir(uid types.UID) string {
	return filepath.Join(k.cfg.NodeDir, "pods", string(uid))
}

func (k *Kubelet) podLogDir(pod *corev1.Pod) string {
	return filepath.Join(k.cfg.LogDir, fmt.Sprintf("%s_%s_%s", pod.Namespace, pod.Name, pod.UID))
}

func (k *Kubelet) netnsPath(uid types.UID) string { return filepath.Join(k.cfg.NetnsDir, string(uid)) }

// cleanupOrphans removes containers, sandboxes (netns, CNI attachment,
// IP) and directories of pods that are no longer bound to this node.
func (k *Kubelet) cleanupOrphans(ctx context.Context) error {
	live := map[string]bool{}
	pods, err := k.pods.List(labels.Everything())
	if err != nil {
		return err
	}
	for _, p := range pods {
		live[string(p.UID)] = true
	}
	k.mu.Lock()
	for uid := range k.workers {
		live[string(uid)] = true
	}
	k.mu.Unlock()

	infos, err := k.cfg.Runtime.List(ctx)
	if err != nil {
		return err
	}
	for _, c := range infos {
		if c.PodUID == "" || live[c.PodUID] {
			continue
		}
		k.cfg.Log.Info("removing container of deleted pod", "container", c.ID, "podUID", c.PodUID)
		if err := k.cfg.Runtime.Remove(ctx, c.ID); err != nil {
			k.cfg.Log.Warn("remove orphan container", "container", c.ID, "err", err)
		}
	}
	entries, _ := os.ReadDir(filepath.Join(k.cfg.NodeDir, "pods"))
	for _, e := range entries {
		if live[e.Name()] {
			continue
		}
		uid := types.UID(e.Name())
		k.cfg.Log.Info("removing sandbox of deleted pod", "podUID", uid)
		if err := k.teardownSandbox(ctx, uid); err != nil {
			k.cfg.Log.Warn("remove orphan sandbox", "podUID", uid, "err", err)
			continue
		}
		os.RemoveAll(k.podDir(uid))
		k.removePodCgroup(uid)
	}
	nsEntries, _ := os.ReadDir(k.cfg.NetnsDir)
	for _, e := range nsEntries {
		if !live[e.Name()] {
			k.teardownSandbox(ctx, types.UID(e.Name()))
		}
	}
	var valid []Attachment
	for uid := range live {
		valid = append(valid, Attachment{ContainerID: uid, IfName: "eth0"})
	}
	if k.cfg.Network != nil {
		if err := k.cfg.Network.GC(ctx, valid); err != nil {
			k.cfg.Log.Debug("cni gc", "err", err)
		}
	}
	return nil
}

// KickPodUID asks the worker of the pod with this UID to sync now (used
// when a container exits).
func (k *Kubelet) KickPodUID(uid string) { k.kickPod(types.UID(uid)) }
