package components_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/capstan-net/capstan/control/components"
)

func TestParseOverrides(t *testing.T) {
	c := components.APIServer()
	got, err := components.ParseOverrides(c, "--kube-apiserver-arg", []string{"--audit-log-maxage=3", "v=4", "feature_gates=A=true,B=false"})
	if err != nil {
		t.Fatal(err)
	}
	if got["audit-log-maxage"] != "3" || got["v"] != "4" || got["feature_gates"] != "A=true,B=false" {
		t.Fatalf("overrides %v", got)
	}
	_, err = components.ParseOverrides(c, "--kube-apiserver-arg", []string{"no-such-flag=1"})
	if err == nil || !strings.Contains(err.Error(), "kube-apiserver has no flag --no-such-flag") {
		t.Fatalf("unknown flag: %v", err)
	}
	_, err = components.ParseOverrides(components.Scheduler(), "--kube-scheduler-arg", []string{"leader-elect"})
	if err == nil || !strings.Contains(err.Error(), "want name=value") {
		t.Fatalf("missing value: %v", err)
	}
	if _, err := components.ParseOverrides(components.ControllerManager(), "--kube-controller-manager-arg",
		[]string{"controllers=*,-node-lifecycle-controller", "node-monitor-grace-period=10s"}); err != nil {
		t.Fatal(err)
	}
}

func TestMergeOverridesDefaults(t *testing.T) {
	got := components.Merge(components.Args{"b": "1", "a": "2"}, components.Args{"b": "3", "c": "4"})
	want := []string{"--a=2", "--b=3", "--c=4"}
	if !slices.Equal(got, want) {
		t.Fatalf("Merge = %v, want %v", got, want)
	}
}

func TestParseRejectsBadValues(t *testing.T) {
	if _, err := components.Scheduler().Parse([]string{"--secure-port=notanumber"}); err == nil {
		t.Fatal("a non-numeric port was accepted")
	}
	if _, err := components.ControllerManager().Parse([]string{"--leader-elect=false", "stray"}); err == nil {
		t.Fatal("a positional argument was accepted")
	}
	if _, err := components.APIServer().Parse([]string{"--secure-port=6443", "--service-cluster-ip-range=10.96.0.0/16"}); err != nil {
		t.Fatal(err)
	}
}
