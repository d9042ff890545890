package kubelet

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/distribution/reference"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/capstan-net/capstan/kubelet/container"
)

// waiting is why a container is not running right now, as shown in its
// status (ContainerCreating, ErrImagePull, CrashLoopBackOff, ...).
type waiting struct{ reason, message string }

// podWorker owns one pod: it alone starts and stops the pod's containers,
// so there is no locking between pods and no two syncs of one pod race.
type podWorker struct {
	k               *Kubelet
	ns, name        string
	uid             types.UID
	kickc           chan struct{}
	cancel          context.CancelFunc
	ctx             context.Context
	waits           map[string]waiting   // by container name
	pullRetry       map[string]time.Time // earliest next pull, by container name
	pullFails       map[string]int
	sandboxErr      string
	lastPosted      *corev1.PodStatus
	vols            map[string]string
	volsAt          time.Time
	networkTornDown bool
}

func newPodWorker(k *Kubelet, pod *corev1.Pod) *podWorker {
	ctx, cancel := context.WithCancel(k.ctx)
	return &podWorker{k: k, ns: pod.Namespace, name: pod.Name, uid: pod.UID,
		kickc: make(chan struct{}, 1), ctx: ctx, cancel: cancel,
		waits: map[string]waiting{}, pullRetry: map[string]time.Time{}, pullFails: map[string]int{}}
}

func (w *podWorker) kick() {
	select {
	case w.kickc <- struct{}{}:
	default:
	}
}

func (w *podWorker) run(context.Context) {
	ctx := w.ctx
	for {
		done := w.sync(ctx)
		if done {
			w.k.workerDone(w.uid)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-w.kickc:
		case <-time.After(time.Second):
		}
	}
}

func (w *podWorker) log() *slog.Logger {
	return w.k.cfg.Log.With("pod", w.ns+"/"+w.name)
}

// podContainers groups this pod's containers by name, newest attempt first.
func (w *podWorker) podContainers(ctx context.Context) (map[string][]container.Info, error) {
	infos, err := w.k.cfg.Runtime.ListPod(ctx, string(w.uid))
	if err != nil {
		return nil, err
	}
	out := map[string][]container.Info{}
	for _, c := range infos {
		if c.PodUID == string(w.uid) {
			out[c.ContainerKey] = append(out[c.ContainerKey], c)
		}
	}
	for _, list := range out {
		sort.Slice(list, func(i, j int) bool { return list[i].Attempt > list[j].Attempt })
	}
	return out, nil
}

