package cgroup2

import "testing"

func TestParse(t *testing.T) {
	hybrid := `25 31 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
30 25 0:26 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,name=systemd`
	if got, err := parse(hybrid); err != nil || got != "/sys/fs/cgroup/unified" {
		t.Fatalf("hybrid: %q, %v", got, err)
	}
	if _, err := parse("25 31 0:23 / /sys rw shared:7 - sysfs sysfs rw"); err == nil {
		t.Fatal("no cgroup2 mount: want an error")
	}
}

func TestIn(t *testing.T) {
	root, err := Root()
	if err != nil {
		t.Skip("no cgroup2 here:", err)
	}
	if got, err := In(root); err != nil || got != root {
		t.Fatalf("In(%s) = %q, %v", root, got, err)
	}
	if _, err := In(t.TempDir()); err == nil {
		t.Fatal("a plain directory was taken for a cgroup v2 hierarchy")
	}
}
