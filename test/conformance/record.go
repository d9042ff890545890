package conformance

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Record is what one suite in one service mode gave, kept in the repository
// (docs/conformance/<suite>-<mode>.json) so the table can be rendered again
// when another suite or mode runs.
type Record struct {
	Suite      string    `json:"suite"` // conformance or sig-network
	Mode       string    `json:"mode"`  // ebpf, iptables or none
	Date       time.Time `json:"date"`
	Kubernetes string    `json:"kubernetes"`
	Capstan    string    `json:"capstan"` // the commit it ran on
	Machine    string    `json:"machine"`
	Took       string    `json:"took"`
	Passed     int       `json:"passed"`
	Failed     int       `json:"failed"`
	Skipped    int       `json:"skipped"`
	NotPassed  []Spec    `json:"notPassed"`
}

// NewRecord summarises results.
func NewRecord(suite, mode string, res *Results) *Record {
	r := &Record{Suite: suite, Mode: mode, Passed: res.Count(Passed), Failed: res.Count(Failed), Skipped: res.Count(Skipped)}
	for _, s := range res.Specs {
		if s.State != Passed {
			s.Duration = 0
			r.NotPassed = append(r.NotPassed, s)
		}
	}
	slices.SortFunc(r.NotPassed, func(a, b Spec) int { return strings.Compare(a.Name, b.Name) })
	return r
}

func (r *Record) file(dir string) string {
	return filepath.Join(dir, r.Suite+"-"+r.Mode+".json")
}

// Save writes the record into dir.
func (r *Record) Save(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(r.file(dir), append(data, '\n'), 0o644)
}

// LoadRecords reads every record in dir.
func LoadRecords(dir string) ([]*Record, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	var recs []*Record
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var r Record
		if err := json.Unmarshal(data, &r); err != nil {
			return nil, fmt.Errorf("conformance record %s: %w", f, err)
		}
		recs = append(recs, &r)
	}
	return recs, nil
}
