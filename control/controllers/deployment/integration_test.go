package deployment_test

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
	cmdutil "k8s.io/kubectl/pkg/cmd/util"
	"k8s.io/kubectl/pkg/polymorphichelpers"
	"k8s.io/utils/clock"

	"github.com/capstan-net/capstan/control/controllers/deployment"
	"github.com/capstan-net/capstan/control/controllers/replicaset"
	"github.com/capstan-net/capstan/control/server/servertest"
)

func TestMain(m *testing.M) {
	servertest.MaybeRunChild()
	os.Exit(m.Run())
}

const (
	ns       = "default"
	replicas = 3
	maxUnav  = 1
)

// kubelet stands in for the missing kubelet: it marks pods ready, one per
// tick so a rollout takes visible steps, and checks on every pod event
// that the ready pods never fall below replicas-maxUnavailable.
type kubelet struct {
	t      *testing.T
	client kubernetes.Interface
	events <-chan watch.Event
	ready  map[string]bool
	pods   map[string]*corev1.Pod
	armed  bool // the floor applies once the first pods are up
	minSaw int
}

func (k *kubelet) readyCount() int {
	n := 0
	for _, r := range k.ready {
		if r {
			n++
		}
	}
	return n
}

func isReady(p *corev1.Pod) bool {
	if p.DeletionTimestamp != nil {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func (k *kubelet) markOneReady(ctx context.Context) {
	for name, p := range k.pods {
		if k.ready[name] || p.DeletionTimestamp != nil {
			continue
		}
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			cur, err := k.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			now := metav1.Now()
			cur.Status.Phase = corev1.PodRunning
			cur.Status.Conditions = []corev1.PodCondition{
				{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
				{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			}
			_, err = k.client.CoreV1().Pods(ns).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
			return err
		})
		if err != nil {
			k.t.Logf("mark %s ready: %v", name, err)
		}
		return
	}
}

// runUntil processes pod events until done reports true.
func (k *kubelet) runUntil(ctx context.Context, what string, done func() bool) {
	k.t.Helper()
	tick := time.NewTicker(150 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			k.t.Fatalf("%s: timed out", what)
		case ev, ok := <-k.events:
			if !ok {
				k.t.Fatalf("%s: pod watch closed", what)
			}
			p, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue
			}
			if ev.Type == watch.Deleted {
				delete(k.ready, p.Name)
				delete(k.pods, p.Name)
			} else {
				k.ready[p.Name] = isReady(p)
				k.pods[p.Name] = p
			}
			if k.armed {
				n := k.readyCount()
				k.minSaw = min(k.minSaw, n)
				if n < replicas-maxUnav {
					k.t.Fatalf("%s: %d ready pods, floor is %d", what, n, replicas-maxUnav)
				}
			}
		case <-tick.C:
			k.markOneReady(ctx)
			if done() {
				return
			}
		}
	}
}

func complete(ctx context.Context, t *testing.T, client kubernetes.Interface, image string) func() bool {
	return func() bool {
		d, err := client.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// Ask exactly what `kubectl rollout status` asks.
		viewer, err := polymorphichelpers.StatusViewerFor(schema.GroupKind{Group: "apps", Kind: "Deployment"})
		if err != nil {
			t.Fatal(err)
		}
		m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(d)
		if err != nil {
			t.Fatal(err)
		}
		msg, done, err := viewer.Status(&unstructured.Unstructured{Object: m}, 0)
		if err != nil {
			t.Fatalf("rollout status: %v", err)
		}
		if !done {
			t.Logf("rollout status: %s", msg)
			return false
		}
		for _, c := range d.Status.Conditions {
			if c.Type == appsv1.DeploymentProgressing && c.Reason != "NewReplicaSetAvailable" {
				return false
			}
		}
		pods, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, p := range pods.Items {
			if p.DeletionTimestamp != nil {
				continue
			}
			if p.Spec.Containers[0].Image != image {
				return false
			}
			n++
		}
		return n == replicas
	}
}

