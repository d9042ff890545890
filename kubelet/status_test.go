package kubelet

import (
	"log/slog"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/capstan-net/capstan/kubelet/container"
)

func testWorker() *podWorker {
	k := New(Config{Log: slog.New(slog.DiscardHandler)})
	return &podWorker{k: k, waits: map[string]waiting{}}
}

func exited(name string, attempt, code int) container.Info {
	now := time.Now()
	return container.Info{ID: name + "-x", ContainerKey: name, State: container.StateExited, Attempt: attempt,
		ExitCode: code, Started: now.Add(-time.Second), Finished: now, Reason: "Error"}
}

func running(name string, attempt int) container.Info {
	return container.Info{ID: name + "-r", ContainerKey: name, State: container.StateRunning, Attempt: attempt, Started: time.Now()}
}

func TestPhase(t *testing.T) {
	pod := func(policy corev1.RestartPolicy, names ...string) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", UID: "u"}, Spec: corev1.PodSpec{RestartPolicy: policy}}
		for _, n := range names {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: n, Image: "i"})
		}
		return p
	}
	sb := &sandbox{IPs: []string{"10.244.0.9"}}
	for _, tc := range []struct {
		name string
		pod  *corev1.Pod
		cs   map[string][]container.Info
		want corev1.PodPhase
	}{
		{"nothing started", pod(corev1.RestartPolicyAlways, "a"), nil, corev1.PodPending},
		{"running", pod(corev1.RestartPolicyAlways, "a"), map[string][]container.Info{"a": {running("a", 0)}}, corev1.PodRunning},
		{"one of two started", pod(corev1.RestartPolicyAlways, "a", "b"), map[string][]container.Info{"a": {running("a", 0)}}, corev1.PodPending},
		{"never, all succeeded", pod(corev1.RestartPolicyNever, "a"), map[string][]container.Info{"a": {exited("a", 0, 0)}}, corev1.PodSucceeded},
		{"never, one failed", pod(corev1.RestartPolicyNever, "a", "b"), map[string][]container.Info{"a": {exited("a", 0, 0)}, "b": {exited("b", 0, 2)}}, corev1.PodFailed},
		{"onfailure, failed: restarts", pod(corev1.RestartPolicyOnFailure, "a"), map[string][]container.Info{"a": {exited("a", 0, 1)}}, corev1.PodRunning},
		{"onfailure, succeeded", pod(corev1.RestartPolicyOnFailure, "a"), map[string][]container.Info{"a": {exited("a", 0, 0)}}, corev1.PodSucceeded},
		{"always, exited: restarts", pod(corev1.RestartPolicyAlways, "a"), map[string][]container.Info{"a": {exited("a", 0, 0)}}, corev1.PodRunning},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := testWorker()
			st := w.computeStatus(tc.pod, tc.cs, sb)
			if st.Phase != tc.want {
				t.Fatalf("phase = %s, want %s", st.Phase, tc.want)
			}
			if st.PodIP != "10.244.0.9" {
				t.Errorf("podIP = %q", st.PodIP)
			}
		})
	}
}

func TestCrashLoopStatus(t *testing.T) {
	w := testWorker()
	w.waits["a"] = waiting{"CrashLoopBackOff", "back-off 20s"}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", UID: "u"},
		Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyAlways, Containers: []corev1.Container{{Name: "a", Image: "i"}}}}
	cs := map[string][]container.Info{"a": {exited("a", 2, 3), exited("a", 1, 3)}}
	st := w.computeStatus(pod, cs, &sandbox{IPs: []string{"10.244.0.9"}})
	c := st.ContainerStatuses[0]
	if c.State.Waiting == nil || c.State.Waiting.Reason != "CrashLoopBackOff" {
		t.Fatalf("state = %+v, want waiting CrashLoopBackOff", c.State)
	}
	if c.RestartCount != 2 || c.LastTerminationState.Terminated == nil || c.LastTerminationState.Terminated.ExitCode != 3 {
		t.Fatalf("restartCount %d lastState %+v", c.RestartCount, c.LastTerminationState)
	}
	if st.Phase != corev1.PodRunning {
		t.Errorf("phase = %s, want Running while crash-looping", st.Phase)
	}
	for _, cond := range st.Conditions {
		if cond.Type == corev1.PodReady && cond.Status != corev1.ConditionFalse {
			t.Errorf("Ready = %s while crash-looping", cond.Status)
		}
	}
}

func TestStatusStableAcrossSyncs(t *testing.T) {
	// A status computed twice from the same state must compare equal, or
	// every sync would write the pod.
	w := testWorker()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", UID: "u"},
		Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyAlways, Containers: []corev1.Container{{Name: "a", Image: "i"}}}}
	cs := map[string][]container.Info{"a": {running("a", 0)}}
	first := w.computeStatus(pod, cs, &sandbox{IPs: []string{"10.244.0.9"}})
	pod.Status = first
	time.Sleep(1100 * time.Millisecond)
	second := w.computeStatus(pod, cs, &sandbox{IPs: []string{"10.244.0.9"}})
	for i := range first.Conditions {
		if !first.Conditions[i].LastTransitionTime.Equal(&second.Conditions[i].LastTransitionTime) {
			t.Errorf("condition %s transition time moved without a change", first.Conditions[i].Type)
		}
	}
	if !first.StartTime.Equal(second.StartTime) {
		t.Error("startTime moved")
	}
}
