package ipam

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// helperEnv switches the test binary into a one-shot allocator, so the concurrency test can run
// allocations from separate processes the way the CNI plugin does (one process per ADD).
const helperEnv = "CAPSTAN_IPAM_TEST_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(helperAllocate())
	}
	os.Exit(m.Run())
}

// helperAllocate reads "dir cidr containerID" from the environment and prints the address.
func helperAllocate() int {
	f := strings.Fields(os.Getenv(helperEnv))
	if len(f) != 3 {
		fmt.Fprintf(os.Stderr, "want %s=\"dir cidr containerID\"\n", helperEnv)
		return 2
	}
	s, err := Open(f[0], Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ip, _, err := s.Allocate(netip.MustParsePrefix(f[1]), Attachment{ContainerID: f[2], IfName: "eth0"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(ip)
	return 0
}

func openStore(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func att(id string) Attachment { return Attachment{ContainerID: id, IfName: "eth0"} }

func mustAllocate(t *testing.T, s *Store, cidr string, a Attachment) netip.Addr {
	t.Helper()
	ip, _, err := s.Allocate(netip.MustParsePrefix(cidr), a)
	if err != nil {
		t.Fatalf("allocate %s: %v", a, err)
	}
	return ip
}

func checkUsable(t *testing.T, cidr netip.Prefix, ip netip.Addr) {
	t.Helper()
	first, last := usable(cidr)
	if !cidr.Contains(ip) || ip == cidr.Addr() || ip == Gateway(cidr) || ip == lastAddr(cidr) && ip.Is4() {
		t.Errorf("%s handed out from %s", ip, cidr)
	}
	if !inside(ip, first, last) {
		t.Errorf("%s outside usable range %s-%s", ip, first, last)
	}
}

func TestConcurrentProcesses(t *testing.T) {
	t.Parallel()
	const n = 100
	dir := t.TempDir()
	cidr := netip.MustParsePrefix("10.244.1.0/24")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}

	ips := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			cmd := exec.Command(exe)
			cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %s c%03d", helperEnv, dir, cidr, i))
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				errs[i] = fmt.Errorf("helper %d: %v: %s", i, err, stderr.String())
				return
			}
			ips[i] = strings.TrimSpace(string(out))
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}

	seen := map[netip.Addr]string{}
	for i, s := range ips {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			t.Fatalf("helper %d printed %q", i, s)
		}
		checkUsable(t, cidr, ip)
		if prev, dup := seen[ip]; dup {
			t.Errorf("%s handed to both %s and c%03d", ip, prev, i)
		}
		seen[ip] = fmt.Sprintf("c%03d", i)
	}
	all, err := openStore(t, dir).List()
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != n {
		t.Fatalf("store holds %d reservations, want %d", len(all), n)
	}
	for _, al := range all {
		if seen[al.IP] != al.ContainerID {
			t.Errorf("store says %s belongs to %s, helper printed %q", al.IP, al.ContainerID, seen[al.IP])
		}
	}
}

