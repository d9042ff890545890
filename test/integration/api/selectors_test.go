package api_test

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilrand "k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/tools/pager"

	"github.com/capstan-net/capstan/control/server/servertest"
)

func names[T any](items []T, name func(*T) string) string {
	out := make([]string, 0, len(items))
	for i := range items {
		out = append(out, name(&items[i]))
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

func podNames(items []corev1.Pod) string {
	return names(items, func(p *corev1.Pod) string { return p.Name })
}

func pod(name, node string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:   node,
			Containers: []corev1.Container{{Name: "c", Image: "capstan.local/echo:latest"}},
		},
	}
}

// TestSelectors: field selectors (with = and !=) and label selectors on
// lists and watches.
func TestSelectors(t *testing.T) {
	t.Parallel()
	s := startServer(t, servertest.Options{})
	cs := s.Client()
	ctx := context.Background()
	ns := newNamespace(t, cs, "select")
	other := newNamespace(t, cs, "select-other")
	// Bound pods would wait for a kubelet on deletion; force them out.
	t.Cleanup(func() {
		for _, n := range []string{ns, other} {
			cs.CoreV1().Pods(n).DeleteCollection(context.Background(), metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}, metav1.ListOptions{})
		}
	})
	n1, n2 := "n1-"+utilrand.String(5), "n2-"+utilrand.String(5)

	pods := []struct {
		name, node string
		phase      corev1.PodPhase
		labels     map[string]string
	}{
		{"a", n1, corev1.PodRunning, map[string]string{"app": "web", "tier": "front"}},
		{"b", n1, corev1.PodPending, map[string]string{"app": "web", "env": "prod"}},
		{"c", n2, corev1.PodRunning, map[string]string{"app": "db", "env": "dev"}},
		{"d", "", corev1.PodPending, map[string]string{"app": "cache"}},
	}
	for _, p := range pods {
		created, err := cs.CoreV1().Pods(ns).Create(ctx, pod(p.name, p.node, p.labels), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		created.Status.Phase = p.phase
		if _, err := cs.CoreV1().Pods(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cs.CoreV1().Pods(other).Create(ctx, pod("a", n1, map[string]string{"app": "web"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	t.Run("pods", func(t *testing.T) {
		for _, tc := range []struct {
			field, label string
			all          bool // cluster-wide list, restricted to this test's namespaces
			want         string
		}{
			{field: "spec.nodeName=" + n1, want: "a,b"},
			{field: "spec.nodeName!=" + n1, want: "c,d"},
			{field: "spec.nodeName=", want: "d"},
			{field: "spec.host=" + n1, want: "a,b"}, // the old name, converted
			{field: "spec.nodeName!=", want: "a,b,c"},
			{field: "status.phase=Running", want: "a,c"},
			{field: "status.phase!=Running", want: "b,d"},
			{field: "spec.nodeName=" + n1 + ",status.phase=Running", want: "a"},
			{field: "spec.nodeName==" + n1 + ",status.phase!=Running", want: "b"},
			{field: "metadata.name=c", want: "c"},
			{field: "metadata.name!=c", want: "a,b,d"},
			{field: "metadata.namespace=" + ns, want: "a,b,c,d"},
			{field: "metadata.namespace!=" + ns, want: ""},
			{field: "metadata.namespace=" + other, all: true, want: other + "/a"},
			{field: "metadata.namespace!=" + ns + ",spec.nodeName=" + n1, all: true, want: other + "/a"},
			{field: "spec.nodeName=" + n1, all: true, want: ns + "/a," + ns + "/b," + other + "/a"},
			{label: "app=web", want: "a,b"},
			{label: "app!=web", want: "c,d"},
			{label: "app in (web,db)", want: "a,b,c"},
			{label: "app notin (web,db)", want: "d"},
			{label: "env", want: "b,c"},
			{label: "!env", want: "a,d"},
			{label: "env notin (prod)", want: "a,c,d"},
			{label: "app=web,tier=front", want: "a"},
			{label: "app=web", field: "status.phase=Pending", want: "b"},
			{label: "app=nothing", want: ""},
		} {
			opts := metav1.ListOptions{FieldSelector: tc.field, LabelSelector: tc.label}
			var got string
			if tc.all {
				list, err := cs.CoreV1().Pods("").List(ctx, opts)
				if err != nil {
					t.Errorf("field %q label %q (all namespaces): %v", tc.field, tc.label, err)
					continue
				}
				var mine []string
				for _, p := range list.Items {
					if p.Namespace == ns || p.Namespace == other {
						mine = append(mine, p.Namespace+"/"+p.Name)
					}
				}
				sort.Strings(mine)
				got = strings.Join(mine, ",")
			} else {
				list, err := cs.CoreV1().Pods(ns).List(ctx, opts)
				if err != nil {
					t.Errorf("field %q label %q: %v", tc.field, tc.label, err)
					continue
				}
				got = podNames(list.Items)
			}
			want := strings.Split(tc.want, ",")
			sort.Strings(want)
			if got != strings.Join(want, ",") {
				t.Errorf("field %q label %q: got [%s], want [%s]", tc.field, tc.label, got, tc.want)
			}
		}
	})

	t.Run("services", func(t *testing.T) {
		svcs := cs.CoreV1().Services(ns)
		ip, err := svcs.Create(ctx, service("ip", "", -1), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := svcs.Create(ctx, service("headless", corev1.ClusterIPNone, -1), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := svcs.Create(ctx, service("np", "", 0), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct{ field, want string }{
			{"spec.clusterIP!=None", "ip,np"},
			{"spec.clusterIP=None", "headless"},
			{"spec.clusterIP=" + ip.Spec.ClusterIP, "ip"},
			{"spec.clusterIP!=" + ip.Spec.ClusterIP, "headless,np"},
			{"spec.type=NodePort", "np"},
			{"spec.type!=NodePort,spec.clusterIP!=None", "ip"},
			{"metadata.name=np", "np"},
		} {
			list, err := svcs.List(ctx, metav1.ListOptions{FieldSelector: tc.field})
			if err != nil {
				t.Errorf("services %q: %v", tc.field, err)
				continue
			}
			if got := names(list.Items, func(s *corev1.Service) string { return s.Name }); got != tc.want {
				t.Errorf("services %q: got [%s], want [%s]", tc.field, got, tc.want)
			}
		}
	})

	t.Run("other-kinds", func(t *testing.T) {
		if _, err := cs.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "opaque"}, Type: corev1.SecretTypeOpaque}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := cs.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "basic"}, Type: corev1.SecretTypeBasicAuth,
			StringData: map[string]string{"username": "u", "password": "p"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		secrets, err := cs.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{FieldSelector: "type!=" + string(corev1.SecretTypeOpaque)})
		if err != nil {
			t.Fatal(err)
		}
		if got := names(secrets.Items, func(s *corev1.Secret) string { return s.Name }); got != "basic" {
			t.Errorf("secrets type!=Opaque: [%s], want [basic]", got)
		}
		nsList, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{FieldSelector: "status.phase=Active,metadata.name=" + ns})
		if err != nil || len(nsList.Items) != 1 {
			t.Errorf("namespaces status.phase=Active,metadata.name=%s: %v %v", ns, nsList, err)
		}
		for _, n := range []*corev1.Node{
			{ObjectMeta: metav1.ObjectMeta{Name: n1}},
			{ObjectMeta: metav1.ObjectMeta{Name: n2}, Spec: corev1.NodeSpec{Unschedulable: true}},
		} {
			if _, err := cs.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cs.CoreV1().Nodes().Delete(context.Background(), n.Name, metav1.DeleteOptions{}) })
		}
		nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{FieldSelector: "spec.unschedulable=true,metadata.name=" + n2})
		if err != nil || len(nodes.Items) != 1 {
			t.Errorf("nodes spec.unschedulable=true: %v %v", nodes, err)
		}
		nodes, err = cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{FieldSelector: "spec.unschedulable!=true,metadata.name=" + n2})
		if err != nil || len(nodes.Items) != 0 {
			t.Errorf("nodes spec.unschedulable!=true: %v %v", nodes, err)
		}
	})

	// A watch through a field selector sees objects enter (ADDED) and
	// leave (DELETED) the selection, and nothing outside it.
	t.Run("watch", func(t *testing.T) {
		podsAPI := cs.CoreV1().Pods(ns)
		list, err := podsAPI.List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		w, err := podsAPI.Watch(ctx, metav1.ListOptions{FieldSelector: "status.phase=Running", LabelSelector: "app!=cache", ResourceVersion: list.ResourceVersion})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop()
		setPhase := func(name string, phase corev1.PodPhase) {
			p, err := podsAPI.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			p.Status.Phase = phase
			if _, err := podsAPI.UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		setLabel := func(name, k, v string) {
			p := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, k, v)
			if _, err := podsAPI.Patch(ctx, name, types.MergePatchType, []byte(p), metav1.PatchOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		setPhase("b", corev1.PodRunning)   // enters
		setPhase("d", corev1.PodRunning)   // label excluded: nothing
		setPhase("a", corev1.PodSucceeded) // leaves
		setLabel("c", "seen", "yes")       // stays: modified
		setLabel("c", "app", "cache")      // leaves through its labels
		want := []string{"ADDED b Running", "DELETED a Succeeded", "MODIFIED c Running", "DELETED c Running"}
		var got []string
		timeout := time.After(10 * time.Second)
		for len(got) < len(want) {
			select {
			case ev := <-w.ResultChan():
				p, ok := ev.Object.(*corev1.Pod)
				if !ok {
					t.Fatalf("watch event %s with %T", ev.Type, ev.Object)
				}
				got = append(got, fmt.Sprintf("%s %s %s", ev.Type, p.Name, p.Status.Phase))
			case <-timeout:
				t.Fatalf("watch events %v, want %v", got, want)
			}
		}
		if strings.Join(got, "; ") != strings.Join(want, "; ") {
			t.Errorf("watch events %v, want %v", got, want)
		}
		select {
		case ev := <-w.ResultChan():
			t.Errorf("unexpected extra event %s %v", ev.Type, ev.Object)
		case <-time.After(300 * time.Millisecond):
		}
	})
}

// TestPaging: limit and continue walk a consistent snapshot and report
// how many items remain.
func TestPaging(t *testing.T) {
	t.Parallel()
	s := startServer(t, servertest.Options{})
	cs := s.Client()
	ctx := context.Background()
	ns := newNamespace(t, cs, "paging")
	cms := cs.CoreV1().ConfigMaps(ns)
	for i := 0; i < 25; i++ {
		cm := configMap(fmt.Sprintf("cm-%02d", i), "0")
		if i%2 == 0 {
			cm.Labels = map[string]string{"even": "true"}
		}
		if _, err := cms.Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	cmNames := func(l *corev1.ConfigMapList) string {
		return names(l.Items, func(c *corev1.ConfigMap) string { return c.Name })
	}
	rangeNames := func(lo, hi int) string {
		var out []string
		for i := lo; i < hi; i++ {
			out = append(out, fmt.Sprintf("cm-%02d", i))
		}
		return strings.Join(out, ",")
	}
	remaining := func(l *corev1.ConfigMapList) string {
		if l.RemainingItemCount == nil {
			return "nil"
		}
		return fmt.Sprint(*l.RemainingItemCount)
	}

	p1, err := cms.List(ctx, metav1.ListOptions{Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if cmNames(p1) != rangeNames(0, 10) || p1.Continue == "" || remaining(p1) != "15" {
		t.Fatalf("page 1: [%s] continue %q remaining %s; want cm-00..09, a token, 15", cmNames(p1), p1.Continue, remaining(p1))
	}
	// Changes after the first page are not part of the paged snapshot.
	if _, err := cms.Create(ctx, configMap("cm-99", "0"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := cms.Delete(ctx, "cm-15", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	p2, err := cms.List(ctx, metav1.ListOptions{Limit: 10, Continue: p1.Continue})
	if err != nil {
		t.Fatal(err)
	}
	if cmNames(p2) != rangeNames(10, 20) || p2.Continue == "" || remaining(p2) != "5" || p2.ResourceVersion != p1.ResourceVersion {
		t.Fatalf("page 2: [%s] continue %q remaining %s rv %s; want cm-10..19, a token, 5, rv %s", cmNames(p2), p2.Continue, remaining(p2), p2.ResourceVersion, p1.ResourceVersion)
	}
	p3, err := cms.List(ctx, metav1.ListOptions{Limit: 10, Continue: p2.Continue})
	if err != nil {
		t.Fatal(err)
	}
	if cmNames(p3) != rangeNames(20, 25) || p3.Continue != "" || p3.RemainingItemCount != nil {
		t.Fatalf("page 3: [%s] continue %q remaining %s; want cm-20..24, no token, no count", cmNames(p3), p3.Continue, remaining(p3))
	}

	// The present has the changes.
	all, err := cms.List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(all.Items) != 25 || all.Continue != "" || all.RemainingItemCount != nil || !strings.Contains(cmNames(all), "cm-99") || strings.Contains(cmNames(all), "cm-15") {
		t.Errorf("unpaged list: %d items [%s] continue %q", len(all.Items), cmNames(all), all.Continue)
	}
	exact, err := cms.List(ctx, metav1.ListOptions{ResourceVersion: p1.ResourceVersion, ResourceVersionMatch: metav1.ResourceVersionMatchExact})
	if err != nil {
		t.Fatal(err)
	}
	if cmNames(exact) != rangeNames(0, 25) || exact.ResourceVersion != p1.ResourceVersion {
		t.Errorf("exact list at %s: [%s] at %s", p1.ResourceVersion, cmNames(exact), exact.ResourceVersion)
	}
	big, err := cms.List(ctx, metav1.ListOptions{Limit: 500})
	if err != nil {
		t.Fatal(err)
	}
	if len(big.Items) != 25 || big.Continue != "" || big.RemainingItemCount != nil {
		t.Errorf("limit above the count: %d items continue %q remaining %s", len(big.Items), big.Continue, remaining(big))
	}

	// Paging through a label selector returns only matches on every page.
	var even []string
	cont := ""
	for pages := 0; ; pages++ {
		if pages > 10 {
			t.Fatal("label-selected paging does not end")
		}
		l, err := cms.List(ctx, metav1.ListOptions{Limit: 4, LabelSelector: "even=true", Continue: cont})
		if err != nil {
			t.Fatal(err)
		}
		if len(l.Items) > 4 {
			t.Fatalf("page of %d items with limit 4", len(l.Items))
		}
		for _, c := range l.Items {
			if c.Labels["even"] != "true" {
				t.Errorf("label-selected page has %s", c.Name)
			}
			even = append(even, c.Name)
		}
		if cont = l.Continue; cont == "" {
			break
		}
	}
	if len(even) != 13 {
		t.Errorf("label-selected paging found %d items, want 13: %v", len(even), even)
	}

	// client-go's pager walks the whole list.
	p := pager.New(func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
		return cms.List(ctx, opts)
	})
	p.PageSize = 7
	var seen []string
	if err := p.EachListItem(ctx, metav1.ListOptions{}, func(obj runtime.Object) error {
		seen = append(seen, obj.(*corev1.ConfigMap).Name)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(seen) != 25 {
		t.Errorf("pager saw %d items, want 25", len(seen))
	}
}
