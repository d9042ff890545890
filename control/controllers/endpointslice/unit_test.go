package endpointslice_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"

	"github.com/capstan-net/capstan/control/controllers/endpointslice"
)

// On the fake clientset: a selector Service gets a slice with its ready
// pod, a selector-less Service is left to its owner, and a headless
// Service gets slices too.
func TestSlicesFromFakeClient(t *testing.T) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p1", Namespace: "d", Labels: map[string]string{"app": "a"}},
		Spec:       corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{{Name: "web", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.244.1.5", PodIPs: []corev1.PodIP{{IP: "10.244.1.5"}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
	svc := func(name string, selector map[string]string, clusterIP string) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "d"}, Spec: corev1.ServiceSpec{
			Selector: selector, ClusterIP: clusterIP, IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("web"), Protocol: corev1.ProtocolTCP}}}}
	}
	objs := []runtime.Object{
		pod, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}},
		svc("web", map[string]string{"app": "a"}, "10.96.0.10"),
		svc("manual", nil, "10.96.0.11"),
		svc("headless", map[string]string{"app": "a"}, corev1.ClusterIPNone),
	}
	client := fake.NewClientset(objs...)
	// The fake tracker does not implement generateName; the API server does.
	n := 0
	client.PrependReactor("create", "endpointslices", func(a k8stesting.Action) (bool, runtime.Object, error) {
		s := a.(k8stesting.CreateAction).GetObject().(*discovery.EndpointSlice)
		if s.Name == "" {
			n++
			s.Name = fmt.Sprintf("%s%d", s.GenerateName, n)
		}
		return false, nil, nil
	})
	factory := informers.NewSharedInformerFactory(client, 0)
	c := endpointslice.New(client, factory, record.NewFakeRecorder(100), slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	factory.Start(ctx.Done())
	go c.Run(ctx, 1)

	slicesFor := func(name string) []discovery.EndpointSlice {
		l, _ := client.DiscoveryV1().EndpointSlices("d").List(ctx, metav1.ListOptions{LabelSelector: discovery.LabelServiceName + "=" + name})
		return l.Items
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && (len(slicesFor("web")) == 0 || len(slicesFor("headless")) == 0) {
		time.Sleep(50 * time.Millisecond)
	}
	web := slicesFor("web")
	if len(web) != 1 || len(web[0].Endpoints) != 1 || web[0].Endpoints[0].Addresses[0] != "10.244.1.5" {
		t.Fatalf("web slices: %+v", web)
	}
	if p := web[0].Ports; len(p) != 1 || *p[0].Port != 8080 || *p[0].Name != "http" {
		t.Fatalf("web port: %+v, want http 8080 (named target port resolved)", p)
	}
	if len(slicesFor("headless")) != 1 {
		t.Fatal("headless Service got no slice")
	}
	if got := slicesFor("manual"); len(got) != 0 {
		t.Fatalf("selector-less Service got %d managed slices", len(got))
	}
	if ep, err := client.CoreV1().Endpoints("d").Get(ctx, "web", metav1.GetOptions{}); err != nil || len(ep.Subsets) != 1 || len(ep.Subsets[0].Addresses) != 1 {
		t.Fatalf("legacy Endpoints: %+v %v", ep, err)
	}
}
