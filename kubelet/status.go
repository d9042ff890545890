package kubelet

import (
	"context"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/capstan-net/capstan/kubelet/container"
)

// postStatus computes the pod's status from its containers and writes it
// when it changed.
func (w *podWorker) postStatus(ctx context.Context, pod *corev1.Pod, cs map[string][]container.Info, sb *sandbox) {
	st := w.computeStatus(pod, cs, sb)
	if w.lastPosted != nil && apiequality.Semantic.DeepEqual(*w.lastPosted, st) &&
		apiequality.Semantic.DeepEqual(pod.Status, st) {
		return
	}
	if apiequality.Semantic.DeepEqual(pod.Status, st) {
		w.lastPosted = &st
		return
	}
	up := pod.DeepCopy()
	up.Status = st
	if _, err := w.k.cfg.Client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, up, metav1.UpdateOptions{}); err != nil {
		// A conflict means the cache is behind; the next sync retries.
		w.log().Debug("update pod status", "err", err)
		w.lastPosted = nil
		return
	}
	w.lastPosted = &st
}

func (w *podWorker) computeStatus(pod *corev1.Pod, cs map[string][]container.Info, sb *sandbox) corev1.PodStatus {
	old := pod.Status
	st := corev1.PodStatus{
		Phase:     old.Phase,
		StartTime: old.StartTime,
		QOSClass:  old.QOSClass,
	}
	now := secs(time.Now())
	if st.StartTime == nil {
		st.StartTime = &now
	}
	for _, ip := range w.k.cfg.NodeIPs {
		if st.HostIP == "" {
			st.HostIP = ip.String()
		}
		st.HostIPs = append(st.HostIPs, corev1.HostIP{IP: ip.String()})
	}
	if sb != nil {
		for _, ip := range sb.IPs {
			if st.PodIP == "" {
				st.PodIP = ip
			}
			st.PodIPs = append(st.PodIPs, corev1.PodIP{IP: ip})
		}
	} else if old.PodIP != "" && (old.Phase == corev1.PodSucceeded || old.Phase == corev1.PodFailed) {
		st.PodIP, st.PodIPs = old.PodIP, old.PodIPs
	}

	initDone := true
	initFailed := false
	for i := range pod.Spec.InitContainers {
		c := &pod.Spec.InitContainers[i]
		cst := w.containerStatus(pod, c, cs[c.Name], initDone)
		st.InitContainerStatuses = append(st.InitContainerStatuses, cst)
		latest := first(cs[c.Name])
		if latest == nil || latest.State != container.StateExited || latest.ExitCode != 0 {
			if latest != nil && latest.State == container.StateExited && pod.Spec.RestartPolicy == corev1.RestartPolicyNever {
				initFailed = true
			}
			initDone = false
		}
	}
	allReady := true
	running, exited, failed, pending := 0, 0, 0, 0
	for i := range pod.Spec.Containers {
		c := &pod.Spec.Containers[i]
		cst := w.containerStatus(pod, c, cs[c.Name], initDone)
		st.ContainerStatuses = append(st.ContainerStatuses, cst)
		if !cst.Ready {
			allReady = false
		}
		switch {
		case cst.State.Running != nil:
			running++
		case cst.State.Terminated != nil:
			exited++
			if cst.State.Terminated.ExitCode != 0 {
				failed++
			}
		case cst.LastTerminationState.Terminated != nil:
			// Waiting to restart after a crash: the pod is still running.
			running++
		default:
			pending++
		}
	}

	// Phase, as upstream's getPhase: a finished pod never goes back.
	if old.Phase != corev1.PodSucceeded && old.Phase != corev1.PodFailed {
		n := len(pod.Spec.Containers)
		switch {
		case initFailed:
			st.Phase = corev1.PodFailed
		case !initDone || pending > 0:
			st.Phase = corev1.PodPending
		case running > 0:
			st.Phase = corev1.PodRunning
		case exited == n && pod.Spec.RestartPolicy == corev1.RestartPolicyAlways:
			st.Phase = corev1.PodRunning
		case exited == n && failed == 0:
			st.Phase = corev1.PodSucceeded
		case exited == n && pod.Spec.RestartPolicy == corev1.RestartPolicyOnFailure:
			st.Phase = corev1.PodRunning
		case exited == n:
			st.Phase = corev1.PodFailed
		default:
			st.Phase = corev1.PodPending
		}
	}
	terminal := st.Phase == corev1.PodSucceeded || st.Phase == corev1.PodFailed
	if terminal {
		allReady = false
	}

	cond := func(t corev1.PodConditionType, ok bool, reason, msg string) {
		c := corev1.PodCondition{Type: t, Status: corev1.ConditionFalse, Reason: reason, Message: msg}
		if ok {
			c.Status, c.Reason, c.Message = corev1.ConditionTrue, "", ""
		}
		c.LastTransitionTime = now
		for _, o := range old.Conditions {
			if o.Type == t && o.Status == c.Status {
				c.LastTransitionTime = o.LastTransitionTime
			}
		}
		st.Conditions = append(st.Conditions, c)
	}
	for _, o := range old.Conditions {
		if o.Type == corev1.PodScheduled {
			st.Conditions = append(st.Conditions, o)
		}
	}
	sandboxMsg := w.sandboxErr
	cond(corev1.PodReadyToStartContainers, sb != nil || terminal && old.PodIP != "", "", sandboxMsg)
	var notReady []string
	for _, c := range st.ContainerStatuses {
		if !c.Ready {
			notReady = append(notReady, c.Name)
		}
	}
	readyMsg := ""
	if len(notReady) > 0 {
		readyMsg = "containers with unready status: [" + strings.Join(notReady, " ") + "]"
	}
	initReason := ""
	if !initDone {
		initReason = "ContainersNotInitialized"
	}
	cond(corev1.PodInitialized, initDone, initReason, "")
	reason := "ContainersNotReady"
	if terminal {
		reason = "PodCompleted"
	}
	cond(corev1.ContainersReady, allReady, reason, readyMsg)
	cond(corev1.PodReady, allReady, reason, readyMsg)
	return st
}

