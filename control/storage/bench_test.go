package storage_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkCreateConcurrent measures raw store creates with 64 writers,
// the etcd floor under the API server's create rate.
func BenchmarkCreateConcurrent(b *testing.B) {
	s := newStoreB(b)
	ctx := context.Background()
	var n atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := n.Add(1)
				if i > int64(b.N) {
					return
				}
				name := fmt.Sprintf("b%d", i)
				if err := s.Create(ctx, prefix+name, cm(name, map[string]string{"a": "b"})); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "creates/s")
}
