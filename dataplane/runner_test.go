package dataplane

import (
	"context"
	"errors"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

// runnerHarness runs a Runner on a fake clock. The loop reports each sleep to waits and blocks
// until the test reads it, so every step of a test happens with the loop parked.
type runnerHarness struct {
	t       *testing.T
	clk     *clocktesting.FakeClock
	r       *Runner
	calls   chan time.Time
	results chan error
	waits   chan time.Duration
	done    chan struct{}
}

func newRunnerHarness(t *testing.T, cfg RunnerConfig) *runnerHarness {
	t.Helper()
	h := &runnerHarness{
		t:       t,
		clk:     clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)),
		calls:   make(chan time.Time, 10),
		results: make(chan error, 10),
		waits:   make(chan time.Duration),
		done:    make(chan struct{}),
	}
	cfg.Clock = h.clk
	fn := func(ctx context.Context) error {
		h.calls <- h.clk.Now()
		select {
		case err := <-h.results:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	r, err := NewRunner("test", fn, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.waiting = func(d time.Duration) {
		select {
		case h.waits <- d:
		case <-ctx.Done():
		}
	}
	h.r = r
	go func() {
		defer close(h.done)
		r.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-h.done:
		case <-time.After(5 * time.Second):
			t.Error("runner did not stop with its context")
		}
	})
	return h
}

// expectWait reads the loop's next sleep; -1 means until a trigger.
func (h *runnerHarness) expectWait(want time.Duration) {
	h.t.Helper()
	select {
	case d := <-h.waits:
		if d != want {
			h.t.Fatalf("runner sleeps %s, want %s", d, want)
		}
	case c := <-h.calls:
		h.t.Fatalf("unexpected run at %s", c)
	case <-time.After(5 * time.Second):
		h.t.Fatal("runner never parked")
	}
}

// expectIdle checks that the loop stays parked for a while of real time.
func (h *runnerHarness) expectIdle() {
	h.t.Helper()
	select {
	case c := <-h.calls:
		h.t.Fatalf("unexpected run at %s", c)
	case d := <-h.waits:
		h.t.Fatalf("unexpected wake-up, now sleeping %s", d)
	case <-time.After(100 * time.Millisecond):
	}
}

// expectRun waits for a run, checks its (fake) time and lets it finish with err.
func (h *runnerHarness) expectRun(at time.Time, err error) {
	h.t.Helper()
	select {
	case c := <-h.calls:
		if !c.Equal(at) {
			h.t.Fatalf("run at %s, want %s", c, at)
		}
		h.results <- err
	case d := <-h.waits:
		h.t.Fatalf("runner parked for %s instead of running", d)
	case <-time.After(5 * time.Second):
		h.t.Fatal("no run")
	}
}

func TestRunnerMinInterval(t *testing.T) {
	h := newRunnerHarness(t, RunnerConfig{MinInterval: time.Second})
	t0 := h.clk.Now()
	h.expectWait(-1) // nothing runs before the first trigger

	h.r.Trigger()
	h.expectRun(t0, nil) // the first trigger runs at once
	h.expectWait(-1)

	// Triggers inside the interval are merged into one run at its end.
	h.r.Trigger()
	h.expectWait(time.Second)
	h.r.Trigger()
	h.expectWait(time.Second)
	h.clk.Step(999 * time.Millisecond)
	h.expectIdle()
	h.clk.Step(time.Millisecond)
	h.expectRun(t0.Add(time.Second), nil)
	h.expectWait(-1)

	// Past the interval, a trigger runs at once.
	h.clk.Step(5 * time.Second)
	h.r.Trigger()
	h.expectRun(t0.Add(6*time.Second), nil)
	h.expectWait(-1)
}

func TestRunnerPeriodic(t *testing.T) {
	h := newRunnerHarness(t, RunnerConfig{MinInterval: time.Second, MaxInterval: 10 * time.Second})
	t0 := h.clk.Now()
	h.expectWait(-1)
	h.r.Trigger()
	h.expectRun(t0, nil)
	h.expectWait(10 * time.Second)
	h.clk.Step(10 * time.Second)
	h.expectRun(t0.Add(10*time.Second), nil)
	h.expectWait(10 * time.Second)
	// A trigger brings the next run forward, but not inside the minimum interval.
	h.r.Trigger()
	h.expectWait(time.Second)
	h.clk.Step(time.Second)
	h.expectRun(t0.Add(11*time.Second), nil)
	h.expectWait(10 * time.Second)
}

func TestRunnerRetriesWithBackoff(t *testing.T) {
	h := newRunnerHarness(t, RunnerConfig{
		MinInterval: 500 * time.Millisecond, MaxInterval: time.Minute,
		RetryMin: time.Second, RetryMax: 4 * time.Second,
	})
	fail := errors.New("map full")
	now := h.clk.Now()
	h.expectWait(-1)
	h.r.Trigger()
	h.expectRun(now, fail)
	for _, backoff := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second} {
		h.expectWait(backoff)
		if backoff == 4*time.Second {
			// Changes arriving meanwhile do not cut the back-off short.
			h.r.Trigger()
			h.expectWait(backoff)
		}
		h.clk.Step(backoff)
		now = now.Add(backoff)
		h.expectRun(now, fail)
	}
	h.expectWait(4 * time.Second)
	h.clk.Step(4 * time.Second)
	now = now.Add(4 * time.Second)
	h.expectRun(now, nil)
	// Success resets the back-off and returns to the periodic schedule.
	h.expectWait(time.Minute)
	h.r.Trigger()
	h.expectWait(500 * time.Millisecond)
	h.clk.Step(500 * time.Millisecond)
	now = now.Add(500 * time.Millisecond)
	h.expectRun(now, fail)
	h.expectWait(time.Second)
}

func TestRunnerRejectsBadConfig(t *testing.T) {
	fn := func(context.Context) error { return nil }
	if _, err := NewRunner("x", fn, RunnerConfig{MinInterval: time.Minute, MaxInterval: time.Second}); err == nil {
		t.Error("max interval below min accepted")
	}
	if _, err := NewRunner("x", fn, RunnerConfig{RetryMin: time.Minute, RetryMax: time.Second}); err == nil {
		t.Error("retry max below min accepted")
	}
}
