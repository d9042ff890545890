package ebpf

import (
	"encoding/binary"
	"hash/fnv"
	"slices"
)

const (
	// maglevFactor is the minimum table size per backend: at least 100 slots each keeps every
	// backend's share within about 1% of even.
	maglevFactor = 100
	// maglevMinSize is the smallest table. Maglev moves a little more than the minimal 1/n of
	// clients when a backend goes; with under ~300 slots per backend that excess passes 2%, so
	// small services get a 16381-slot (64 KiB) table, as Cilium and Katran do.
	maglevMinSize = 16381
)

// MaglevTableSize returns the Maglev table size for n backends: the smallest prime that is at
// least 100*n and at least 16381. A prime lets every backend's skip step visit every slot.
func MaglevTableSize(n int) int {
	m := max(n*maglevFactor, maglevMinSize)
	for !isPrime(m) {
		m++
	}
	return m
}

func isPrime(n int) bool {
	if n < 2 {
		return false
	}
	for d := 2; d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}

// Maglev fills a lookup table of size m (see MaglevTableSize) for the named backends, as in
// Google's Maglev paper: each backend walks its own permutation of the slots, derived from its
// name and the cluster-wide seed, and the backends take turns claiming their next free slot.
// Entry i of the result is an index into names. Names identify backends the same way on every
// node (address:port), so every node builds the same table; their order does not matter.
func Maglev(names []string, m int, seed uint32) []int {
	table := make([]int, m)
	if len(names) == 0 || m == 0 {
		return table[:0]
	}
	// Claim order follows sorted names, so the input order cannot change the table.
	order := make([]int, len(names))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		if names[a] < names[b] {
			return -1
		}
		if names[a] > names[b] {
			return 1
		}
		return a - b
	})

	offset := make([]uint64, len(names))
	skip := make([]uint64, len(names))
	next := make([]uint64, len(names))
	for i, name := range names {
		offset[i] = nameHash(name, seed, 0) % uint64(m)
		if m > 1 {
			skip[i] = nameHash(name, seed, 1)%uint64(m-1) + 1
		}
	}
	for i := range table {
		table[i] = -1
	}
	for filled := 0; ; {
		for _, b := range order {
			c := (offset[b] + next[b]*skip[b]) % uint64(m)
			for table[c] >= 0 {
				next[b]++
				c = (offset[b] + next[b]*skip[b]) % uint64(m)
			}
			table[c] = b
			next[b]++
			filled++
			if filled == m {
				return table
			}
		}
	}
}

// nameHash hashes a backend name for one of Maglev's two permutation parameters.
func nameHash(name string, seed uint32, which byte) uint64 {
	h := fnv.New64a()
	var b [5]byte
	binary.LittleEndian.PutUint32(b[:4], seed)
	b[4] = which
	h.Write(b[:])
	h.Write([]byte(name))
	return mix64(h.Sum64())
}

// mix64 is SplitMix64's finaliser; FNV alone spreads short, similar names poorly.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// ClientHash is the hash the BPF programs index Maglev tables with (client_hash in
// bpf/lib/maglev.h): client is an IPv4 address as a big-endian integer, or a network
// namespace cookie on the socket path. Slot i of the table for a client is
// ClientHash(client, seed) % m.
func ClientHash(client uint64, seed uint32) uint32 {
	h := uint32(client) ^ uint32(client>>32) ^ seed
	h ^= h >> 16
	h *= 0x85ebca6b
	h ^= h >> 13
	h *= 0xc2b2ae35
	h ^= h >> 16
	return h
}