// sync moves the pod one step toward its spec; true means the pod is gone
// and the worker can stop.
func (w *podWorker) sync(ctx context.Context) bool {
	pod := w.k.podFromCache(w.ns, w.name, w.uid)
	cs, err := w.podContainers(ctx)
	if err != nil {
		w.log().Warn("list containers", "err", err)
		return false
	}
	if pod == nil || pod.DeletionTimestamp != nil {
		grace := 2 * time.Second
		if pod != nil && pod.DeletionGracePeriodSeconds != nil {
			grace = time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
		}
		if err := w.terminate(ctx, pod, cs, grace); err != nil {
			w.log().Warn("terminate pod", "err", err)
			return false
		}
		if err := w.cleanup(ctx, pod, cs); err != nil {
			w.log().Warn("clean up pod", "err", err)
			return false
		}
		if pod != nil {
			zero := int64(0)
			err := w.k.cfg.Client.CoreV1().Pods(w.ns).Delete(ctx, w.name, metav1.DeleteOptions{
				GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &w.uid}})
			// Forbidden too: the node authorizer cannot tie a pod that is
			// already gone (deleted with grace 0) to this node.
			if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) && !apierrors.IsForbidden(err) {
				w.log().Warn("delete pod", "err", err)
				return false
			}
		}
		return true
	}

	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		// A finished pod keeps its containers (for logs) but no longer
		// needs its network.
		w.terminate(ctx, pod, cs, 0)
		if !w.networkTornDown {
			if err := w.k.teardownSandbox(ctx, w.uid); err == nil {
				w.networkTornDown = true
			}
		}
		return false
	}

	t0 := time.Now()
	sb, err := w.k.ensureSandbox(ctx, pod)
	if d := time.Since(t0); d > 50*time.Millisecond {
		w.log().Debug("sandbox ready", "took", d)
	}
	if err != nil {
		msg := err.Error()
		if msg != w.sandboxErr {
			w.k.event(pod, corev1.EventTypeWarning, "FailedCreatePodSandBox", "Failed to create pod sandbox: %v", err)
		}
		w.sandboxErr = msg
		w.postStatus(ctx, pod, cs, nil)
		return false
	}
	w.sandboxErr = ""
	vols, err := w.volumes(ctx, pod)
	if err != nil {
		for _, c := range allContainers(pod) {
			if len(cs[c.Name]) == 0 {
				w.waits[c.Name] = waiting{"ContainerCreating", err.Error()}
			}
		}
		w.k.event(pod, corev1.EventTypeWarning, "FailedMount", "%v", err)
		w.postStatus(ctx, pod, cs, sb)
		return false
	}

	initDone := true
	for i := range pod.Spec.InitContainers {
		c := &pod.Spec.InitContainers[i]
		latest := first(cs[c.Name])
		if latest != nil && latest.State == container.StateExited && latest.ExitCode == 0 {
			continue
		}
		initDone = false
		if latest != nil && latest.State == container.StateExited && pod.Spec.RestartPolicy == corev1.RestartPolicyNever {
			break // the pod has failed; status says so
		}
		w.step(ctx, pod, c, cs[c.Name], sb, vols, true)
		break
	}
	if initDone {
		for i := range pod.Spec.Containers {
			c := &pod.Spec.Containers[i]
			w.step(ctx, pod, c, cs[c.Name], sb, vols, false)
		}
	}
	// Re-read: step may have started or removed containers.
	if fresh, err := w.podContainers(ctx); err == nil {
		cs = fresh
	}
	w.postStatus(ctx, pod, cs, sb)
	return false
}

// volumeRefresh is how often configMap and secret volumes are rewritten
// from the API (upstream's kubelet syncs them about once a minute).
const volumeRefresh = time.Minute

// volumes prepares the pod's volumes the first time and refreshes them
// every volumeRefresh, so a syncing pod does not read the API every second.
func (w *podWorker) volumes(ctx context.Context, pod *corev1.Pod) (map[string]string, error) {
	if w.vols != nil && time.Since(w.volsAt) < volumeRefresh {
		return w.vols, nil
	}
	vols, err := w.k.prepareVolumes(ctx, pod)
	if err != nil {
		return nil, err
	}
	w.vols, w.volsAt = vols, time.Now()
	return vols, nil
}

func first(list []container.Info) *container.Info {
	if len(list) == 0 {
		return nil
	}
	return &list[0]
}

func allContainers(pod *corev1.Pod) []*corev1.Container {
	var out []*corev1.Container
	for i := range pod.Spec.InitContainers {
		out = append(out, &pod.Spec.InitContainers[i])
	}
	for i := range pod.Spec.Containers {
		out = append(out, &pod.Spec.Containers[i])
	}
	return out
}

