package api_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/capstan-net/capstan/control/server/servertest"
)

// kubectl runs `capstan kubectl` against one server and namespace.
type kubectl struct {
	t    *testing.T
	s    *servertest.Server
	ns   string
	home string
}

func (k *kubectl) cmd(args ...string) *exec.Cmd {
	full := append([]string{"kubectl", "--kubeconfig", k.s.Kubeconfig, "-n", k.ns}, args...)
	cmd := exec.Command(capstanBin, full...)
	// A private HOME keeps kubectl's discovery cache per test.
	cmd.Env = append(os.Environ(), "HOME="+k.home)
	return cmd
}

// run returns the combined output and whether kubectl succeeded.
func (k *kubectl) run(args ...string) (string, error) {
	k.t.Helper()
	out, err := k.cmd(args...).CombinedOutput()
	return string(out), err
}

// ok runs kubectl and fails the test unless it succeeds.
func (k *kubectl) ok(args ...string) string {
	k.t.Helper()
	out, err := k.run(args...)
	if err != nil {
		k.t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// exitCode is a command's exit status, 0 for success and -1 if it did not run.
func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// expect fails the test unless out matches every pattern.
func expect(t *testing.T, what, out string, patterns ...string) {
	t.Helper()
	for _, p := range patterns {
		if !regexp.MustCompile(p).MatchString(out) {
			t.Errorf("%s: output does not match %q:\n%s", what, p, out)
		}
	}
}

// TestKubectl drives the embedded kubectl through the life of
// examples/hello.yaml and checks what each command prints and does.
func TestKubectl(t *testing.T) {
	t.Parallel()
	s := startServer(t, servertest.Options{})
	cs := s.Client()
	ctx := context.Background()
	ns := newNamespace(t, cs, "kubectl")
	k := &kubectl{t: t, s: s, ns: ns, home: t.TempDir()}
	manifest := filepath.Join(repoRoot, "examples", "hello.yaml")

	out := k.ok("apply", "-f", manifest)
	expect(t, "apply", out, `configmap/hello-config created`, `deployment.apps/hello created`, `service/hello created`)
	svc, err := cs.CoreV1().Services(ns).Get(ctx, "hello", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if svc.Spec.Ports[0].NodePort != 30080 || !strings.HasPrefix(svc.Spec.ClusterIP, "10.96.") {
		t.Fatalf("service hello: nodePort %d clusterIP %q, want 30080 and an address in 10.96.0.0/16", svc.Spec.Ports[0].NodePort, svc.Spec.ClusterIP)
	}
	ip := regexp.QuoteMeta(svc.Spec.ClusterIP)

	out = k.ok("apply", "-f", manifest)
	expect(t, "apply again", out, `configmap/hello-config unchanged`, `deployment.apps/hello unchanged`, `service/hello unchanged`)

	// diff asks the server for a dry-run patch: it shows the change and
	// leaves the live object alone.
	changed := filepath.Join(t.TempDir(), "hello.yaml")
	data, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(changed, bytes.Replace(data, []byte("replicas: 2"), []byte("replicas: 5"), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = k.run("diff", "-f", changed)
	if code := exitCode(err); code != 1 {
		t.Errorf("diff of a changed manifest exited %d (%v), want 1:\n%s", code, err, out)
	}
	expect(t, "diff", out, `(?m)^-\s+replicas: 2$`, `(?m)^\+\s+replicas: 5$`)
	out = k.ok("create", "configmap", "dry", "--from-literal=a=b", "--dry-run=server", "-o", "name")
	expect(t, "create --dry-run=server", out, `configmap/dry`)
	if _, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, "dry", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("dry-run create was stored: %v", err)
	}

	out = k.ok("get", "deployments,services,configmaps", "-o", "wide")
	expect(t, "get -o wide", out,
		`NAME\s+READY\s+UP-TO-DATE\s+AVAILABLE\s+AGE\s+CONTAINERS\s+IMAGES\s+SELECTOR`,
		`deployment.apps/hello\s+0/2\s+0\s+0\s+\S+\s+echo\s+capstan.local/echo:1.0\s+app=hello`,
		`service/hello\s+NodePort\s+`+ip+`\s+<none>\s+80:30080/TCP\s+\S+\s+app=hello`,
		`configmap/hello-config\s+1\s+`)

	out = k.ok("get", "deployment", "hello", "-o", "yaml")
	var d appsv1.Deployment
	if err := yaml.Unmarshal([]byte(out), &d); err != nil {
		t.Fatalf("get -o yaml: %v\n%s", err, out)
	}
	live, err := cs.AppsV1().Deployments(ns).Get(ctx, "hello", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if *live.Spec.Replicas != 2 {
		t.Errorf("diff or dry-run changed the live deployment: replicas %d", *live.Spec.Replicas)
	}
	if d.Kind != "Deployment" || d.APIVersion != "apps/v1" || d.Name != "hello" || d.ResourceVersion != live.ResourceVersion ||
		*d.Spec.Replicas != 2 || d.Spec.Template.Spec.Containers[0].Image != "capstan.local/echo:1.0" ||
		d.Annotations["kubectl.kubernetes.io/last-applied-configuration"] == "" {
		t.Errorf("get -o yaml gave an unexpected Deployment:\n%s", out)
	}
	// Defaults were applied by the server.
	if d.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType || d.Spec.Template.Spec.RestartPolicy != corev1.RestartPolicyAlways {
		t.Errorf("get -o yaml: defaults missing (strategy %q, restartPolicy %q)", d.Spec.Strategy.Type, d.Spec.Template.Spec.RestartPolicy)
	}

	out = k.ok("describe", "deployment", "hello")
	expect(t, "describe deployment", out, `Name:\s+hello`, `Namespace:\s+`+ns, `Selector:\s+app=hello`,
		`Replicas:\s+2 desired \| 0 updated \| 0 total \| 0 available \| 0 unavailable`, `Image:\s+capstan.local/echo:1.0`,
		`hello-config\s+ConfigMap`)
	out = k.ok("describe", "service", "hello")
	expect(t, "describe service", out, `Type:\s+NodePort`, `IP:\s+`+ip, `NodePort:\s+http\s+30080/TCP`, `TargetPort:\s+http/TCP`)

	out = k.ok("api-resources")
	expect(t, "api-resources", out, `deployments\s+deploy\s+apps/v1\s+true\s+Deployment`, `services\s+svc\s+v1\s+true\s+Service`, `nodes\s+no\s+v1\s+false\s+Node`)
	out = k.ok("explain", "deployment.spec.replicas")
	expect(t, "explain", out, `FIELD:\s+replicas`)

	out = k.ok("scale", "deployment", "hello", "--replicas=3")
	expect(t, "scale", out, `deployment.apps/hello scaled`)
	live, err = cs.AppsV1().Deployments(ns).Get(ctx, "hello", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if *live.Spec.Replicas != 3 || live.Generation != 2 {
		t.Errorf("after scale: replicas %d generation %d, want 3 and 2", *live.Spec.Replicas, live.Generation)
	}

	// Strategic merge: containers merge by name, so args survive.
	out = k.ok("patch", "deployment", "hello", "-p", `{"spec":{"template":{"spec":{"containers":[{"name":"echo","image":"capstan.local/echo:v2"}]}}}}`)
	expect(t, "strategic patch", out, `deployment.apps/hello patched`)
	live, err = cs.AppsV1().Deployments(ns).Get(ctx, "hello", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c := live.Spec.Template.Spec.Containers; len(c) != 1 || c[0].Image != "capstan.local/echo:v2" || strings.Join(c[0].Args, " ") != "serve --http-port=8080" {
		t.Errorf("after strategic patch: containers %+v", c)
	}
	// Merge patch: maps merge.
	out = k.ok("patch", "configmap", "hello-config", "--type=merge", "-p", `{"data":{"EXTRA":"yes"}}`)
	expect(t, "merge patch", out, `configmap/hello-config patched`)
	// JSON patch: operations in order.
	out = k.ok("patch", "configmap", "hello-config", "--type=json", "-p", `[{"op":"test","path":"/data/EXTRA","value":"yes"},{"op":"replace","path":"/data/GREETING","value":"hi"},{"op":"remove","path":"/data/EXTRA"}]`)
	expect(t, "json patch", out, `configmap/hello-config patched`)
	cm, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, "hello-config", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(cm.Data) != 1 || cm.Data["GREETING"] != "hi" {
		t.Errorf("after merge and json patches: data %v, want only GREETING=hi", cm.Data)
	}
	out, err = k.run("patch", "configmap", "hello-config", "--type=json", "-p", `[{"op":"test","path":"/data/GREETING","value":"nope"}]`)
	if err == nil {
		t.Errorf("a failing json patch test op succeeded:\n%s", out)
	}
	expect(t, "failing json patch", out, `(?i)test`)
	out = k.ok("patch", "service", "hello", "--type=merge", "-p", `{"metadata":{"annotations":{"team":"blue"}}}`)
	expect(t, "merge patch service", out, `service/hello patched`)

	// Server-side apply meets the fields scale and patch took over.
	out, err = k.run("apply", "--server-side", "-f", manifest)
	if err == nil {
		t.Errorf("server-side apply over changed replicas succeeded without --force-conflicts:\n%s", out)
	}
	expect(t, "server-side apply conflict", out, `conflict`, `\.spec\.replicas`)
	out = k.ok("apply", "--server-side", "--force-conflicts", "-f", manifest)
	expect(t, "server-side apply --force-conflicts", out, `configmap/hello-config serverside-applied`, `deployment.apps/hello serverside-applied`, `service/hello serverside-applied`)
	live, err = cs.AppsV1().Deployments(ns).Get(ctx, "hello", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if *live.Spec.Replicas != 2 || live.Spec.Template.Spec.Containers[0].Image != "capstan.local/echo:1.0" {
		t.Errorf("after forced apply: replicas %d image %s, want 2 and echo:1.0", *live.Spec.Replicas, live.Spec.Template.Spec.Containers[0].Image)
	}
	applied := false
	for _, mf := range live.ManagedFields {
		if mf.Manager == "kubectl" && mf.Operation == metav1.ManagedFieldsOperationApply {
			applied = true
		}
	}
	if !applied {
		t.Errorf("managedFields has no Apply entry for kubectl: %+v", live.ManagedFields)
	}
	cm, err = cs.CoreV1().ConfigMaps(ns).Get(ctx, "hello-config", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cm.Data["GREETING"] != "hello from capstan" {
		t.Errorf("after forced apply: GREETING %q", cm.Data["GREETING"])
	}
	out = k.ok("apply", "--server-side", "-f", manifest)
	expect(t, "server-side apply again", out, `deployment.apps/hello serverside-applied`)

	// rollout status waits on a watch until the status says the rollout is done.
	rollout := k.cmd("rollout", "status", "deployment/hello", "--timeout=60s")
	var rolloutOut strings.Builder
	rollout.Stdout, rollout.Stderr = &rolloutOut, &rolloutOut
	if err := rollout.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- rollout.Wait() }()
	select {
	case err := <-done:
		t.Fatalf("rollout status returned before the deployment had any status: %v\n%s", err, rolloutOut.String())
	case <-time.After(1500 * time.Millisecond):
	}
	live, err = cs.AppsV1().Deployments(ns).Get(ctx, "hello", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	live.Status = appsv1.DeploymentStatus{
		ObservedGeneration: live.Generation,
		Replicas:           2, UpdatedReplicas: 2, ReadyReplicas: 2, AvailableReplicas: 2,
		Conditions: []appsv1.DeploymentCondition{
			{Type: appsv1.DeploymentAvailable, Status: corev1.ConditionTrue, Reason: "MinimumReplicasAvailable"},
			{Type: appsv1.DeploymentProgressing, Status: corev1.ConditionTrue, Reason: "NewReplicaSetAvailable"},
		},
	}
	if _, err := cs.AppsV1().Deployments(ns).UpdateStatus(ctx, live, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("rollout status: %v\n%s", err, rolloutOut.String())
		}
	case <-time.After(30 * time.Second):
		rollout.Process.Kill()
		<-done
		t.Fatalf("rollout status did not see the status update:\n%s", rolloutOut.String())
	}
	expect(t, "rollout status", rolloutOut.String(), `deployment "hello" successfully rolled out`)
	out = k.ok("get", "deployment", "hello")
	expect(t, "get after rollout", out, `hello\s+2/2\s+2\s+2\s+`)

	out = k.ok("delete", "-f", manifest, "--wait", "--timeout=30s")
	expect(t, "delete --wait", out, `configmap "hello-config" deleted`, `deployment.apps "hello" deleted`, `service "hello" deleted`)
	if _, err := cs.AppsV1().Deployments(ns).Get(ctx, "hello", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("deployment after delete --wait: %v", err)
	}
	if _, err := cs.CoreV1().Services(ns).Get(ctx, "hello", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("service after delete --wait: %v", err)
	}
	// The deleted Service's node port is free again.
	again := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "again"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, ClusterIP: svc.Spec.ClusterIP,
			Ports: []corev1.ServicePort{{Port: 80, NodePort: 30080}}},
	}
	if _, err := cs.CoreV1().Services(ns).Create(ctx, again, metav1.CreateOptions{}); err != nil {
		t.Errorf("reuse nodePort 30080 and clusterIP %s after delete: %v", svc.Spec.ClusterIP, err)
	}
	// Give 30080 back at once: on a shared etcd the next run needs it.
	if err := cs.CoreV1().Services(ns).Delete(ctx, "again", metav1.DeleteOptions{}); err != nil {
		t.Error(err)
	}
	out, err = k.run("get", "deployment", "hello")
	if err == nil {
		t.Errorf("get of a deleted deployment succeeded:\n%s", out)
	}
	expect(t, "get deleted", out, `deployments.apps "hello" not found`)
}
