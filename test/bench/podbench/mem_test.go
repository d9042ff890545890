package podbench

import (
	"os"
	"testing"
	"time"
)

func TestReadMemory(t *testing.T) {
	m, err := ReadMemory(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if m.RSS <= 0 || m.Peak < m.RSS || m.PSS <= 0 {
		t.Fatalf("memory %+v: want 0 < RSS <= Peak", m)
	}
	if _, err := ReadMemory(-1); err == nil {
		t.Fatal("no error for a missing process")
	}
}

func TestKB(t *testing.T) {
	if got := kB("   1234 kB"); got != 1234<<10 {
		t.Fatalf("kB = %d", got)
	}
}

func TestCPUTime(t *testing.T) {
	for end := time.Now().Add(50 * time.Millisecond); time.Now().Before(end); {
	}
	got, err := CPUTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if got < 20*time.Millisecond || SelfCPUTime() < 20*time.Millisecond {
		t.Fatalf("CPU time %v (self %v) after a 50ms busy loop", got, SelfCPUTime())
	}
}
