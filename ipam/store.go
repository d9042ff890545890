// Package ipam hands out pod addresses from a node's pod CIDR and keeps the reservations on disk,
// so that every CNI plugin process on the node, and every restart of it, sees the same state.
//
// Layout of a store directory:
//
//	lock          flock(2) target; every operation holds it (exclusive to write, shared to read)
//	<ip>          one file per reserved address, JSON {"containerID": "...", "ifName": "..."}
//	last-<cidr>   the address last handed out from that CIDR ("/" written as "_")
//
// Files are written under a temporary name and renamed into place, so a reader never sees a
// half-written record. Addresses are handed out round-robin after the last one reserved, so a
// released address is not reused at once.
package ipam

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capstan-net/capstan/internal/atomicfile"
)

var (
	// ErrExhausted means every usable address of the CIDR is reserved.
	ErrExhausted = errors.New("no free address")
	// ErrBusy means the store lock could not be taken before the lock timeout.
	ErrBusy = errors.New("ipam store busy")
)

// DefaultLockTimeout bounds how long an operation waits for the store lock.
const DefaultLockTimeout = 30 * time.Second

const (
	lockFile   = "lock"
	lastPrefix = "last-"
	tmpPrefix  = atomicfile.TempPrefix
)

// Attachment names one interface of one container: the CNI (CNI_CONTAINERID, CNI_IFNAME) pair.
type Attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

func (a Attachment) String() string { return a.ContainerID + "/" + a.IfName }

// Allocation is one reserved address and who holds it.
type Allocation struct {
	Attachment
	IP netip.Addr
}

// Options configure a Store. The zero value is usable.
type Options struct {
	// Logger receives warnings about unreadable records; nil discards them.
	Logger *slog.Logger
	// LockTimeout bounds the wait for the store lock; 0 means DefaultLockTimeout.
	LockTimeout time.Duration
}

// Store is the reservation database in one directory. A Store holds no open files between calls;
// any number of Stores, in any number of processes, may use the same directory.
type Store struct {
	dir         string
	log         *slog.Logger
	lockTimeout time.Duration
}

