//go:build e2e

package e2e_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/utils/ptr"
)

// standardScenarios show that the cluster is Kubernetes itself: the
// upstream control plane and kubelet run every kind of workload and API a
// user's manifests, charts and controllers expect. They run in the full
// cluster only: nothing in them depends on the service mode or routing.
func standardScenarios() []scenario {
	return []scenario{
		{"standard: every built-in resource type is served", full, apiResources},
		{"standard: a new namespace gets its default ServiceAccount and kube-root-ca.crt", full, namespaceDefaults},
		{"standard: a Job runs to completion", full, jobCompletes},
		{"standard: a StatefulSet of 3 gets stable names and ordered start", full, statefulSet},
		{"standard: a CRD is created and a custom resource stored and listed", full, customResource},
		{"standard: RBAC through the in-cluster config: pods allowed, secrets forbidden", full, rbacInCluster},
		{"standard: a PodDisruptionBudget blocks an eviction", full, disruptionBudget},
		{"standard: kubectl attach, logs -f, exec and port-forward", full, kubectlStreams},
		{"standard: projected service-account token and downwardAPI volume", full, projectedVolumes},
		{"standard: a CronJob fires", full, cronJobFires},
	}
}

// builtinResources are resource types of Kubernetes v1.37 that clients
// commonly need, across every API group enabled by default.
var builtinResources = []string{
	"pods", "services", "configmaps", "secrets", "serviceaccounts", "persistentvolumeclaims",
	"persistentvolumes", "resourcequotas", "limitranges", "namespaces", "nodes", "events",
	"deployments", "statefulsets", "daemonsets", "replicasets", "controllerrevisions",
	"jobs", "cronjobs", "horizontalpodautoscalers", "poddisruptionbudgets",
	"ingresses", "ingressclasses", "networkpolicies", "servicecidrs", "ipaddresses", "endpointslices",
	"roles", "rolebindings", "clusterroles", "clusterrolebindings",
	"customresourcedefinitions", "apiservices", "storageclasses", "csidrivers", "volumeattachments",
	"priorityclasses", "runtimeclasses", "leases", "certificatesigningrequests",
	"validatingwebhookconfigurations", "mutatingwebhookconfigurations", "validatingadmissionpolicies",
	"tokenreviews", "subjectaccessreviews", "selfsubjectreviews", "flowschemas", "prioritylevelconfigurations",
	"deviceclasses", "resourceclaims",
}

func apiResources(t *testing.T, e *env) {
	out, err := e.c.Kubectl("api-resources", "-o", "name")
	if err != nil {
		t.Fatalf("kubectl api-resources: %v\n%s", err, out)
	}
	have := map[string]bool{}
	for _, l := range strings.Split(out, "\n") {
		have[strings.SplitN(l, ".", 2)[0]] = true
	}
	var missing []string
	for _, r := range builtinResources {
		if !have[r] {
			missing = append(missing, r)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("kubectl api-resources lacks %v (it lists %d)", missing, len(have))
	}
	t.Logf("%d resource types served", len(have))
}

func namespaceDefaults(t *testing.T, e *env) {
	ctx := context.Background()
	ns := "e2e-fresh"
	if _, err := e.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer e.cs.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
	if err := eventually(30*time.Second, func() error {
		if _, err := e.cs.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{}); err != nil {
			return err
		}
		cm, err := e.cs.CoreV1().ConfigMaps(ns).Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !strings.Contains(cm.Data["ca.crt"], "BEGIN CERTIFICATE") {
			return errors.New("kube-root-ca.crt holds no certificate")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func busybox(name string, args ...string) corev1.Container {
	return corev1.Container{Name: name, Image: "capstan.local/busybox:1.0", Command: args}
}

func jobCompletes(t *testing.T, e *env) {
	ctx := context.Background()
	job := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: "pi"}, Spec: batchv1.JobSpec{
		Completions: ptr.To[int32](2), Parallelism: ptr.To[int32](2),
		Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{busybox("c", "sh", "-c", "echo done")}}},
	}}
	if _, err := e.cs.BatchV1().Jobs(e.ns).Create(ctx, job, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer e.cs.BatchV1().Jobs(e.ns).Delete(ctx, "pi", metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationBackground)})
	if err := eventually(2*time.Minute, func() error {
		j, err := e.cs.BatchV1().Jobs(e.ns).Get(ctx, "pi", metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range j.Status.Conditions {
			if c.Type == batchv1.JobComplete && c.Status == corev1.ConditionTrue && j.Status.Succeeded == 2 {
				return nil
			}
		}
		return fmt.Errorf("job: %d succeeded, %d failed", j.Status.Succeeded, j.Status.Failed)
	}); err != nil {
		t.Fatal(err)
	}
	// kubectl says on stderr which of the Job's pods it reads.
	out, err := e.kubectl("logs", "job/pi")
	if err != nil || !strings.HasSuffix(out, "\ndone") && out != "done" {
		t.Fatalf("job logs: %v %q", err, out)
	}
}

