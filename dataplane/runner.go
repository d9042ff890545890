package dataplane

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"k8s.io/utils/clock"
)

// RunnerConfig sets how often a Runner may and must run.
type RunnerConfig struct {
	// MinInterval is the least time between two runs: triggers inside it are coalesced into
	// one run at its end. Zero runs on every trigger.
	MinInterval time.Duration
	// MaxInterval is the most time between two runs; a periodic full sync repairs anything
	// changed behind the dataplane's back. Zero disables it.
	MaxInterval time.Duration
	// RetryMin and RetryMax bound the back-off after a failed run: it starts at RetryMin and
	// doubles up to RetryMax. Zero RetryMin means 1s; zero RetryMax means 1m.
	RetryMin, RetryMax time.Duration
	Clock              clock.WithTicker
	Logger             *slog.Logger
}

// Runner calls a function when triggered, no more often than MinInterval, at least every
// MaxInterval, and again with exponential back-off while it fails.
type Runner struct {
	name    string
	fn      func(context.Context) error
	cfg     RunnerConfig
	clk     clock.WithTicker
	log     *slog.Logger
	trigger chan struct{}
	// waiting, when set (tests), is told how long the loop is about to sleep.
	waiting func(time.Duration)
}

// NewRunner returns a runner for fn; start it with Run.
func NewRunner(name string, fn func(context.Context) error, cfg RunnerConfig) (*Runner, error) {
	if cfg.MinInterval < 0 || cfg.MaxInterval < 0 || (cfg.MaxInterval > 0 && cfg.MaxInterval < cfg.MinInterval) {
		return nil, fmt.Errorf("new runner %s: bad intervals min %s max %s", name, cfg.MinInterval, cfg.MaxInterval)
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = time.Second
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = time.Minute
	}
	if cfg.RetryMax < cfg.RetryMin {
		return nil, fmt.Errorf("new runner %s: retry max %s below min %s", name, cfg.RetryMax, cfg.RetryMin)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Runner{
		name: name, fn: fn, cfg: cfg, clk: cfg.Clock, log: cfg.Logger,
		trigger: make(chan struct{}, 1),
	}, nil
}

// Trigger asks for a run. It never blocks; triggers before the run starts are merged.
func (r *Runner) Trigger() {
	select {
	case r.trigger <- struct{}{}:
	default:
	}
}

// Run runs until ctx ends. The first run waits for a Trigger, so callers decide when the
// inputs are complete enough to act on.
func (r *Runner) Run(ctx context.Context) {
	var (
		last     time.Time // start of the last run; zero before the first
		due      time.Time // when the next run is wanted; zero means only on trigger
		failures int
	)
	for {
		if !due.IsZero() && !r.clk.Now().Before(due) {
			last = r.clk.Now()
			err := r.fn(ctx)
			if ctx.Err() != nil {
				return
			}
			switch {
			case err != nil:
				failures++
				wait := max(r.backoff(failures), r.cfg.MinInterval)
				r.log.Warn("sync failed, retrying", "runner", r.name, "failures", failures, "retry_in", wait, "err", err)
				due = last.Add(wait)
			case r.cfg.MaxInterval > 0:
				failures = 0
				due = last.Add(r.cfg.MaxInterval)
			default:
				failures = 0
				due = time.Time{}
			}
			continue
		}

		var timer clock.Timer
		var fire <-chan time.Time
		if !due.IsZero() {
			d := due.Sub(r.clk.Now())
			timer = r.clk.NewTimer(d)
			fire = timer.C()
			if r.waiting != nil {
				r.waiting(d)
			}
		} else if r.waiting != nil {
			r.waiting(-1)
		}
		select {
		case <-ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return
		case <-fire:
		case <-r.trigger:
			// The earliest a triggered run may start; a pending retry or periodic run
			// that is due sooner keeps its time.
			at := r.clk.Now()
			if !last.IsZero() {
				at = maxTime(at, last.Add(r.cfg.MinInterval))
			}
			if failures > 0 {
				// Do not let a stream of changes defeat the back-off.
				at = maxTime(at, due)
			}
			if due.IsZero() || at.Before(due) {
				due = at
			}
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

func (r *Runner) backoff(failures int) time.Duration {
	d := r.cfg.RetryMin
	for i := 1; i < failures && d < r.cfg.RetryMax; i++ {
		d *= 2
	}
	return min(d, r.cfg.RetryMax)
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
