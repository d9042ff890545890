package api_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/capstan-net/capstan/control/server/servertest"
)

// expectInvalid asserts err is a 422 whose causes name field.
func expectInvalid(t *testing.T, what string, err error, field, msg string) {
	t.Helper()
	if statusCode(err) != http.StatusUnprocessableEntity {
		t.Errorf("%s: %s, want 422", what, fmtErr(err))
		return
	}
	st := err.(interface{ Status() metav1.Status }).Status()
	if st.Details == nil {
		t.Errorf("%s: 422 without details: %+v", what, st)
		return
	}
	for _, c := range st.Details.Causes {
		if c.Field == field && strings.Contains(c.Message, msg) {
			return
		}
	}
	t.Errorf("%s: causes %+v do not include %s %q", what, st.Details.Causes, field, msg)
}

// TestRestartKeepsState: after a SIGKILL and restart, objects keep their
// resourceVersions and history, and Service allocations are as they were:
// held addresses and ports stay taken, freed ones stay free.
func TestRestartKeepsState(t *testing.T) {
	t.Parallel()
	s := startServer(t, servertest.Options{})
	cs := s.Client()
	ctx := context.Background()
	ns := newNamespace(t, cs, "restart")

	cm, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, configMap("cm", "1"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	createdRV := cm.ResourceVersion
	cm = setV(t, cs, ns, "cm", "2")
	dep, err := cs.AppsV1().Deployments(ns).Create(ctx, deployment("web", 2), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	held, err := cs.CoreV1().Services(ns).Create(ctx, service("held", "", 0), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	freed, err := cs.CoreV1().Services(ns).Create(ctx, service("freed", "", 0), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.CoreV1().Services(ns).Delete(ctx, "freed", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	kube, err := cs.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	before, err := cs.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}

	s.Restart()
	cs = s.Client()

	gotCM, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, "cm", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if gotCM.ResourceVersion != cm.ResourceVersion || gotCM.UID != cm.UID || gotCM.Data["v"] != "2" {
		t.Errorf("configmap after restart: rv %s uid %s data %v; before: rv %s uid %s", gotCM.ResourceVersion, gotCM.UID, gotCM.Data, cm.ResourceVersion, cm.UID)
	}
	gotDep, err := cs.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if gotDep.ResourceVersion != dep.ResourceVersion || gotDep.UID != dep.UID || gotDep.Generation != dep.Generation {
		t.Errorf("deployment after restart: rv %s uid %s gen %d; before: rv %s uid %s gen %d", gotDep.ResourceVersion, gotDep.UID, gotDep.Generation, dep.ResourceVersion, dep.UID, dep.Generation)
	}
	gotSvc, err := cs.CoreV1().Services(ns).Get(ctx, "held", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if gotSvc.ResourceVersion != held.ResourceVersion || gotSvc.Spec.ClusterIP != held.Spec.ClusterIP || gotSvc.Spec.Ports[0].NodePort != held.Spec.Ports[0].NodePort {
		t.Errorf("service after restart: rv %s ip %s port %d; before: rv %s ip %s port %d", gotSvc.ResourceVersion, gotSvc.Spec.ClusterIP, gotSvc.Spec.Ports[0].NodePort,
			held.ResourceVersion, held.Spec.ClusterIP, held.Spec.Ports[0].NodePort)
	}
	if _, err := cs.CoreV1().Services(ns).Get(ctx, "freed", metav1.GetOptions{}); err == nil {
		t.Errorf("deleted service came back after restart")
	}

	svcs := cs.CoreV1().Services(ns)
	_, err = svcs.Create(ctx, service("same-ip", held.Spec.ClusterIP, -1), metav1.CreateOptions{})
	expectInvalid(t, "clusterIP held before restart", err, "spec.clusterIPs[0]", "already allocated")
	_, err = svcs.Create(ctx, service("same-port", "", held.Spec.Ports[0].NodePort), metav1.CreateOptions{})
	expectInvalid(t, "nodePort held before restart", err, "spec.ports[0].nodePort", "already allocated")
	// The kubernetes Service is re-created (and refused) on every start;
	// that must not give its address away.
	_, err = svcs.Create(ctx, service("kube-ip", kube.Spec.ClusterIP, -1), metav1.CreateOptions{})
	expectInvalid(t, "the kubernetes Service's clusterIP after restart", err, "spec.clusterIPs[0]", "already allocated")
	if _, err := svcs.Create(ctx, service("reuse", freed.Spec.ClusterIP, freed.Spec.Ports[0].NodePort), metav1.CreateOptions{}); err != nil {
		t.Errorf("clusterIP %s and nodePort %d freed before restart are still taken: %v", freed.Spec.ClusterIP, freed.Spec.Ports[0].NodePort, err)
	}

	// Versions keep counting from where they were.
	after := setV(t, cs, ns, "cm", "3")
	if rvInt(t, after.ResourceVersion) <= rvInt(t, before.ResourceVersion) {
		t.Errorf("write after restart got resourceVersion %s, not after %s", after.ResourceVersion, before.ResourceVersion)
	}
	// History from before the restart can still be watched.
	w, err := cs.CoreV1().ConfigMaps(ns).Watch(ctx, metav1.ListOptions{ResourceVersion: createdRV})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	for _, want := range []string{cm.ResourceVersion, after.ResourceVersion} {
		select {
		case ev := <-w.ResultChan():
			got, ok := ev.Object.(*corev1.ConfigMap)
			if ev.Type != watch.Modified || !ok || got.ResourceVersion != want {
				t.Fatalf("watch from %s: got %s %+v, want MODIFIED at %s", createdRV, ev.Type, ev.Object, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("watch from %s: no event for resourceVersion %s", createdRV, want)
		}
	}
}

// TestServiceAllocations: ClusterIPs and NodePorts are held exactly as long
// as a stored Service holds them, whatever happens to failed, dry-run and
// duplicate writes.
func TestServiceAllocations(t *testing.T) {
	t.Parallel()
	s := startServer(t, servertest.Options{})
	cs := s.Client()
	ctx := context.Background()
	ns := newNamespace(t, cs, "alloc")
	svcs := cs.CoreV1().Services(ns)

	// free returns an address and port nobody holds.
	free := func(t *testing.T) (string, int32) {
		t.Helper()
		p, err := svcs.Create(ctx, service("probe", "", 0), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := svcs.Delete(ctx, "probe", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		return p.Spec.ClusterIP, p.Spec.Ports[0].NodePort
	}
	// taken asserts ip and port are held.
	taken := func(t *testing.T, what, ip string, port int32) {
		t.Helper()
		for _, probe := range []*corev1.Service{service("t-ip", ip, -1), service("t-port", "", port)} {
			_, err := svcs.Create(ctx, probe, metav1.CreateOptions{})
			if err == nil {
				svcs.Delete(ctx, probe.Name, metav1.DeleteOptions{})
			}
			if probe.Name == "t-ip" {
				expectInvalid(t, what+": clusterIP "+ip, err, "spec.clusterIPs[0]", "already allocated")
			} else {
				expectInvalid(t, what+": nodePort", err, "spec.ports[0].nodePort", "already allocated")
			}
		}
	}
	isFree := func(t *testing.T, what, ip string, port int32) {
		t.Helper()
		if _, err := svcs.Create(ctx, service("f", ip, port), metav1.CreateOptions{}); err != nil {
			t.Errorf("%s: clusterIP %s / nodePort %d should be free: %v", what, ip, port, err)
			return
		}
		if err := svcs.Delete(ctx, "f", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	orig, err := svcs.Create(ctx, service("orig", "", 0), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ip, port := orig.Spec.ClusterIP, orig.Spec.Ports[0].NodePort

	t.Run("duplicate-create", func(t *testing.T) {
		_, err := svcs.Create(ctx, service("orig", ip, port), metav1.CreateOptions{})
		if statusCode(err) != http.StatusConflict {
			t.Fatalf("second create of orig: %s, want 409", fmtErr(err))
		}
		taken(t, "after a refused duplicate create", ip, port)
	})

	t.Run("failed-update", func(t *testing.T) {
		newIP, _ := free(t)
		cur, err := svcs.Get(ctx, "orig", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cur.Spec.ClusterIP, cur.Spec.ClusterIPs = newIP, []string{newIP}
		_, err = svcs.Update(ctx, cur, metav1.UpdateOptions{})
		expectInvalid(t, "changing clusterIP", err, "spec.clusterIPs[0]", "may not change once set")
		taken(t, "after a refused clusterIP change", ip, port)
		isFree(t, "the address a refused update asked for", newIP, 0)

		cur, err = svcs.Get(ctx, "orig", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		_, newPort := free(t)
		cur.Spec.Ports[0].NodePort = newPort
		cur.Spec.Selector = map[string]string{"bad key!": "x"}
		_, err = svcs.Update(ctx, cur, metav1.UpdateOptions{})
		if statusCode(err) != http.StatusUnprocessableEntity {
			t.Fatalf("invalid update: %s, want 422", fmtErr(err))
		}
		taken(t, "after a refused nodePort change", ip, port)
		isFree(t, "the port a refused update asked for", "", newPort)
	})

	t.Run("dry-run", func(t *testing.T) {
		cur, err := svcs.Get(ctx, "orig", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		_, newPort := free(t)
		cur.Spec.Ports[0].NodePort = newPort
		out, err := svcs.Update(ctx, cur, metav1.UpdateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil {
			t.Fatal(err)
		}
		if out.Spec.Ports[0].NodePort != newPort {
			t.Errorf("dry-run update answered nodePort %d, want %d", out.Spec.Ports[0].NodePort, newPort)
		}
		got, err := svcs.Get(ctx, "orig", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got.Spec.Ports[0].NodePort != port || got.ResourceVersion != cur.ResourceVersion {
			t.Errorf("dry-run update was stored: nodePort %d rv %s", got.Spec.Ports[0].NodePort, got.ResourceVersion)
		}
		taken(t, "after a dry-run nodePort change", ip, port)
		isFree(t, "the port a dry-run update asked for", "", newPort)

		dryIP, dryPort := free(t)
		if _, err := svcs.Create(ctx, service("dry", dryIP, dryPort), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
			t.Fatal(err)
		}
		isFree(t, "what a dry-run create asked for", dryIP, dryPort)
	})

	t.Run("update-moves-port", func(t *testing.T) {
		cur, err := svcs.Get(ctx, "orig", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		_, newPort := free(t)
		cur.Spec.Ports[0].NodePort = newPort
		if _, err := svcs.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		taken(t, "the new port", ip, newPort)
		isFree(t, "the port an update gave up", "", port)
		port = newPort

		// Turning into a ClusterIP Service gives the node port back.
		cur, err = svcs.Get(ctx, "orig", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cur.Spec.Type = corev1.ServiceTypeClusterIP
		cur.Spec.Ports[0].NodePort = 0
		if _, err := svcs.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		isFree(t, "the port of a Service turned ClusterIP", "", port)
		_, err = svcs.Create(ctx, service("t-ip", ip, -1), metav1.CreateOptions{})
		expectInvalid(t, "clusterIP kept across a type change", err, "spec.clusterIPs[0]", "already allocated")
	})

	t.Run("delete-frees", func(t *testing.T) {
		if err := svcs.Delete(ctx, "orig", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		isFree(t, "after delete", ip, 0)
	})
}
