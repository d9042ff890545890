package podbench

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Memory is a process's resident memory, in bytes: now (VmRSS) and at its
// peak (VmHWM) from /proc/<pid>/status, and its proportional share (Pss,
// shared pages divided among the processes mapping them) from
// /proc/<pid>/smaps_rollup, the figure to add up over many processes of
// one binary.
type Memory struct {
	RSS, Peak, PSS int64
}

// ReadMemory reads a process's Memory.
func ReadMemory(pid int) (Memory, error) {
	var m Memory
	err := readKB(fmt.Sprintf("/proc/%d/status", pid), map[string]*int64{"VmRSS": &m.RSS, "VmHWM": &m.Peak})
	if err != nil {
		return m, err
	}
	return m, readKB(fmt.Sprintf("/proc/%d/smaps_rollup", pid), map[string]*int64{"Pss": &m.PSS})
}

// readKB sets fields from the "Name:   123 kB" lines of a proc file.
func readKB(path string, fields map[string]*int64) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), ":")
		if p := fields[name]; ok && p != nil {
			*p = kB(value)
		}
	}
	return sc.Err()
}

// kB parses a status value such as "  123456 kB" into bytes.
func kB(v string) int64 {
	n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
	return n << 10
}

// MiB formats bytes as MiB with one decimal.
func MiB(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// children lists the pids of a process's direct children.
func children(pid int) []int {
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	var out []int
	for _, t := range tasks {
		data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, t.Name()))
		for _, f := range strings.Fields(string(data)) {
			if c, err := strconv.Atoi(f); err == nil {
				out = append(out, c)
			}
		}
	}
	return out
}

// comm is a process's command name.
func comm(pid int) string {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(data))
}

// CPUTime is the CPU time (user and system) a process has used, from
// /proc/<pid>/stat; clock ticks are 1/100 s on Linux.
func CPUTime(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces; the fields follow its ')'.
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 {
		return 0, fmt.Errorf("process %d: unexpected stat %q", pid, data)
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("process %d: short stat", pid)
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
}

// SelfCPUTime is this process's CPU time (user and system).
func SelfCPUTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Verdict is how a benchmark's figure stands against its target.
func Verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}
