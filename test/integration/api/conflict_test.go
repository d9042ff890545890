package api_test

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/capstan-net/capstan/control/server/servertest"
)

// race runs fns at once and returns their errors in order.
func race(fns ...func() error) []error {
	errs := make([]error, len(fns))
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, fn := range fns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = fn()
		}()
	}
	close(start)
	wg.Wait()
	return errs
}

// oneWins checks that exactly one of two racing writes succeeded and the
// other failed with code; it returns the index of the winner.
func oneWins(t *testing.T, errs []error, code int32) int {
	t.Helper()
	switch {
	case errs[0] == nil && statusCode(errs[1]) == code:
		return 0
	case errs[1] == nil && statusCode(errs[0]) == code:
		return 1
	}
	t.Fatalf("racing writes returned %s and %s; want one success and one %d", fmtErr(errs[0]), fmtErr(errs[1]), code)
	return -1
}

// TestConcurrentUpdates: two writers starting from the same
// resourceVersion never both win; the loser gets 409 Conflict.
func TestConcurrentUpdates(t *testing.T) {
	t.Parallel()
	s := startServer(t, servertest.Options{})
	cs := s.Client()
	ctx := context.Background()
	ns := newNamespace(t, cs, "conflict")

	t.Run("update", func(t *testing.T) {
		cms := cs.CoreV1().ConfigMaps(ns)
		if _, err := cms.Create(ctx, configMap("shared", "0"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		for round := 0; round < 20; round++ {
			base, err := cms.Get(ctx, "shared", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			results := make([]*corev1.ConfigMap, 2)
			write := func(i int) func() error {
				return func() error {
					cm := base.DeepCopy()
					cm.Data["v"] = fmt.Sprintf("round %d writer %d", round, i)
					out, err := cms.Update(ctx, cm, metav1.UpdateOptions{})
					results[i] = out
					return err
				}
			}
			errs := race(write(0), write(1))
			w := oneWins(t, errs, http.StatusConflict)
			if !apierrors.IsConflict(errs[1-w]) {
				t.Errorf("loser's error %v is not a Conflict", errs[1-w])
			}
			got, err := cms.Get(ctx, "shared", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if got.Data["v"] != fmt.Sprintf("round %d writer %d", round, w) || got.ResourceVersion != results[w].ResourceVersion {
				t.Fatalf("round %d: stored %q at %s, winner wrote writer %d at %s", round, got.Data["v"], got.ResourceVersion, w, results[w].ResourceVersion)
			}
			if got.ResourceVersion == base.ResourceVersion {
				t.Fatalf("round %d: resourceVersion did not change", round)
			}
		}
	})

	t.Run("patch-with-resourceVersion", func(t *testing.T) {
		cms := cs.CoreV1().ConfigMaps(ns)
		for round := 0; round < 10; round++ {
			base, err := cms.Get(ctx, "shared", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			// Each writer changes the object: a no-op write always succeeds.
			patch := func(i int) func() error {
				return func() error {
					p := fmt.Sprintf(`{"metadata":{"resourceVersion":%q},"data":{"v":"patch %d.%d"}}`, base.ResourceVersion, round, i)
					_, err := cms.Patch(ctx, "shared", types.MergePatchType, []byte(p), metav1.PatchOptions{})
					return err
				}
			}
			oneWins(t, race(patch(0), patch(1)), http.StatusConflict)
		}
	})

	t.Run("deployment-scale", func(t *testing.T) {
		deps := cs.AppsV1().Deployments(ns)
		if _, err := deps.Create(ctx, deployment("web", 1), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		for round := 0; round < 10; round++ {
			sc, err := deps.GetScale(ctx, "web", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			scale := func(n int32) func() error {
				return func() error {
					s := sc.DeepCopy()
					s.Spec.Replicas = n
					_, err := deps.UpdateScale(ctx, "web", s, metav1.UpdateOptions{})
					return err
				}
			}
			// Both differ from the current count: a no-op write always succeeds.
			oneWins(t, race(scale(int32(2*round+2)), scale(int32(2*round+3))), http.StatusConflict)
		}
	})

	t.Run("create", func(t *testing.T) {
		for round := 0; round < 10; round++ {
			name := fmt.Sprintf("new-%d", round)
			create := func() error {
				_, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, configMap(name, "0"), metav1.CreateOptions{})
				return err
			}
			oneWins(t, race(create, create), http.StatusConflict)
		}
	})

	t.Run("same-clusterIP", func(t *testing.T) {
		svcs := cs.CoreV1().Services(ns)
		for round := 0; round < 5; round++ {
			// Find a free address by allocating one and giving it back.
			probe, err := svcs.Create(ctx, service("probe", "", -1), metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if err := svcs.Delete(ctx, "probe", metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			ip := probe.Spec.ClusterIP
			create := func(name string) func() error {
				return func() error {
					_, err := svcs.Create(ctx, service(name, ip, -1), metav1.CreateOptions{})
					return err
				}
			}
			a, b := fmt.Sprintf("a-%d", round), fmt.Sprintf("b-%d", round)
			errs := race(create(a), create(b))
			w := oneWins(t, errs, http.StatusUnprocessableEntity)
			winner := []string{a, b}[w]
			got, err := svcs.Get(ctx, winner, metav1.GetOptions{})
			if err != nil || got.Spec.ClusterIP != ip {
				t.Fatalf("winner %s: %v, clusterIP %v want %s", winner, err, got, ip)
			}
			if _, err := svcs.Get(ctx, []string{a, b}[1-w], metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				t.Errorf("loser exists: %v", err)
			}
		}
	})
}

func deployment(name string, replicas int32) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "capstan.local/echo:latest"}}},
			},
		},
	}
}

// service is a TCP Service on port 80; nodePort >= 0 makes it a NodePort
// Service (0: any port), -1 a ClusterIP one.
func service(name, clusterIP string, nodePort int32) *corev1.Service {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{
			ClusterIP: clusterIP,
			Selector:  map[string]string{"app": name},
			Ports:     []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}},
		},
	}
	if nodePort >= 0 {
		svc.Spec.Type = corev1.ServiceTypeNodePort
		svc.Spec.Ports[0].NodePort = nodePort
	}
	return svc
}
