package daemon

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"

	"github.com/capstan-net/capstan/dataplane/ebpf"
)

// conntrackSweepInterval is how often the daemon removes expired conntrack flows that their
// BPF timers left (see ebpf.SweepConntrack). The close timeout is 10s, so closed flows
// linger at most about twice that.
const conntrackSweepInterval = 10 * time.Second

// sweepConntrack runs the conntrack sweep every interval until ctx ends.
func sweepConntrack(ctx context.Context, dp *ebpf.Datapath, clk clock.WithTicker, interval time.Duration,
	deleted prometheus.Counter, log *slog.Logger) {
	t := clk.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
		n, err := dp.SweepConntrack()
		if err != nil {
			log.Warn("conntrack sweep", "err", err)
			continue
		}
		deleted.Add(float64(n))
		if n > 0 {
			log.Debug("conntrack sweep", "deleted", n)
		}
	}
}