func statefulSet(t *testing.T, e *env) {
	ctx := context.Background()
	labels := map[string]string{"app": "web"}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web"}, Spec: corev1.ServiceSpec{
		ClusterIP: corev1.ClusterIPNone, Selector: labels, Ports: []corev1.ServicePort{{Name: "http", Port: 8080}}}}
	if _, err := e.cs.CoreV1().Services(e.ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sts := &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: "web"}, Spec: appsv1.StatefulSetSpec{
		Replicas: ptr.To[int32](3), ServiceName: "web", Selector: &metav1.LabelSelector{MatchLabels: labels},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: ptr.To[int64](1),
			Containers: []corev1.Container{{Name: "echo", Image: "capstan.local/echo:1.0", Args: []string{"serve"},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
					Path: "/readyz", Port: intstr.FromInt32(8080)}}, PeriodSeconds: 1}}},
		}},
	}}
	if _, err := e.cs.AppsV1().StatefulSets(e.ns).Create(ctx, sts, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		e.cs.AppsV1().StatefulSets(e.ns).Delete(ctx, "web", metav1.DeleteOptions{})
		e.cs.CoreV1().Services(e.ns).Delete(ctx, "web", metav1.DeleteOptions{})
	}()
	if err := eventually(2*time.Minute, func() error {
		s, err := e.cs.AppsV1().StatefulSets(e.ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if s.Status.ReadyReplicas != 3 {
			return fmt.Errorf("%d of 3 ready", s.Status.ReadyReplicas)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// OrderedReady: web-N is created only once web-(N-1) is Ready.
	var prevReady time.Time
	for i := 0; i < 3; i++ {
		name := fmt.Sprintf("web-%d", i)
		p, err := e.cs.CoreV1().Pods(e.ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("stable name %s: %v", name, err)
		}
		if got, _ := e.kubectl("exec", name, "--", "hostname"); got != name {
			t.Fatalf("%s has hostname %q", name, got)
		}
		if p.CreationTimestamp.Time.Before(prevReady.Truncate(time.Second)) {
			t.Fatalf("%s created at %s, before web-%d was Ready at %s", name, p.CreationTimestamp, i-1, prevReady)
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady {
				prevReady = c.LastTransitionTime.Time
			}
		}
	}
}

func customResource(t *testing.T, e *env) {
	ctx := context.Background()
	ext := apiextensionsclient.NewForConfigOrDie(e.c.Rest)
	crd := &apiextensionsv1.CustomResourceDefinition{
		ObjectMeta: metav1.ObjectMeta{Name: "widgets.e2e.capstan.io"},
		Spec: apiextensionsv1.CustomResourceDefinitionSpec{
			Group: "e2e.capstan.io", Scope: apiextensionsv1.NamespaceScoped,
			Names: apiextensionsv1.CustomResourceDefinitionNames{Plural: "widgets", Singular: "widget", Kind: "Widget", ListKind: "WidgetList"},
			Versions: []apiextensionsv1.CustomResourceDefinitionVersion{{Name: "v1", Served: true, Storage: true,
				Schema: &apiextensionsv1.CustomResourceValidation{OpenAPIV3Schema: &apiextensionsv1.JSONSchemaProps{
					Type: "object", Properties: map[string]apiextensionsv1.JSONSchemaProps{
						"spec": {Type: "object", Properties: map[string]apiextensionsv1.JSONSchemaProps{"size": {Type: "integer"}}},
					}}}}},
		},
	}
	if _, err := ext.ApiextensionsV1().CustomResourceDefinitions().Create(ctx, crd, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer ext.ApiextensionsV1().CustomResourceDefinitions().Delete(ctx, crd.Name, metav1.DeleteOptions{})
	res := dynamic.NewForConfigOrDie(e.c.Rest).Resource(schema.GroupVersionResource{Group: "e2e.capstan.io", Version: "v1", Resource: "widgets"}).Namespace(e.ns)
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "e2e.capstan.io/v1", "kind": "Widget",
		"metadata": map[string]any{"name": "w1"}, "spec": map[string]any{"size": int64(3)},
	}}
	if err := eventually(30*time.Second, func() error {
		_, err := res.Create(ctx, obj, metav1.CreateOptions{})
		return err
	}); err != nil {
		t.Fatalf("create a Widget: %v", err)
	}
	list, err := res.List(ctx, metav1.ListOptions{})
	if err != nil || len(list.Items) != 1 {
		t.Fatalf("list Widgets: %v %v", err, list)
	}
	if size, _, _ := unstructured.NestedInt64(list.Items[0].Object, "spec", "size"); size != 3 {
		t.Fatalf("stored Widget spec.size = %d", size)
	}
	if out, err := e.kubectl("get", "widgets", "-o", "name"); err != nil || out != "widget.e2e.capstan.io/w1" {
		t.Fatalf("kubectl get widgets: %v %q", err, out)
	}
}

func rbacInCluster(t *testing.T, e *env) {
	ctx := context.Background()
	steps := []func() error{
		func() error {
			_, err := e.cs.CoreV1().ServiceAccounts(e.ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "lister"}}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := e.cs.RbacV1().Roles(e.ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "pod-lister"},
				Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list"}}}}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := e.cs.RbacV1().RoleBindings(e.ns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "lister"},
				RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "pod-lister"},
				Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "lister", Namespace: e.ns}}}, metav1.CreateOptions{})
			return err
		},
	}
	for _, s := range steps {
		if err := s(); err != nil {
			t.Fatal(err)
		}
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "lister"}, Spec: corev1.PodSpec{
		ServiceAccountName: "lister", TerminationGracePeriodSeconds: ptr.To[int64](1),
		Containers: []corev1.Container{{Name: "c", Image: "capstan.local/echo:1.0", Args: []string{"pause"}}}}}
	e.runPod(t, pod)
	for path, want := range map[string]string{
		"/api/v1/namespaces/" + e.ns + "/pods":    "200",
		"/api/v1/namespaces/" + e.ns + "/secrets": "403",
	} {
		if err := eventually(30*time.Second, func() error {
			out, _ := e.kubectl("exec", "lister", "--", "/capstan-echo", "kubeapi", path)
			if !strings.HasPrefix(out, want) {
				return fmt.Errorf("GET %s as the pod's service account: %q, want %s", path, out, want)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
}

// runPod creates pod, deletes it when the test ends, and waits until it runs.
func (e *env) runPod(t *testing.T, pod *corev1.Pod) {
	t.Helper()
	ctx := context.Background()
	if _, err := e.cs.CoreV1().Pods(e.ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.cs.CoreV1().Pods(e.ns).Delete(ctx, pod.Name, metav1.DeleteOptions{}) })
	if err := eventually(2*time.Minute, func() error {
		p, err := e.cs.CoreV1().Pods(e.ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.Phase != corev1.PodRunning {
			return fmt.Errorf("%s is %s", pod.Name, p.Status.Phase)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func disruptionBudget(t *testing.T, e *env) {
	ctx := context.Background()
	pdb := &policyv1.PodDisruptionBudget{ObjectMeta: metav1.ObjectMeta{Name: "echo"}, Spec: policyv1.PodDisruptionBudgetSpec{
		MinAvailable: ptr.To(intstr.FromInt32(3)), Selector: &metav1.LabelSelector{MatchLabels: echoLabels}}}
	if _, err := e.cs.PolicyV1().PodDisruptionBudgets(e.ns).Create(ctx, pdb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer e.cs.PolicyV1().PodDisruptionBudgets(e.ns).Delete(ctx, "echo", metav1.DeleteOptions{})
	if err := eventually(30*time.Second, func() error {
		p, err := e.cs.PolicyV1().PodDisruptionBudgets(e.ns).Get(ctx, "echo", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.ObservedGeneration < p.Generation || p.Status.CurrentHealthy != 3 {
			return fmt.Errorf("pdb: %d healthy", p.Status.CurrentHealthy)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	victim := e.echoPods(t)[0].Name
	err := e.cs.CoreV1().Pods(e.ns).EvictV1(ctx, &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: victim, Namespace: e.ns}})
	if !apierrors.IsTooManyRequests(err) {
		t.Fatalf("evicting %s with 3 of 3 required available: %v, want 429 TooManyRequests", victim, err)
	}
	if p, err := e.cs.CoreV1().Pods(e.ns).Get(ctx, victim, metav1.GetOptions{}); err != nil || p.DeletionTimestamp != nil {
		t.Fatalf("%s went away despite the budget: %v", victim, err)
	}
}

// kubectlCmd is `capstan kubectl` in the suite's namespace, for commands
// that stream.
func (e *env) kubectlCmd(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, e.capstan, append([]string{"kubectl", "-n", e.ns}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+e.kubeconfig)
	return cmd
}

func kubectlStreams(t *testing.T, e *env) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "streams"}, Spec: corev1.PodSpec{
		TerminationGracePeriodSeconds: ptr.To[int64](1),
		Containers: []corev1.Container{
			{Name: "reader", Image: "capstan.local/busybox:1.0", Stdin: true,
				Command: []string{"sh", "-c", "while read line; do echo got $line; done"}},
			{Name: "ticker", Image: "capstan.local/busybox:1.0",
				Command: []string{"sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"}},
			{Name: "web", Image: "capstan.local/echo:1.0", Args: []string{"serve"}},
		}}}
	e.runPod(t, pod)
	steps := []struct {
		name string
		run  func(*testing.T, *env) error
	}{{"attach", attach}, {"logs -f", followLogs}, {"exec", execInPod}, {"port-forward", portForward}}
	for _, s := range steps {
		if err := eventually(30*time.Second, func() error { return s.run(t, e) }); err != nil {
			t.Fatalf("kubectl %s: %v", s.name, err)
		}
	}
}

func attach(t *testing.T, e *env) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := e.kubectlCmd(ctx, "attach", "-i", "streams", "-c", "reader")
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		return err
	}
	defer cmd.Process.Kill()
	defer cmd.Wait()
	sc := bufio.NewScanner(out)
	// attach connects asynchronously: send until an answer comes.
	go func() {
		for i := 0; ctx.Err() == nil; i++ {
			fmt.Fprintf(in, "hello%d\n", i)
			time.Sleep(300 * time.Millisecond)
		}
	}()
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "got hello") {
			return nil
		}
	}
	return errors.New("no answer through the attached stdin")
}

func followLogs(t *testing.T, e *env) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := e.kubectlCmd(ctx, "logs", "-f", "--tail", "1", "streams", "-c", "ticker")
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		return err
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	// Lines that were written after logs -f started prove it follows.
	sc := bufio.NewScanner(out)
	var seen []string
	for sc.Scan() && len(seen) < 5 {
		seen = append(seen, sc.Text())
	}
	if len(seen) < 5 {
		return fmt.Errorf("followed %d lines: %q", len(seen), seen)
	}
	return nil
}

func execInPod(t *testing.T, e *env) error {
	out, err := e.kubectl("exec", "streams", "-c", "reader", "--", "sh", "-c", "echo $((6*7)) && exit 3")
	var exit *exec.ExitError
	if !errors.As(err, &exit) || !strings.HasPrefix(out, "42") {
		return fmt.Errorf("exec: %v %q, want output 42 and exit status 3", err, out)
	}
	return nil
}

func portForward(t *testing.T, e *env) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := e.kubectlCmd(ctx, "port-forward", "pod/streams", ":8080")
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		return err
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(out)
	re := regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+) -> 8080`)
	for sc.Scan() {
		m := re.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		go io.Copy(io.Discard, out)
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://127.0.0.1:" + m[1] + "/hostname")
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "streams" {
			return fmt.Errorf("through the forwarded port: %q", body)
		}
		return nil
	}
	return errors.New("port-forward printed no forwarding line")
}

func projectedVolumes(t *testing.T, e *env) {
	ctx := context.Background()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "projected", Labels: map[string]string{"tier": "gold"}}, Spec: corev1.PodSpec{
		TerminationGracePeriodSeconds: ptr.To[int64](1),
		Containers: []corev1.Container{{Name: "c", Image: "capstan.local/echo:1.0", Args: []string{"pause"},
			VolumeMounts: []corev1.VolumeMount{{Name: "token", MountPath: "/var/run/e2e"}, {Name: "info", MountPath: "/etc/podinfo"}}}},
		Volumes: []corev1.Volume{
			{Name: "token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
				{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: "e2e-audience", ExpirationSeconds: ptr.To[int64](3600), Path: "token"}},
			}}}},
			{Name: "info", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: []corev1.DownwardAPIVolumeFile{
				{Path: "labels", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels"}},
				{Path: "name", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}},
			}}}},
		}}}
	e.runPod(t, pod)
	labels, err := e.kubectl("exec", "projected", "--", "cat", "/etc/podinfo/labels", "/etc/podinfo/name")
	if err != nil || !strings.Contains(labels, `tier="gold"`) || !strings.HasSuffix(labels, "projected") {
		t.Fatalf("downwardAPI files: %v %q", err, labels)
	}
	token, err := e.kubectl("exec", "projected", "--", "cat", "/var/run/e2e/token")
	if err != nil || strings.Count(token, ".") != 2 {
		t.Fatalf("projected token: %v %q", err, token)
	}
	// The API server vouches for it: it names the pod's service account and
	// the pod, for the audience asked.
	review, err := e.cs.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{"e2e-audience"}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st := review.Status
	if !st.Authenticated || st.User.Username != "system:serviceaccount:"+e.ns+":default" ||
		!strings.Contains(fmt.Sprint(st.User.Extra), "projected") {
		t.Fatalf("token review: %+v", st)
	}
}

// cronJobFires creates a CronJob that fires every minute and waits for a
// Job it made to succeed: at most a minute and a bit.
func cronJobFires(t *testing.T, e *env) {
	ctx := context.Background()
	cj := &batchv1.CronJob{ObjectMeta: metav1.ObjectMeta{Name: "tick"}, Spec: batchv1.CronJobSpec{
		Schedule: "* * * * *", ConcurrencyPolicy: batchv1.ForbidConcurrent,
		JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever, Containers: []corev1.Container{busybox("c", "true")}}}}},
	}}
	if _, err := e.cs.BatchV1().CronJobs(e.ns).Create(ctx, cj, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer e.cs.BatchV1().CronJobs(e.ns).Delete(ctx, "tick", metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationBackground)})
	if err := eventually(150*time.Second, func() error {
		c, err := e.cs.BatchV1().CronJobs(e.ns).Get(ctx, "tick", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if c.Status.LastSuccessfulTime == nil {
			return fmt.Errorf("no successful run yet (last scheduled %v)", c.Status.LastScheduleTime)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