// step moves one container one step: start it, restart it after back-off,
// or stop it when its liveness probe failed.
func (w *podWorker) step(ctx context.Context, pod *corev1.Pod, c *corev1.Container, history []container.Info, sb *sandbox, vols map[string]string, isInit bool) {
	latest := first(history)
	hash := specHash(c)
	if latest == nil {
		w.start(ctx, pod, c, 0, sb, vols, isInit, hash)
		return
	}
	switch latest.State {
	case container.StateRunning:
		delete(w.waits, c.Name)
		podIP := ""
		if len(sb.IPs) > 0 {
			podIP = sb.IPs[0]
		}
		w.k.probes.ensure(w.ctx, pod, c, latest.ID, podIP)
		ps := w.k.probes.state(latest.ID)
		switch {
		case ps.liveFailed || ps.startFailed:
			kind := "Liveness"
			if ps.startFailed {
				kind = "Startup"
			}
			w.k.event(pod, corev1.EventTypeWarning, "Unhealthy", "%s probe failed", kind)
			w.k.event(pod, corev1.EventTypeNormal, "Killing", "Container %s failed %s probe, will be restarted", c.Name, kind)
			w.stopContainer(ctx, pod, c, latest.ID, podGrace(pod))
		case latest.Labels[container.LabelSpecHash] != hash:
			w.k.event(pod, corev1.EventTypeNormal, "Killing", "Container %s definition changed, will be restarted", c.Name)
			w.stopContainer(ctx, pod, c, latest.ID, podGrace(pod))
		}
	case container.StateCreated:
		// Created but never started (agent stopped in between): start over.
		w.k.cfg.Runtime.Remove(ctx, latest.ID)
		w.start(ctx, pod, c, latest.Attempt, sb, vols, isInit, hash)
	case container.StateExited:
		w.k.probes.forget(latest.ID)
		policy := pod.Spec.RestartPolicy
		restart := policy == corev1.RestartPolicyAlways || (policy == corev1.RestartPolicyOnFailure && latest.ExitCode != 0)
		if isInit {
			restart = policy != corev1.RestartPolicyNever && latest.ExitCode != 0
		}
		if !restart {
			delete(w.waits, c.Name)
			return
		}
		delay := w.k.cfg.RestartBackoff << min(latest.Attempt, 20)
		if delay > w.k.cfg.RestartBackoffMax || delay <= 0 {
			delay = w.k.cfg.RestartBackoffMax
		}
		if left := time.Until(latest.Finished.Add(delay)); left > 0 {
			msg := fmt.Sprintf("back-off %s restarting failed container=%s pod=%s_%s(%s)", delay, c.Name, pod.Name, pod.Namespace, pod.UID)
			if w.waits[c.Name].reason != "CrashLoopBackOff" {
				w.k.event(pod, corev1.EventTypeWarning, "BackOff", "Back-off restarting failed container %s in pod %s", c.Name, pod.Name)
			}
			w.waits[c.Name] = waiting{"CrashLoopBackOff", msg}
			return
		}
		// Keep only the latest exited instance, for `logs --previous`
		// and lastState.
		for _, old := range history[1:] {
			w.k.cfg.Runtime.Remove(ctx, old.ID)
		}
		w.start(ctx, pod, c, latest.Attempt+1, sb, vols, isInit, hash)
	}
}

func podGrace(pod *corev1.Pod) time.Duration {
	if pod.Spec.TerminationGracePeriodSeconds != nil {
		return time.Duration(*pod.Spec.TerminationGracePeriodSeconds) * time.Second
	}
	return 30 * time.Second
}

func specHash(c *corev1.Container) string {
	data, _ := json.Marshal(c)
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:8])
}

func containerID(uid types.UID, name string, attempt int) string {
	u := string(uid)
	if len(u) > 8 {
		u = u[:8]
	}
	return fmt.Sprintf("%s-%s-%d", u, name, attempt)
}

