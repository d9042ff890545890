package podbench

import (
	"context"
	"sync/atomic"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
)

// WatchPods watches a namespace's pods from rv and, when the server ends
// the watch (it ends watchers that fall behind on a loaded machine),
// resumes where it was, as an informer would; restarts, if set, counts
// those.
func WatchPods(ctx context.Context, client kubernetes.Interface, ns, rv string, restarts *atomic.Int64) (watch.Interface, error) {
	first := true
	return watchtools.NewRetryWatcherWithContext(ctx, rv, &cache.ListWatch{
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			if !first && restarts != nil {
				restarts.Add(1)
			}
			first = false
			return client.CoreV1().Pods(ns).Watch(ctx, opts)
		},
	})
}
