package scheduler

import "testing"

func TestUnschedulableMessage(t *testing.T) {
	cases := []struct {
		name    string
		total   int
		reasons map[string]int
		want    string
	}{
		{"no nodes", 0, nil, "no nodes available to schedule pods"},
		{"one reason", 3, map[string]int{"Insufficient cpu": 3}, "0/3 nodes are available: 3 Insufficient cpu."},
		{"sorted as upstream sorts", 3,
			map[string]int{"Insufficient cpu": 2, "node(s) had untolerated taint {dedicated: db}": 1},
			"0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: db}, 2 Insufficient cpu."},
		// One node short of cpu and memory counts under both.
		{"a node with two reasons", 2,
			map[string]int{"Insufficient cpu": 1, "Insufficient memory": 1, "node(s) were unschedulable": 1},
			"0/2 nodes are available: 1 Insufficient cpu, 1 Insufficient memory, 1 node(s) were unschedulable."},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := unschedulableMessage(tc.total, tc.reasons); got != tc.want {
				t.Fatalf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
}