// start pulls the image if needed, then creates and starts one instance.
func (w *podWorker) start(ctx context.Context, pod *corev1.Pod, c *corev1.Container, attempt int, sb *sandbox, vols map[string]string, isInit bool, hash string) {
	rt := w.k.cfg.Runtime
	ref, err := normalizeImage(c.Image)
	if err != nil {
		w.waits[c.Name] = waiting{"InvalidImageName", err.Error()}
		return
	}
	if t, ok := w.pullRetry[c.Name]; ok && time.Now().Before(t) {
		w.waits[c.Name] = waiting{"ImagePullBackOff", fmt.Sprintf("Back-off pulling image %q", c.Image)}
		return
	}
	img, err := rt.EnsureImage(ctx, ref, c.ImagePullPolicy == corev1.PullAlways, c.ImagePullPolicy == corev1.PullNever)
	if err != nil {
		var pe *container.PullError
		switch {
		case errors.As(err, &pe):
			w.pullFails[c.Name]++
			delay := w.k.cfg.RestartBackoff << min(w.pullFails[c.Name]-1, 20)
			if delay > w.k.cfg.RestartBackoffMax {
				delay = w.k.cfg.RestartBackoffMax
			}
			w.pullRetry[c.Name] = time.Now().Add(delay)
			w.waits[c.Name] = waiting{"ErrImagePull", err.Error()}
			w.k.event(pod, corev1.EventTypeWarning, "Failed", "Failed to pull image %q: %v", c.Image, pe.Err)
		case errors.Is(err, container.ErrImageNeverPull):
			w.waits[c.Name] = waiting{"ErrImageNeverPull", fmt.Sprintf("Container image %q is not present with pull policy of Never", c.Image)}
		default:
			w.waits[c.Name] = waiting{"ErrImagePull", err.Error()}
		}
		return
	}
	delete(w.pullRetry, c.Name)
	delete(w.pullFails, c.Name)

	id := containerID(pod.UID, c.Name, attempt)
	// A leftover with this ID (a failed earlier try) is in the way.
	rt.Remove(ctx, id)
	opts, err := w.k.containerSpec(ctx, pod, c, sb, vols, img, id)
	if err != nil {
		w.waits[c.Name] = waiting{"CreateContainerConfigError", err.Error()}
		w.k.event(pod, corev1.EventTypeWarning, "Failed", "Error: %v", err)
		return
	}
	logPath := filepath.Join(w.k.podLogDir(pod), c.Name, strconv.Itoa(attempt)+".log")
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		w.waits[c.Name] = waiting{"CreateContainerError", err.Error()}
		return
	}
	labels := map[string]string{
		container.LabelPodUID:       string(pod.UID),
		container.LabelPodName:      pod.Name,
		container.LabelPodNamespace: pod.Namespace,
		container.LabelContainer:    c.Name,
		container.LabelAttempt:      strconv.Itoa(attempt),
		container.LabelLogPath:      logPath,
		container.LabelSpecHash:     hash,
	}
	if isInit {
		labels[container.LabelInit] = "true"
	}
	t0 := time.Now()
	if err := rt.Create(ctx, id, img, labels, opts); err != nil {
		w.waits[c.Name] = waiting{"CreateContainerError", err.Error()}
		w.k.event(pod, corev1.EventTypeWarning, "Failed", "Error: %v", err)
		return
	}
	w.k.event(pod, corev1.EventTypeNormal, "Created", "Created container %s", c.Name)
	if err := rt.Start(ctx, id); err != nil {
		w.waits[c.Name] = waiting{"RunContainerError", err.Error()}
		w.k.event(pod, corev1.EventTypeWarning, "Failed", "Error: %v", err)
		return
	}
	delete(w.waits, c.Name)
	w.log().Debug("container started", "container", c.Name, "took", time.Since(t0))
	w.k.event(pod, corev1.EventTypeNormal, "Started", "Started container %s", c.Name)
}

// normalizeImage turns "busybox" into "docker.io/library/busybox:latest",
// the name containerd stores, as upstream's image service does.
func normalizeImage(image string) (string, error) {
	named, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return "", fmt.Errorf("invalid image name %q: %w", image, err)
	}
	return reference.TagNameOnly(named).String(), nil
}