func TestConcurrentStores(t *testing.T) {
	t.Parallel()
	const n = 60
	dir := t.TempDir()
	cidr := netip.MustParsePrefix("10.244.2.0/26") // 61 usable
	ips := make([]netip.Addr, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			s, err := Open(dir, Options{}) // a fresh instance: separate lock file descriptions
			if err == nil {
				ips[i], _, err = s.Allocate(cidr, att(fmt.Sprint("g", i)))
			}
			errs[i] = err
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	seen := map[netip.Addr]bool{}
	for _, ip := range ips {
		checkUsable(t, cidr, ip)
		if seen[ip] {
			t.Errorf("%s handed out twice", ip)
		}
		seen[ip] = true
	}
}

func TestRestartKeepsAllocations(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openStore(t, dir)
	a := mustAllocate(t, s, "10.244.3.0/24", att("a"))
	b := mustAllocate(t, s, "10.244.3.0/24", att("b"))

	s2 := openStore(t, dir)
	if got := mustAllocate(t, s2, "10.244.3.0/24", att("a")); got != a {
		t.Errorf("after restart a got %s, had %s", got, a)
	}
	c := mustAllocate(t, s2, "10.244.3.0/24", att("c"))
	if c == a || c == b {
		t.Errorf("after restart c got %s, already held (a=%s b=%s)", c, a, b)
	}
	if c != b.Next() {
		t.Errorf("after restart c got %s, want %s (round-robin from last reserved)", c, b.Next())
	}
}

func TestIdempotentAllocate(t *testing.T) {
	t.Parallel()
	s := openStore(t, t.TempDir())
	cidr := netip.MustParsePrefix("10.244.4.0/24")
	ip1, fresh1, err := s.Allocate(cidr, att("a"))
	if err != nil {
		t.Fatal(err)
	}
	ip2, fresh2, err := s.Allocate(cidr, att("a"))
	if err != nil {
		t.Fatal(err)
	}
	if ip1 != ip2 || !fresh1 || fresh2 {
		t.Errorf("second allocate: %s fresh=%v, first %s fresh=%v", ip2, fresh2, ip1, fresh1)
	}
	// Another interface of the same container is another attachment.
	ip3, _, err := s.Allocate(cidr, Attachment{ContainerID: "a", IfName: "net1"})
	if err != nil {
		t.Fatal(err)
	}
	if ip3 == ip1 {
		t.Errorf("a/net1 got a/eth0's address %s", ip1)
	}
	got, err := s.Lookup("a")
	if err != nil {
		t.Fatal(err)
	}
	want := []Allocation{{att("a"), ip1}, {Attachment{"a", "net1"}, ip3}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Lookup(a) = %v, want %v", got, want)
	}
	if got, err := s.Lookup("nobody"); err != nil || len(got) != 0 {
		t.Errorf("Lookup(nobody) = %v, %v", got, err)
	}
}

func TestReleaseThenAllocate(t *testing.T) {
	t.Parallel()
	s := openStore(t, t.TempDir())
	const cidr = "10.244.5.0/24"
	a := mustAllocate(t, s, cidr, att("a"))
	if a != netip.MustParseAddr("10.244.5.2") {
		t.Errorf("first address %s, want 10.244.5.2", a)
	}
	freed, err := s.Release(att("a"))
	if err != nil || len(freed) != 1 || freed[0] != a {
		t.Fatalf("Release(a) = %v, %v", freed, err)
	}
	if freed, err := s.Release(att("a")); err != nil || len(freed) != 0 {
		t.Errorf("second Release(a) = %v, %v; want nothing, no error", freed, err)
	}
	b := mustAllocate(t, s, cidr, att("b"))
	if b == a {
		t.Errorf("freed address %s reused at once", a)
	}
	if b != a.Next() {
		t.Errorf("b got %s, want %s", b, a.Next())
	}
	if got, _ := s.Lookup("a"); len(got) != 0 {
		t.Errorf("a still holds %v", got)
	}
}

func TestWrapAround(t *testing.T) {
	t.Parallel()
	s := openStore(t, t.TempDir())
	const cidr = "10.244.6.0/29" // usable .2-.6
	var got []string
	for _, id := range []string{"a", "b", "c", "d", "e"} {
		got = append(got, mustAllocate(t, s, cidr, att(id)).String())
	}
	if want := "[10.244.6.2 10.244.6.3 10.244.6.4 10.244.6.5 10.244.6.6]"; fmt.Sprint(got) != want {
		t.Errorf("allocated %v, want %s", got, want)
	}
	if _, err := s.Release(att("c")); err != nil {
		t.Fatal(err)
	}
	if ip := mustAllocate(t, s, cidr, att("f")); ip != netip.MustParseAddr("10.244.6.4") {
		t.Errorf("after wrap got %s, want the only free 10.244.6.4", ip)
	}
}

func TestExhausted(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		cidr   string
		usable int
	}{{"10.244.7.0/30", 1}, {"10.244.7.8/29", 5}, {"fd00:7::/126", 2}} {
		s := openStore(t, t.TempDir())
		cidr := netip.MustParsePrefix(tc.cidr)
		for i := range tc.usable {
			checkUsable(t, cidr, mustAllocate(t, s, tc.cidr, att(fmt.Sprint("c", i))))
		}
		free, err := s.Free(cidr)
		if err != nil || free != 0 {
			t.Errorf("%s: Free = %d, %v; want 0", cidr, free, err)
		}
		_, _, err = s.Allocate(cidr, att("one-too-many"))
		if !errors.Is(err, ErrExhausted) {
			t.Fatalf("%s: allocate past the end: %v, want ErrExhausted", cidr, err)
		}
		if !strings.Contains(err.Error(), tc.cidr) {
			t.Errorf("exhaustion error %q does not name %s", err, tc.cidr)
		}
		// A holder still gets its own address back.
		if _, _, err := s.Allocate(cidr, att("c0")); err != nil {
			t.Errorf("%s: idempotent allocate when full: %v", cidr, err)
		}
	}
}