func TestRolloutAndUndoOnServer(t *testing.T) {
	srv := servertest.Start(t, servertest.Options{})
	client := kubernetes.NewForConfigOrDie(srv.Config)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	factory := informers.NewSharedInformerFactory(client, 0)
	rsc := replicaset.New(client, factory, clock.RealClock{}, log.With("controller", "replicaset"))
	dc := deployment.New(client, factory, clock.RealClock{}, log.With("controller", "deployment"))
	factory.Start(ctx.Done())
	go rsc.Run(ctx, 2)
	go dc.Run(ctx, 2)
	t.Cleanup(factory.Shutdown)
	t.Cleanup(cancel)

	w, err := client.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	k := &kubelet{t: t, client: client, events: w.ResultChan(), ready: map[string]bool{}, pods: map[string]*corev1.Pod{}, minSaw: replicas}

	n := int32(replicas)
	surge, unav := intstr.FromInt32(1), intstr.FromInt32(maxUnav)
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: &n,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Strategy: appsv1.DeploymentStrategy{Type: appsv1.RollingUpdateDeploymentStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDeployment{MaxSurge: &surge, MaxUnavailable: &unav}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web"}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "nginx:1.27"}}},
			},
		},
	}
	if _, err := client.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	k.runUntil(ctx, "initial rollout", complete(ctx, t, client, "nginx:1.27"))
	rss, err := client.AppsV1().ReplicaSets(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rss.Items) != 1 || rss.Items[0].Annotations["deployment.kubernetes.io/revision"] != "1" {
		t.Fatalf("after create: %d replicasets", len(rss.Items))
	}
	first := rss.Items[0]

	k.armed = true
	setImage := func(mut func(*appsv1.Deployment)) {
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			d, err := client.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
			if err != nil {
				return err
			}
			mut(d)
			_, err = client.AppsV1().Deployments(ns).Update(ctx, d, metav1.UpdateOptions{})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	setImage(func(d *appsv1.Deployment) { d.Spec.Template.Spec.Containers[0].Image = "nginx:1.28" })
	k.runUntil(ctx, "rolling update", complete(ctx, t, client, "nginx:1.28"))
	if k.minSaw != replicas-maxUnav {
		// With maxUnavailable 1 the rollout should spend that budget;
		// otherwise the floor check above proved nothing.
		t.Errorf("lowest ready count during rollout %d, want %d", k.minSaw, replicas-maxUnav)
	}

	// kubectl rollout undo, through kubectl's own rollbacker.
	rb, err := polymorphichelpers.RollbackerFor(schema.GroupKind{Group: "apps", Kind: "Deployment"}, client)
	if err != nil {
		t.Fatal(err)
	}
	cur, err := client.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := rb.Rollback(cur, nil, 0, cmdutil.DryRunNone); err != nil {
		t.Fatalf("rollout undo: %v", err)
	} else {
		t.Logf("rollout undo: %s", out)
	}
	k.runUntil(ctx, "rollout undo", complete(ctx, t, client, "nginx:1.27"))
	rss, err = client.AppsV1().ReplicaSets(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rss.Items) != 2 {
		t.Fatalf("after undo: %d replicasets, want 2", len(rss.Items))
	}
	for _, rs := range rss.Items {
		want := int32(0)
		if rs.Name == first.Name {
			want = replicas
			if rev := rs.Annotations["deployment.kubernetes.io/revision"]; rev != "3" {
				t.Errorf("restored set revision %q, want 3", rev)
			}
		}
		if *rs.Spec.Replicas != want {
			t.Errorf("%s: %d replicas, want %d", rs.Name, *rs.Spec.Replicas, want)
		}
	}
	got, err := client.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rev := got.Annotations["deployment.kubernetes.io/revision"]; rev != "3" {
		t.Errorf("deployment revision %q, want 3", rev)
	}
}
