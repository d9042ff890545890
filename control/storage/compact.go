package storage

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Compact discards history before rev. Compacting an already compacted
// revision is not an error: several servers may share one etcd.
func (s *Store) Compact(ctx context.Context, rev int64) error {
	_, err := s.client.Compact(ctx, rev, clientv3.WithCompactPhysical())
	if err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
		return fmt.Errorf("compact to %d: %w", rev, err)
	}
	return nil
}

// RunCompactor compacts every interval to the revision seen one interval
// earlier, so watchers always have at least one interval of history, as
// kube-apiserver does. It returns when ctx ends.
func (s *Store) RunCompactor(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	var last int64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cur, err := s.CurrentRevision(ctx)
		if err != nil {
			s.log.Warn("compactor: read revision", "err", err)
			continue
		}
		if last > 0 {
			if err := s.Compact(ctx, last); err != nil {
				s.log.Warn("compactor", "err", err)
			} else {
				s.log.Debug("compacted", "revision", last)
			}
		}
		last = cur
	}
}
