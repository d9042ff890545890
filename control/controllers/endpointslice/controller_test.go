package endpointslice_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"

	"github.com/capstan-net/capstan/control/controllers/endpointslice"
	"github.com/capstan-net/capstan/control/server/servertest"
)

func TestMain(m *testing.M) {
	servertest.MaybeRunChild()
	os.Exit(m.Run())
}

func waitFor(t *testing.T, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		ok, err := cond()
		if ok {
			return
		}
		last = err
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s (last error: %v)", what, last)
}

func TestEndpointSlicesFollowPods(t *testing.T) {
	s := servertest.Start(t, servertest.Options{EtcdEndpoints: servertest.EnvEtcd()})
	cs := s.Client()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	factory := informers.NewSharedInformerFactory(cs, 0)
	bc := record.NewBroadcaster()
	bc.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: cs.CoreV1().Events("")})
	defer bc.Shutdown()
	c := endpointslice.New(cs, factory, bc.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "endpointslice-controller"}), log)
	factory.Start(ctx.Done())
	go c.Run(ctx, 2)

	// Upstream skips pods on nodes it does not know.
	if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ns := "es-test"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP},
				{Name: "dns", Port: 53, TargetPort: intstr.FromInt32(5353), Protocol: corev1.ProtocolUDP},
			},
		},
	}
	if _, err := cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	const n = 150
	for i := 0; i < n; i++ {
		makePod(t, cs, ns, i, i%3 != 0) // every third pod not ready
	}
	slicesOf := func() ([]discovery.EndpointSlice, error) {
		l, err := cs.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discovery.LabelServiceName + "=web"})
		if err != nil {
			return nil, err
		}
		return l.Items, nil
	}
	waitFor(t, "150 endpoints in slices of at most 100", func() (bool, error) {
		slices, err := slicesOf()
		total := 0
		for _, sl := range slices {
			if len(sl.Endpoints) > endpointslice.MaxEndpointsPerSlice {
				return false, fmt.Errorf("slice %s has %d endpoints", sl.Name, len(sl.Endpoints))
			}
			total += len(sl.Endpoints)
		}
		if err == nil && (total != n || len(slices) != 2) {
			err = fmt.Errorf("%d endpoints in %d slices", total, len(slices))
		}
		return err == nil, err
	})
	slices, _ := slicesOf()
	ready := 0
	for _, sl := range slices {
		if sl.Labels[discovery.LabelManagedBy] != endpointslice.ControllerName {
			t.Errorf("slice %s managed-by %q", sl.Name, sl.Labels[discovery.LabelManagedBy])
		}
		ports := map[string]int32{}
		for _, p := range sl.Ports {
			if p.Name == nil || p.Port == nil || p.Protocol == nil {
				t.Fatalf("slice %s has a port with a nil field kube-proxy dereferences: %+v", sl.Name, p)
			}
			ports[*p.Name+"/"+string(*p.Protocol)] = *p.Port
		}
		if ports["http/TCP"] != 8080 || ports["dns/UDP"] != 5353 {
			t.Errorf("slice %s ports %v: want http/TCP 8080 (named port resolved) and dns/UDP 5353", sl.Name, ports)
		}
		for _, ep := range sl.Endpoints {
			if ep.NodeName == nil || *ep.NodeName != "node-a" {
				t.Errorf("endpoint %v has no nodeName", ep.Addresses)
			}
			if ep.Conditions.Ready != nil && *ep.Conditions.Ready {
				ready++
			}
		}
	}
	if ready != n-n/3 {
		t.Errorf("%d ready endpoints, want %d", ready, n-n/3)
	}
	ep, err := cs.CoreV1().Endpoints(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	addrs, notReady := 0, 0
	for _, s := range ep.Subsets {
		addrs += len(s.Addresses) * len(s.Ports)
		notReady += len(s.NotReadyAddresses) * len(s.Ports)
	}
	if addrs != 2*(n-n/3) || notReady != 2*(n/3) {
		t.Errorf("legacy Endpoints: %d ready and %d not-ready address-ports, want %d and %d", addrs, notReady, 2*(n-n/3), 2*(n/3))
	}

	// A terminating pod stays serving but not ready.
	if err := cs.CoreV1().Pods(ns).Delete(ctx, "web-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "web-1 terminating in its slice", func() (bool, error) {
		slices, err := slicesOf()
		for _, sl := range slices {
			for _, ep := range sl.Endpoints {
				if ep.TargetRef != nil && ep.TargetRef.Name == "web-1" {
					c := ep.Conditions
					return c.Terminating != nil && *c.Terminating && c.Serving != nil && *c.Serving && c.Ready != nil && !*c.Ready, err
				}
			}
		}
		return false, err
	})

	if err := cs.CoreV1().Services(ns).Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "slices and endpoints removed with the service", func() (bool, error) {
		slices, err := slicesOf()
		_, eerr := cs.CoreV1().Endpoints(ns).Get(ctx, "web", metav1.GetOptions{})
		return err == nil && len(slices) == 0 && eerr != nil, err
	})
}

// makePod creates a pod bound to node-a with an IP, ready or not.
func makePod(t *testing.T, cs kubernetes.Interface, ns string, i int, ready bool) {
	t.Helper()
	ctx := context.Background()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("web-%d", i), Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "capstan.local/echo:latest",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}},
	}
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := cs.CoreV1().Pods(ns).Bind(ctx, &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Name: pod.Name}, Target: corev1.ObjectReference{Kind: "Node", Name: "node-a"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p, err := cs.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	p.Status.Phase = corev1.PodRunning
	p.Status.PodIP = fmt.Sprintf("10.244.%d.%d", i/250, i%250+1)
	p.Status.PodIPs = []corev1.PodIP{{IP: p.Status.PodIP}}
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: status}}
	if _, err := cs.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}
