package conformance

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/onsi/ginkgo/v2/types"
)

func it(leaf string, state types.SpecState, msg string) types.SpecReport {
	return types.SpecReport{
		ContainerHierarchyTexts: []string{"[sig-network] Services"}, LeafNodeText: leaf,
		LeafNodeType: types.NodeTypeIt, State: state, Failure: types.Failure{Message: msg}, RunTime: time.Second,
	}
}

func writeReport(t *testing.T, specs ...types.SpecReport) string {
	t.Helper()
	data, err := json.Marshal([]types.Report{{SpecReports: specs}})
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "r.json")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestReadReport(t *testing.T) {
	p := writeReport(t,
		it("should pass [Conformance]", types.SpecStatePassed, ""),
		it("should fail [Conformance]", types.SpecStateFailed, "\n  expected 3 endpoints,\n got 2\n"),
		it("left out by the focus", types.SpecStateSkipped, ""),
		it("needs a cloud [Conformance]", types.SpecStateSkipped, "Only supported for providers [gce]"),
		it("timed out [Conformance]", types.SpecStateTimedout, strings.Repeat("x", 300)),
		types.SpecReport{LeafNodeType: types.NodeTypeSynchronizedBeforeSuite, State: types.SpecStatePassed},
	)
	res, err := ReadReport(p)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(res.Specs); got != 4 {
		t.Fatalf("specs = %d, want 4 (the focus-filtered one and the passed suite node left out): %+v", got, res.Specs)
	}
	if res.Count(Passed) != 1 || res.Count(Failed) != 2 || res.Count(Skipped) != 1 {
		t.Errorf("counts passed/failed/skipped = %d/%d/%d, want 1/2/1", res.Count(Passed), res.Count(Failed), res.Count(Skipped))
	}
	if got := res.Specs[1]; got.Name != "[sig-network] Services should fail [Conformance]" || got.Reason != "expected 3 endpoints," {
		t.Errorf("failed spec = %+v, want its full name and first message line", got)
	}
	if r := res.Specs[3].Reason; len(r) != 200 {
		t.Errorf("long reason is %d characters, want 200", len(r))
	}
}

func TestReadReportSuiteFailure(t *testing.T) {
	p := writeReport(t, types.SpecReport{LeafNodeType: types.NodeTypeSynchronizedBeforeSuite, State: types.SpecStateFailed,
		Failure: types.Failure{Message: "nodes not ready"}})
	res, err := ReadReport(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Specs) != 1 || res.Specs[0].State != Failed || res.Specs[0].Reason != "nodes not ready" {
		t.Fatalf("a failed BeforeSuite must count as a failure: %+v", res.Specs)
	}
}

func TestReadReportErrors(t *testing.T) {
	if _, err := ReadReport(filepath.Join(t.TempDir(), "none.json")); err == nil {
		t.Error("missing report: no error")
	}
	p := filepath.Join(t.TempDir(), "bad.json")
	os.WriteFile(p, []byte("{not json"), 0o644)
	if _, err := ReadReport(p); err == nil || !strings.Contains(err.Error(), p) {
		t.Errorf("bad report: error %v should name the file", err)
	}
}

func TestRunArgs(t *testing.T) {
	r := Run{E2ETest: "/b/e2e.test", Kubeconfig: "/k", Kubectl: "/kubectl", Dir: "/d", Name: "parallel",
		Focus: FocusConformance, Skip: Serial, Procs: 4, Nodes: 3, Timeout: time.Hour}
	args := strings.Join(r.Args(), " ")
	for _, want := range []string{"--procs=4", "--num-nodes=3", "--json-report=parallel.json", "--output-dir=/d", `--skip=\[Serial\]`,
		"/b/e2e.test -- --kubeconfig=/k", "--kubectl-path=/kubectl", "--timeout=1h0m0s"} {
		if !strings.Contains(args, want) {
			t.Errorf("args %q lack %q", args, want)
		}
	}
	r.Procs = 1
	if strings.Contains(strings.Join(r.Args(), " "), "--procs") {
		t.Error("one process: no --procs")
	}
}

func TestMarkdown(t *testing.T) {
	recs := []*Record{
		{Suite: "sig-network", Mode: "none", Passed: 10, Failed: 0, NotPassed: nil},
		{Suite: "sig-network", Mode: "ebpf", Passed: 9, Failed: 1, Skipped: 1, NotPassed: []Spec{
			{Name: "spec a | b", State: Failed, Reason: "timeout"},
			{Name: "spec c", State: Skipped, Reason: "no ssh"},
		}},
	}
	ex, err := ParseExplanations("# comment\n\nspec c\tthe nodes have no SSH server\n")
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	WriteMarkdown(&b, recs, ex)
	md := b.String()
	for _, want := range []string{
		"| sig-network | ebpf | 9 | 1 | 1 | 90.0 % |",
		"| sig-network | none | 10 | 0 | 0 | 100.0 % |",
		"| spec | ebpf | none | reason |",
		`| spec a \| b | failed | passed | timeout |`,
		"| spec c | skipped | passed | the nodes have no SSH server |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	if strings.Index(md, "| sig-network | ebpf") > strings.Index(md, "| sig-network | none") {
		t.Error("ebpf must come before none")
	}
}

func TestParseExplanationsErrors(t *testing.T) {
	for _, in := range []string{"no tab here", "([\tbad regexp", "x\t  "} {
		if _, err := ParseExplanations(in); err == nil {
			t.Errorf("%q: no error", in)
		}
	}
}

func TestRecordRoundTrip(t *testing.T) {
	res := &Results{Specs: []Spec{{Name: "b", State: Failed, Reason: "r", Duration: time.Second}, {Name: "a", State: Passed}, {Name: "a2", State: Skipped}}}
	rec := NewRecord("conformance", "ebpf", res)
	dir := t.TempDir()
	if err := rec.Save(dir); err != nil {
		t.Fatal(err)
	}
	recs, err := LoadRecords(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].Passed != 1 || recs[0].Failed != 1 || len(recs[0].NotPassed) != 2 || recs[0].NotPassed[0].Name != "a2" {
		t.Fatalf("round trip: %+v", recs)
	}
}
