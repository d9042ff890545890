//go:build e2e

package e2e_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// loopPod is a client pod running `capstan-echo loop`: requests that go on
// while a scenario changes the cluster, each failure printed to its log.
// Running in a pod of its own, it needs no kubectl exec stream, which a
// restarting agent would cut.
type loopPod struct {
	e    *env
	name string
}

func (e *env) startLoop(t *testing.T, name, node string, args ...string) *loopPod {
	t.Helper()
	ctx := context.Background()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.PodSpec{
		NodeName:                      node,
		RestartPolicy:                 corev1.RestartPolicyNever,
		TerminationGracePeriodSeconds: ptr.To(int64(1)),
		Containers: []corev1.Container{{Name: "loop", Image: "capstan.local/echo:1.0",
			Args: append([]string{"loop"}, args...)}},
	}}
	if _, err := e.cs.CoreV1().Pods(e.ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	l := &loopPod{e: e, name: name}
	t.Cleanup(func() {
		e.cs.CoreV1().Pods(e.ns).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))})
		eventually(30*time.Second, func() error {
			if _, err := e.cs.CoreV1().Pods(e.ns).Get(context.Background(), name, metav1.GetOptions{}); err == nil {
				return fmt.Errorf("%s still there", name)
			}
			return nil
		})
	})
	if err := eventually(time.Minute, func() error {
		if !strings.Contains(l.logs(), "PROGRESS") {
			return fmt.Errorf("loop %s not running yet", name)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return l
}

// logs is the loop's output so far ("" while it cannot be read).
func (l *loopPod) logs() string {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	data, err := l.e.cs.CoreV1().Pods(l.e.ns).GetLogs(l.name, &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil {
		return ""
	}
	return string(data)
}

// loopReport is what a loop's log says.
type loopReport struct {
	fails     []string // FAIL lines
	connected []string // backends of CONNECTED lines
	progress  string   // the last PROGRESS line
}

func (l *loopPod) report(t *testing.T) loopReport {
	t.Helper()
	var out string
	if err := eventually(time.Minute, func() error {
		if out = l.logs(); out == "" {
			return fmt.Errorf("no log from %s", l.name)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var r loopReport
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(line, "FAIL "):
			r.fails = append(r.fails, line)
		case strings.HasPrefix(line, "CONNECTED "):
			r.connected = append(r.connected, strings.TrimPrefix(line, "CONNECTED "))
		case strings.HasPrefix(line, "PROGRESS "):
			r.progress = line
		}
	}
	return r
}

// noFailures fails the test with the loop's FAIL lines, if any.
func (l *loopPod) noFailures(t *testing.T) loopReport {
	t.Helper()
	r := l.report(t)
	if len(r.fails) > 0 {
		t.Fatalf("%d failed requests in %s (%s):\n%s", len(r.fails), l.name, r.progress, strings.Join(first(r.fails, 20), "\n"))
	}
	t.Logf("%s: %s", l.name, r.progress)
	return r
}

func first(s []string, n int) []string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
