package ebpf

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

func TestMaglevTableSize(t *testing.T) {
	for _, tc := range []struct{ n, want int }{
		{0, 16381}, {1, 16381}, {163, 16381}, {164, 16411}, {1000, 100003}, {2000, 200003},
	} {
		if got := MaglevTableSize(tc.n); got != tc.want {
			t.Errorf("MaglevTableSize(%d) = %d, want %d", tc.n, got, tc.want)
		}
	}
}

func backendNames(n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("10.244.%d.%d:8080", i/250, i%250+1)
	}
	return names
}

func TestMaglevBalanced(t *testing.T) {
	for _, n := range []int{1, 3, 10, 57} {
		names := backendNames(n)
		m := MaglevTableSize(n)
		table := Maglev(names, m, 42)
		if len(table) != m {
			t.Fatalf("n=%d: table has %d entries, want %d", n, len(table), m)
		}
		counts := make([]int, n)
		for _, b := range table {
			if b < 0 || b >= n {
				t.Fatalf("n=%d: entry %d out of range", n, b)
			}
			counts[b]++
		}
		// Maglev gives each backend floor or ceil of m/n, up to the last round's remainder.
		lo, hi := slices.Min(counts), slices.Max(counts)
		if float64(hi-lo) > 0.02*float64(m)/float64(n)+1 {
			t.Errorf("n=%d: shares range %d..%d of %d", n, lo, hi, m)
		}
	}
}

func TestMaglevDeterministic(t *testing.T) {
	names := backendNames(20)
	m := MaglevTableSize(len(names))
	a := Maglev(names, m, 7)

	shuffled := slices.Clone(names)
	rand.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	b := Maglev(shuffled, m, 7)
	for i := range a {
		if names[a[i]] != shuffled[b[i]] {
			t.Fatalf("slot %d: %s with input order A, %s with order B", i, names[a[i]], shuffled[b[i]])
		}
	}

	c := Maglev(names, m, 8)
	same := 0
	for i := range a {
		if a[i] == c[i] {
			same++
		}
	}
	if same == m {
		t.Error("a different seed gave the same table")
	}
}

// Removing one of n backends should move little more than the removed backend's own 1/n.
func TestMaglevMinimalDisruption(t *testing.T) {
	for _, n := range []int{2, 3, 5, 10, 40, 163, 300} {
		names := backendNames(n)
		m := MaglevTableSize(n)
		before := Maglev(names, m, 1)
		for removed := 0; removed < n; removed += max(1, n/8) {
			rest := slices.Delete(slices.Clone(names), removed, removed+1)
			after := Maglev(rest, m, 1)

			moved := 0
			for i := range before {
				if names[before[i]] != rest[after[i]] {
					moved++
				}
			}
			frac := float64(moved) / float64(m)
			if limit := 1/float64(n) + 0.02; frac > limit {
				t.Errorf("n=%d, removing %d: %.4f of slots moved, limit %.4f", n, removed, frac, limit)
			}
		}
	}
}

func TestClientHashMatchesReference(t *testing.T) {
	// Murmur3 fmix32 reference values; the BPF side must agree bit for bit.
	if got := ClientHash(0, 0); got != 0 {
		t.Errorf("ClientHash(0, 0) = %#x, want 0", got)
	}
	if got, want := ClientHash(1, 0), uint32(0x514e28b7); got != want {
		t.Errorf("ClientHash(1, 0) = %#x, want %#x", got, want)
	}
	if ClientHash(1, 5) == ClientHash(1, 6) {
		t.Error("seed does not change the hash")
	}
}