// stopContainer runs the preStop hook, then stops the container within
// what is left of grace.
func (w *podWorker) stopContainer(ctx context.Context, pod *corev1.Pod, c *corev1.Container, id string, grace time.Duration) {
	deadline := time.Now().Add(grace)
	if pod != nil && c != nil && c.Lifecycle != nil && c.Lifecycle.PreStop != nil && grace > 0 {
		hctx, cancel := context.WithDeadline(ctx, deadline)
		if err := w.runHook(hctx, c, c.Lifecycle.PreStop, id); err != nil {
			w.k.event(pod, corev1.EventTypeWarning, "FailedPreStopHook", "PreStopHook failed: %v", err)
		}
		cancel()
	}
	left := time.Until(deadline)
	if left < 0 {
		left = 0
	}
	if err := w.k.cfg.Runtime.Stop(ctx, id, left); err != nil {
		w.log().Warn("stop container", "container", id, "err", err)
	}
}

func (w *podWorker) runHook(ctx context.Context, c *corev1.Container, h *corev1.LifecycleHandler, id string) error {
	switch {
	case h.Exec != nil:
		code, err := w.k.cfg.Runtime.Exec(ctx, id, h.Exec.Command, false, nil, nil, nil, nil)
		if err != nil {
			return err
		}
		if code != 0 {
			return fmt.Errorf("exit code %d", code)
		}
	case h.HTTPGet != nil:
		ip := ""
		if sb := w.k.loadSandbox(w.uid); sb != nil && len(sb.IPs) > 0 {
			ip = sb.IPs[0]
		}
		return httpProbe(ctx, c, h.HTTPGet, ip)
	case h.Sleep != nil:
		select {
		case <-time.After(time.Duration(h.Sleep.Seconds) * time.Second):
		case <-ctx.Done():
		}
	}
	return nil
}

// terminate stops every running container of the pod in parallel, each
// with its preStop hook and the grace period.
func (w *podWorker) terminate(ctx context.Context, pod *corev1.Pod, cs map[string][]container.Info, grace time.Duration) error {
	specs := map[string]*corev1.Container{}
	if pod != nil {
		for _, c := range allContainers(pod) {
			specs[c.Name] = c
		}
	}
	var wg sync.WaitGroup
	for name, list := range cs {
		for _, info := range list {
			w.k.probes.forget(info.ID)
			if info.State != container.StateRunning {
				continue
			}
			if pod != nil && grace > 0 {
				w.k.event(pod, corev1.EventTypeNormal, "Killing", "Stopping container %s", name)
			}
			wg.Add(1)
			go func(c *corev1.Container, id string) {
				defer wg.Done()
				w.stopContainer(ctx, pod, c, id, grace)
			}(specs[name], info.ID)
		}
	}
	wg.Wait()
	return nil
}

// cleanup removes everything the pod had on the node: containers,
// network (CNI DEL, netns, IP), volumes and logs.
func (w *podWorker) cleanup(ctx context.Context, pod *corev1.Pod, cs map[string][]container.Info) error {
	var errs []error
	for _, list := range cs {
		for _, info := range list {
			if err := w.k.cfg.Runtime.Remove(ctx, info.ID); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := w.k.teardownSandbox(ctx, w.uid); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	os.RemoveAll(w.k.podDir(w.uid))
	w.k.removePodCgroup(w.uid)
	if pod != nil {
		os.RemoveAll(w.k.podLogDir(pod))
	} else {
		matches, _ := filepath.Glob(filepath.Join(w.k.cfg.LogDir, "*_"+string(w.uid)))
		for _, m := range matches {
			os.RemoveAll(m)
		}
	}
	return nil
}

// event records an event about the pod, when a recorder is configured.
func (k *Kubelet) event(pod *corev1.Pod, typ, reason, format string, args ...any) {
	if k.cfg.Recorder != nil && pod != nil {
		k.cfg.Recorder.Eventf(pod, typ, reason, format, args...)
	}
}

// removePodCgroup removes the pod's (now empty) cgroup in every hierarchy;
// runc removes the containers' own cgroups, not their parent.
func (k *Kubelet) removePodCgroup(uid types.UID) {
	rel := filepath.Join(k.cfg.CgroupParent, "pod"+string(uid))
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/*", rel))
	dirs = append(dirs, filepath.Join("/sys/fs/cgroup", rel))
	for _, d := range dirs {
		os.Remove(d)
	}
}