func TestFree(t *testing.T) {
	t.Parallel()
	s := openStore(t, t.TempDir())
	cidr := netip.MustParsePrefix("10.244.8.0/24")
	mustAllocate(t, s, "10.244.8.0/24", att("a"))
	mustAllocate(t, s, "10.244.9.0/24", att("b")) // another CIDR does not count
	if free, err := s.Free(cidr); err != nil || free != 252 {
		t.Errorf("Free = %d, %v; want 252", free, err)
	}
	if free, err := s.Free(netip.MustParsePrefix("fd00::/64")); err != nil || free < 1<<62 {
		t.Errorf("Free(/64) = %d, %v", free, err)
	}
}

func TestGC(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openStore(t, dir)
	const cidr = "10.244.10.0/24"
	a := mustAllocate(t, s, cidr, att("a"))
	mustAllocate(t, s, cidr, att("b"))
	mustAllocate(t, s, cidr, Attachment{"a", "net1"})
	// A record nobody can read is reclaimed too.
	if err := os.WriteFile(filepath.Join(dir, "10.244.10.200"), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}

	freed, err := s.GC([]Attachment{att("a")})
	if err != nil {
		t.Fatal(err)
	}
	if len(freed) != 3 {
		t.Errorf("GC freed %v, want b, a/net1 and the unreadable record", freed)
	}
	all, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 1 || all[0].IP != a || all[0].Attachment != att("a") {
		t.Errorf("after GC: %v, want only a=%s", all, a)
	}
	if freed, err := s.GC([]Attachment{att("a")}); err != nil || len(freed) != 0 {
		t.Errorf("second GC = %v, %v", freed, err)
	}
}

func TestUnreadableRecordIsTaken(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "10.244.11.2"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s := openStore(t, dir)
	if ip := mustAllocate(t, s, "10.244.11.0/24", att("a")); ip.String() == "10.244.11.2" {
		t.Errorf("address with an unreadable record handed out")
	}
}

func TestIPv6(t *testing.T) {
	t.Parallel()
	s := openStore(t, t.TempDir())
	const cidr = "fd00:10:244:1::/64"
	if gw := Gateway(netip.MustParsePrefix(cidr)); gw.String() != "fd00:10:244:1::1" {
		t.Errorf("gateway %s", gw)
	}
	a := mustAllocate(t, s, cidr, att("a"))
	b := mustAllocate(t, s, cidr, att("b"))
	if a.String() != "fd00:10:244:1::2" || b.String() != "fd00:10:244:1::3" {
		t.Errorf("got %s, %s", a, b)
	}
	// Both families for one attachment.
	v4 := mustAllocate(t, s, "10.244.12.0/24", att("a"))
	got, err := s.Lookup("a")
	if err != nil || len(got) != 2 || got[0].IP != v4 || got[1].IP != a {
		t.Errorf("Lookup(a) = %v, %v", got, err)
	}
}

func TestCheckPrefix(t *testing.T) {
	t.Parallel()
	for _, bad := range []string{"10.244.0.0/31", "10.244.0.0/32", "10.244.1.5/24", "fd00::/127"} {
		if err := CheckPrefix(netip.MustParsePrefix(bad)); err == nil {
			t.Errorf("CheckPrefix(%s) accepted", bad)
		}
		if _, _, err := openStore(t, t.TempDir()).Allocate(netip.MustParsePrefix(bad), att("a")); err == nil {
			t.Errorf("Allocate in %s succeeded", bad)
		}
	}
	if err := CheckPrefix(netip.Prefix{}); err == nil {
		t.Error("CheckPrefix(zero) accepted")
	}
	for _, good := range []string{"10.244.0.0/30", "10.244.0.0/16", "fd00::/64", "fd00::/126"} {
		if err := CheckPrefix(netip.MustParsePrefix(good)); err != nil {
			t.Errorf("CheckPrefix(%s): %v", good, err)
		}
	}
}

func TestBusy(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := Open(dir, Options{LockTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Allocate(netip.MustParsePrefix("10.244.13.0/24"), att("a")); !errors.Is(err, ErrBusy) {
		t.Errorf("allocate under a held lock: %v, want ErrBusy", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_UN); err != nil {
		t.Fatal(err)
	}
	mustAllocate(t, s, "10.244.13.0/24", att("a"))
}
