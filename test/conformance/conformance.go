// Package conformance runs the upstream Kubernetes end-to-end suite (e2e.test,
// built by tools/e2e, through ginkgo) against a cluster and reads what it
// reports: which specs passed, failed or were skipped, and why.
package conformance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"
)

// Suites name the selections this project runs.
const (
	// FocusConformance is every conformance spec.
	FocusConformance = `\[Conformance\]`
	// FocusNetworkConformance is the [sig-network] part of it (47 in v1.37).
	FocusNetworkConformance = `\[sig-network\].*\[Conformance\]`
	// FocusNetwork is every [sig-network] spec, the way Cilium's CI runs them.
	FocusNetwork = `\[sig-network\]`
	// SkipNetwork leaves out of FocusNetwork what cannot apply here: gated
	// features, disruptive specs, cloud load balancers, SCTP, IPv6 and dual
	// stack.
	SkipNetwork = `\[Alpha\]|\[Beta\]|\[Feature:|\[Disruptive\]|LoadBalancer|[Ll]oad [Bb]alancer|SCTP|IPv6|[Dd]ual[- ]?[Ss]tack`
	// Serial marks specs that must run alone.
	Serial = `\[Serial\]`
)

// Run is one ginkgo run of e2e.test.
type Run struct {
	Ginkgo     string // the ginkgo CLI
	E2ETest    string // the compiled e2e.test
	Kubeconfig string
	Kubectl    string // a kubectl the specs exec (capstan answers to that name)
	Dir        string // reports and spec output go here
	Name       string // names the report: <Dir>/<Name>.json
	Focus      string
	Skip       string
	Procs      int // above 1, specs run in parallel processes
	// Nodes is the cluster's node count. The framework counts the nodes
	// itself only in the first parallel process; in the others, specs that
	// need several nodes would skip.
	Nodes   int
	Timeout time.Duration // the whole run
	Output  io.Writer     // ginkgo's progress; nil discards it
}

// Args is the ginkgo command line.
func (r Run) Args() []string {
	args := []string{"--no-color", "--timeout=" + r.Timeout.String(),
		"--json-report=" + r.Name + ".json", "--output-dir=" + r.Dir, "--focus=" + r.Focus}
	if r.Skip != "" {
		args = append(args, "--skip="+r.Skip)
	}
	if r.Procs > 1 {
		args = append(args, "--procs="+strconv.Itoa(r.Procs))
	}
	args = append(args, r.E2ETest, "--",
		"--kubeconfig="+r.Kubeconfig, "--provider=skeleton", "--kubectl-path="+r.Kubectl,
		"--report-dir="+filepath.Join(r.Dir, r.Name), "--e2e-output-dir="+filepath.Join(r.Dir, r.Name),
		// The report keeps a failure's message; a dump of every
		// namespace's events would bury it in the output.
		"--dump-logs-on-failure=false")
	if r.Nodes > 0 {
		args = append(args, "--num-nodes="+strconv.Itoa(r.Nodes))
	}
	return args
}

// Exec runs the specs and returns their results. A run whose specs fail is
// not an error: the results say so. An error means there are no results.
func (r Run) Exec(ctx context.Context) (*Results, error) {
	if r.Timeout == 0 {
		r.Timeout = 2 * time.Hour
	}
	for _, p := range []string{r.Ginkgo, r.E2ETest, r.Kubectl, r.Kubeconfig} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("conformance: %w (make e2e-tools builds e2e.test and ginkgo)", err)
		}
	}
	if err := os.MkdirAll(filepath.Join(r.Dir, r.Name), 0o755); err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, r.Ginkgo, r.Args()...)
	cmd.Stdout, cmd.Stderr = r.Output, r.Output
	// A failing spec makes ginkgo exit 1; only a missing report is an error.
	runErr := cmd.Run()
	res, err := ReadReport(filepath.Join(r.Dir, r.Name+".json"))
	if err != nil {
		return nil, errors.Join(fmt.Errorf("ginkgo: %v", runErr), err)
	}
	return res, nil
}