// containerStatus reports one container from its newest two instances.
func (w *podWorker) containerStatus(pod *corev1.Pod, c *corev1.Container, history []container.Info, canStart bool) corev1.ContainerStatus {
	cst := corev1.ContainerStatus{Name: c.Name, Image: c.Image, ImageID: ""}
	f := false
	cst.Started = &f
	latest := first(history)
	if latest != nil {
		cst.RestartCount = int32(latest.Attempt)
		cst.ContainerID = "containerd://" + latest.ID
		cst.ImageID = imageID(latest)
		if len(history) > 1 && history[1].State == container.StateExited {
			cst.LastTerminationState = corev1.ContainerState{Terminated: terminated(&history[1])}
		}
	}
	wait, hasWait := w.waits[c.Name]
	switch {
	case latest != nil && latest.State == container.StateRunning:
		cst.State.Running = &corev1.ContainerStateRunning{StartedAt: secs(latest.Started)}
		ps := w.k.probes.state(latest.ID)
		cst.Ready = ps.ready
		started := ps.started
		cst.Started = &started
	case latest != nil && latest.State == container.StateExited && hasWait:
		// Crash-looping: waiting, with the exit as lastState.
		cst.State.Waiting = &corev1.ContainerStateWaiting{Reason: wait.reason, Message: wait.message}
		cst.LastTerminationState = corev1.ContainerState{Terminated: terminated(latest)}
	case latest != nil && latest.State == container.StateExited:
		cst.State.Terminated = terminated(latest)
	case hasWait:
		cst.State.Waiting = &corev1.ContainerStateWaiting{Reason: wait.reason, Message: wait.message}
	case !canStart:
		cst.State.Waiting = &corev1.ContainerStateWaiting{Reason: "PodInitializing"}
	default:
		cst.State.Waiting = &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}
	}
	return cst
}

func terminated(i *container.Info) *corev1.ContainerStateTerminated {
	t := &corev1.ContainerStateTerminated{
		ExitCode:    int32(i.ExitCode),
		Reason:      i.Reason,
		StartedAt:   secs(i.Started),
		FinishedAt:  secs(i.Finished),
		ContainerID: "containerd://" + i.ID,
	}
	if strings.HasPrefix(i.Reason, "StartError") {
		t.Reason, t.Message = "StartError", strings.TrimPrefix(strings.TrimPrefix(i.Reason, "StartError"), ": ")
	}
	return t
}

// imageID is repo@digest, as upstream reports for containerd.
func imageID(i *container.Info) string {
	if i.ImageID == "" {
		return ""
	}
	repo := i.ImageRef
	if at := strings.LastIndex(repo, ":"); at > strings.LastIndex(repo, "/") {
		repo = repo[:at]
	}
	return repo + "@" + i.ImageID
}

// secs drops sub-second precision, which the API does not keep, so a
// status read back compares equal to the one computed.
func secs(t time.Time) metav1.Time {
	if t.IsZero() {
		return metav1.Time{}
	}
	return metav1.NewTime(time.Unix(t.Unix(), 0))
}
