package conformance

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/onsi/ginkgo/v2/types"
)

// States a spec ends in, as this package counts them.
const (
	Passed  = "passed"
	Failed  = "failed"
	Skipped = "skipped"
)

// Spec is one spec's outcome.
type Spec struct {
	Name     string        `json:"name"`
	State    string        `json:"state"`
	Reason   string        `json:"reason,omitempty"` // one line, for a spec not passed
	Duration time.Duration `json:"duration"`
}

// Results are a run's specs, in the order they ran.
type Results struct {
	Specs []Spec `json:"specs"`
}

// Count returns how many specs ended in state.
func (r *Results) Count(state string) int {
	n := 0
	for _, s := range r.Specs {
		if s.State == state {
			n++
		}
	}
	return n
}

// Merge appends other's specs (a serial run after a parallel one).
func (r *Results) Merge(other *Results) {
	r.Specs = append(r.Specs, other.Specs...)
}

// ReadReport reads a ginkgo JSON report.
func ReadReport(path string) (*Results, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("ginkgo report: %w", err)
	}
	var reports []types.Report
	if err := json.Unmarshal(data, &reports); err != nil {
		return nil, fmt.Errorf("ginkgo report %s: %w", path, err)
	}
	res := &Results{}
	for _, rep := range reports {
		for _, sr := range rep.SpecReports {
			if s, ok := spec(sr); ok {
				res.Specs = append(res.Specs, s)
			}
		}
	}
	return res, nil
}

// spec turns a ginkgo spec report into a Spec. Specs the focus left out are
// reported as skipped with no message; they are not part of the run. A
// failed suite-level node (BeforeSuite) is kept: it fails every spec.
func spec(sr types.SpecReport) (Spec, bool) {
	if sr.LeafNodeType != types.NodeTypeIt {
		if sr.State.Is(types.SpecStateFailureStates) {
			return Spec{Name: "[" + sr.LeafNodeType.String() + "]", State: Failed, Reason: reason(sr)}, true
		}
		return Spec{}, false
	}
	s := Spec{Name: sr.FullText(), Duration: sr.RunTime}
	switch {
	case sr.State == types.SpecStatePassed:
		s.State = Passed
	case sr.State == types.SpecStateSkipped || sr.State == types.SpecStatePending:
		if sr.Failure.Message == "" {
			return Spec{}, false
		}
		s.State, s.Reason = Skipped, reason(sr)
	default:
		s.State, s.Reason = Failed, reason(sr)
	}
	return s, true
}

// reason is the first line of a spec's failure, at most 200 characters.
func reason(sr types.SpecReport) string {
	msg := strings.TrimSpace(sr.Failure.Message)
	if msg == "" {
		msg = sr.State.String()
	}
	lines := slices.DeleteFunc(strings.Split(msg, "\n"), func(l string) bool { return strings.TrimSpace(l) == "" })
	line := strings.Join(strings.Fields(lines[0]), " ")
	if len(line) > 200 {
		line = line[:197] + "..."
	}
	return line
}
