package kubelet

import (
	"context"
	"net"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"
)

func TestContainerEnv(t *testing.T) {
	cs := fake.NewSimpleClientset(
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cm", Namespace: "ns"}, Data: map[string]string{"a": "1", "b": "2"}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "s", Namespace: "ns"}, Data: map[string][]byte{"pw": []byte("x")}},
	)
	k := New(Config{Client: cs, NodeIPs: []net.IP{net.ParseIP("172.31.0.2")}})
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", UID: "u1", Labels: map[string]string{"app": "web"}}}
	c := &corev1.Container{
		Name:    "c",
		EnvFrom: []corev1.EnvFromSource{{Prefix: "CM_", ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cm"}}}},
		Env: []corev1.EnvVar{
			{Name: "NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
			{Name: "APP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels['app']"}}},
			{Name: "IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
			{Name: "HOST", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.hostIP"}}},
			{Name: "PW", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "s"}, Key: "pw"}}},
			{Name: "OPT", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "missing"}, Key: "k", Optional: ptr.To(true)}}},
			{Name: "REF", Value: "$(NAME)-$(CM_a)-$(UNDEFINED)"},
			{Name: "CM_a", Value: "override"},
		},
	}
	env, err := k.containerEnv(context.Background(), pod, c, &sandbox{IPs: []string{"10.244.1.5"}})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"CM_a=override", "CM_b=2", "NAME=p", "APP=web", "IP=10.244.1.5", "HOST=172.31.0.2", "PW=x", "REF=p-1-$(UNDEFINED)"}
	// envFrom keys come in map order; compare as sets, and check order of
	// the explicit ones.
	if !sameSet(env, want) {
		t.Fatalf("env = %v\nwant %v", env, want)
	}

	c.Env = []corev1.EnvVar{{Name: "X", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "s"}, Key: "nope"}}}}
	if _, err := k.containerEnv(context.Background(), pod, c, &sandbox{}); err == nil || !strings.Contains(err.Error(), `key "nope" not found in secret "s"`) {
		t.Fatalf("missing secret key: err = %v", err)
	}
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	m := map[string]int{}
	for _, x := range a {
		m[x]++
	}
	for _, x := range b {
		m[x]--
	}
	for _, v := range m {
		if v != 0 {
			return false
		}
	}
	return true
}

func TestNormalizeImage(t *testing.T) {
	for in, want := range map[string]string{
		"busybox":                "docker.io/library/busybox:latest",
		"capstan.local/echo:1.0": "capstan.local/echo:1.0",
		"registry.example/a/b":   "registry.example/a/b:latest",
		"capstan.local/echo@sha256:" + strings.Repeat("a", 64): "capstan.local/echo@sha256:" + strings.Repeat("a", 64),
	} {
		got, err := normalizeImage(in)
		if err != nil || got != want {
			t.Errorf("normalizeImage(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := normalizeImage("Bad Name"); err == nil {
		t.Error("normalizeImage accepted an invalid name")
	}
}

func TestCapNames(t *testing.T) {
	got := capNames([]corev1.Capability{"NET_ADMIN", "cap_sys_time", "ALL"})
	want := []string{"CAP_NET_ADMIN", "CAP_SYS_TIME", "ALL"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("capNames = %v, want %v", got, want)
	}
}

func TestResourceField(t *testing.T) {
	c := &corev1.Container{Resources: corev1.ResourceRequirements{
		Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1500m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m")},
	}}
	for _, tc := range []struct {
		res, div, want string
	}{
		{"limits.cpu", "", "2"},
		{"limits.cpu", "1m", "1500"},
		{"requests.cpu", "1m", "250"},
		{"limits.memory", "", "67108864"},
		{"limits.memory", "1Mi", "64"},
	} {
		sel := &corev1.ResourceFieldSelector{Resource: tc.res}
		if tc.div != "" {
			sel.Divisor = resource.MustParse(tc.div)
		}
		got, _, err := resourceField(c, sel)
		if err != nil || got != tc.want {
			t.Errorf("%s/%s = %q, %v; want %q", tc.res, tc.div, got, err, tc.want)
		}
	}
}

func TestSecurityOptsRejectsBadIDs(t *testing.T) {
	if _, err := securityOpts(nil, &corev1.SecurityContext{RunAsUser: ptr.To(int64(-1))}); err == nil {
		t.Fatal("negative runAsUser accepted")
	}
	opts, err := securityOpts(&corev1.PodSecurityContext{RunAsUser: ptr.To(int64(65534))}, &corev1.SecurityContext{
		Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_ADMIN"}, Drop: []corev1.Capability{"ALL"}},
	})
	if err != nil || len(opts) != 3 {
		t.Fatalf("securityOpts = %d opts, %v; want 3 (add, drop, user)", len(opts), err)
	}
}