// Open returns the store in dir, creating the directory if needed.
func Open(dir string, opts Options) (*Store, error) {
	if dir == "" {
		return nil, errors.New("ipam store: empty directory")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create ipam dir: %w", err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	timeout := opts.LockTimeout
	if timeout <= 0 {
		timeout = DefaultLockTimeout
	}
	return &Store{dir: dir, log: log, lockTimeout: timeout}, nil
}

// Dir returns the store directory.
func (s *Store) Dir() string { return s.dir }

// Allocate reserves an address in cidr for a. If a already holds an address in cidr, that address
// is returned and fresh is false, so a repeated ADD gets the same address. The network address,
// the gateway (Gateway(cidr)) and, for IPv4, the broadcast address are never handed out. When no
// address is free the error wraps ErrExhausted and names the CIDR.
func (s *Store) Allocate(cidr netip.Prefix, a Attachment) (ip netip.Addr, fresh bool, err error) {
	if err := CheckPrefix(cidr); err != nil {
		return netip.Addr{}, false, err
	}
	if a.ContainerID == "" || a.IfName == "" {
		return netip.Addr{}, false, fmt.Errorf("allocate: incomplete attachment %q", a)
	}
	unlock, err := s.lock(unix.LOCK_EX)
	if err != nil {
		return netip.Addr{}, false, err
	}
	defer unlock()

	held, err := s.readAll()
	if err != nil {
		return netip.Addr{}, false, err
	}
	inRange := 0
	for addr, owner := range held {
		if !cidr.Contains(addr) {
			continue
		}
		if owner == a {
			return addr, false, nil
		}
		inRange++
	}

	first, last := usable(cidr)
	start := first
	if prev, ok := s.readLast(cidr); ok && inside(prev, first, last) {
		start = wrapNext(prev, first, last)
	}
	// Among inRange+1 distinct candidates at least one is free, so the scan is short even in an
	// IPv6 /64; it covers the whole range only when the range is that small.
	tries := min(size(cidr), uint64(inRange)+1)
	cand := start
	for range tries {
		if _, taken := held[cand]; !taken {
			rec, err := json.Marshal(a)
			if err != nil {
				return netip.Addr{}, false, err
			}
			if err := writeAtomic(s.dir, cand.String(), rec); err != nil {
				return netip.Addr{}, false, fmt.Errorf("reserve %s: %w", cand, err)
			}
			if err := writeAtomic(s.dir, lastName(cidr), []byte(cand.String())); err != nil {
				// The reservation stands; only the round-robin hint is stale.
				s.log.Warn("ipam: record last reserved address", "cidr", cidr, "err", err)
			}
			return cand, true, nil
		}
		cand = wrapNext(cand, first, last)
	}
	return netip.Addr{}, false, fmt.Errorf("%w in %s", ErrExhausted, cidr)
}

// Release frees every address held by a and returns them. Releasing an attachment that holds
// nothing is not an error.
func (s *Store) Release(a Attachment) ([]netip.Addr, error) {
	unlock, err := s.lock(unix.LOCK_EX)
	if err != nil {
		return nil, err
	}
	defer unlock()
	held, err := s.readAll()
	if err != nil {
		return nil, err
	}
	var freed []netip.Addr
	var errs []error
	for addr, owner := range held {
		if owner != a {
			continue
		}
		if err := removeFile(s.dir, addr.String()); err != nil {
			errs = append(errs, err)
			continue
		}
		freed = append(freed, addr)
	}
	slices.SortFunc(freed, netip.Addr.Compare)
	return freed, errors.Join(errs...)
}

// Lookup returns the addresses held by any interface of containerID, ordered by address.
func (s *Store) Lookup(containerID string) ([]Allocation, error) {
	all, err := s.List()
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(all, func(al Allocation) bool { return al.ContainerID != containerID }), nil
}

// List returns every reservation, ordered by address.
func (s *Store) List() ([]Allocation, error) {
	unlock, err := s.lock(unix.LOCK_SH)
	if err != nil {
		return nil, err
	}
	defer unlock()
	held, err := s.readAll()
	if err != nil {
		return nil, err
	}
	return sorted(held), nil
}

// GC releases every reservation whose attachment is not in valid and returns what it released.
// It keeps going past errors and returns them joined.
func (s *Store) GC(valid []Attachment) ([]Allocation, error) {
	keep := make(map[Attachment]bool, len(valid))
	for _, a := range valid {
		keep[a] = true
	}
	unlock, err := s.lock(unix.LOCK_EX)
	if err != nil {
		return nil, err
	}
	defer unlock()
	held, err := s.readAll()
	if err != nil {
		return nil, err
	}
	var freed []Allocation
	var errs []error
	for _, al := range sorted(held) {
		if keep[al.Attachment] {
			continue
		}
		if err := removeFile(s.dir, al.IP.String()); err != nil {
			errs = append(errs, err)
			continue
		}
		freed = append(freed, al)
	}
	return freed, errors.Join(errs...)
}

// Free returns how many addresses of cidr can still be handed out (saturating at MaxUint64 for
// huge IPv6 ranges).
func (s *Store) Free(cidr netip.Prefix) (uint64, error) {
	if err := CheckPrefix(cidr); err != nil {
		return 0, err
	}
	all, err := s.List()
	if err != nil {
		return 0, err
	}
	first, last := usable(cidr)
	var used uint64
	for _, al := range all {
		if inside(al.IP, first, last) {
			used++
		}
	}
	n := size(cidr)
	if used >= n {
		return 0, nil
	}
	return n - used, nil
}

// lock takes the store's flock, polling until the lock timeout so a stuck holder turns into
// ErrBusy instead of a hang. The returned function releases it.
func (s *Store) lock(how int) (func(), error) {
	f, err := os.OpenFile(filepath.Join(s.dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open ipam lock: %w", err)
	}
	deadline := time.Now().Add(s.lockTimeout)
	wait := time.Millisecond
	for {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil // closing the file drops the lock
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock ipam store: %w", err)
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("%w: %s locked for more than %s", ErrBusy, s.dir, s.lockTimeout)
		}
		time.Sleep(wait/2 + rand.N(wait))
		wait = min(2*wait, 20*time.Millisecond)
	}
}

// readAll reads every reservation. A record that cannot be read or decoded still counts as taken
// (with an empty owner, so GC reclaims it): handing its address out again could duplicate it.
func (s *Store) readAll() (map[netip.Addr]Attachment, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("read ipam dir: %w", err)
	}
	held := make(map[netip.Addr]Attachment, len(entries))
	for _, e := range entries {
		addr, err := netip.ParseAddr(e.Name())
		if err != nil || e.IsDir() {
			continue
		}
		var owner Attachment
		data, err := os.ReadFile(filepath.Join(s.dir, e.Name()))
		if err == nil {
			err = json.Unmarshal(data, &owner)
		}
		if err != nil {
			s.log.Warn("ipam: unreadable reservation", "ip", addr, "err", err)
		}
		held[addr] = owner
	}
	return held, nil
}

func (s *Store) readLast(cidr netip.Prefix) (netip.Addr, bool) {
	data, err := os.ReadFile(filepath.Join(s.dir, lastName(cidr)))
	if err != nil {
		return netip.Addr{}, false
	}
	addr, err := netip.ParseAddr(strings.TrimSpace(string(data)))
	return addr, err == nil
}

func lastName(cidr netip.Prefix) string {
	return lastPrefix + strings.ReplaceAll(cidr.String(), "/", "_")
}

func sorted(held map[netip.Addr]Attachment) []Allocation {
	out := make([]Allocation, 0, len(held))
	for addr, owner := range held {
		out = append(out, Allocation{Attachment: owner, IP: addr})
	}
	slices.SortFunc(out, func(a, b Allocation) int { return a.IP.Compare(b.IP) })
	return out
}

// writeAtomic writes data to dir/name through a synced temporary file and a rename.
func writeAtomic(dir, name string, data []byte) error {
	return atomicfile.Write(filepath.Join(dir, name), data, 0o644)
}

func removeFile(dir, name string) error {
	if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return atomicfile.SyncDir(dir)
}
