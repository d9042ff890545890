package servicebench

import (
	"slices"
	"testing"
)

func TestMedian(t *testing.T) {
	m := func(test string, ops, bits, p50 float64) Measurement {
		x := Measurement{Test: test}
		x.Result.OpsPerS, x.Result.BitsPerS, x.Result.Latency.P50 = ops, bits, p50
		return x
	}
	got := median([]Measurement{m("crr", 300, 0, 3), m("crr", 100, 0, 1), m("crr", 200, 0, 2)})
	if got.Result.OpsPerS != 200 || got.Result.Latency.P50 != 2 {
		t.Fatalf("median crr run %+v, want the 200/s one with its own latency", got.Result)
	}
	if !slices.Equal(got.Runs, []float64{300, 100, 200}) {
		t.Fatalf("runs %v, want every run's figure in measured order", got.Runs)
	}
	// stream ranks by throughput, not by the operation count.
	got = median([]Measurement{m("stream", 1, 9e9, 0), m("stream", 3, 5e9, 0), m("stream", 2, 7e9, 0)})
	if got.Result.BitsPerS != 7e9 {
		t.Fatalf("median stream run %+v, want 7 Gbit/s", got.Result)
	}
	// Even counts take the lower middle run.
	if got := median([]Measurement{m("rr", 4, 0, 0), m("rr", 1, 0, 0)}); got.Result.OpsPerS != 1 {
		t.Fatalf("median of two %v, want the lower", got.Result.OpsPerS)
	}
}

func TestPairedRatio(t *testing.T) {
	s := Measurement{Test: "stream", Runs: []float64{11.05, 12.01, 13.86}}
	d := Measurement{Test: "stream", Runs: []float64{11.54, 13.45, 13.59}}
	s.Result.BitsPerS, d.Result.BitsPerS = 12.01, 13.45
	r, pairs := pairedRatio(s, d)
	// Back-to-back pairs 0.958, 0.893, 1.020: the median pair, not 12.01/13.45 = 0.893.
	if r < 0.957 || r > 0.958 || len(pairs) != 3 {
		t.Fatalf("paired ratio %.4f %v, want 0.9575 from 3 pairs", r, pairs)
	}
	s.Runs, d.Runs = nil, nil
	if r, pairs := pairedRatio(s, d); pairs != nil || r < 0.892 || r > 0.894 {
		t.Fatalf("single runs: %.4f %v, want the figures' ratio 0.893", r, pairs)
	}
}
