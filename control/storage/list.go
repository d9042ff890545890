package storage

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	apistorage "k8s.io/apiserver/pkg/storage"
)

// Predicate selects objects by labels and fields.
type Predicate struct {
	Label labels.Selector
	Field fields.Selector
	// GetAttrs returns the labels and selectable fields of an object; it is
	// only called when a selector is not empty.
	GetAttrs func(obj runtime.Object) (labels.Set, fields.Set, error)
}

// Empty reports whether the predicate selects everything.
func (p Predicate) Empty() bool {
	return (p.Label == nil || p.Label.Empty()) && (p.Field == nil || p.Field.Empty())
}

// Matches reports whether obj is selected.
func (p Predicate) Matches(obj runtime.Object) (bool, error) {
	if p.Empty() {
		return true, nil
	}
	if p.GetAttrs == nil {
		return false, errors.New("predicate has selectors but no attribute function")
	}
	ls, fs, err := p.GetAttrs(obj)
	if err != nil {
		return false, err
	}
	if p.Label != nil && !p.Label.Matches(ls) {
		return false, nil
	}
	if p.Field != nil && !p.Field.Matches(fs) {
		return false, nil
	}
	return true, nil
}

// ListOptions are the list parameters of the Kubernetes API.
type ListOptions struct {
	ResourceVersion string
	Match           metav1.ResourceVersionMatch
	Limit           int64
	Continue        string
	Predicate       Predicate
}

// ListResult is one page of a list.
type ListResult struct {
	Items []runtime.Object
	// Revision is the etcd revision the page was read at.
	Revision int64
	// Continue is set when more items remain.
	Continue string
	// Remaining counts items after this page, when known.
	Remaining *int64
}

// List reads the objects under prefix (which ends in "/").
func (s *Store) List(ctx context.Context, prefix string, opts ListOptions, newObj func() runtime.Object) (*ListResult, error) {
	fromKey := prefix
	var rev int64
	switch {
	case opts.Continue != "":
		if opts.ResourceVersion != "" && opts.ResourceVersion != "0" {
			return nil, newErr(ErrInvalid, prefix, "specifying resource version is not allowed when using continue")
		}
		k, r, err := apistorage.DecodeContinue(opts.Continue, prefix)
		if err != nil {
			return nil, newErr(ErrInvalid, prefix, "invalid continue token: %v", err)
		}
		fromKey, rev = k, r
	default:
		n, err := ParseResourceVersion(opts.ResourceVersion)
		if err != nil {
			return nil, err
		}
		switch opts.Match {
		case metav1.ResourceVersionMatchExact:
			if n == 0 {
				return nil, newErr(ErrInvalid, prefix, "resourceVersionMatch=Exact requires a non-zero resourceVersion")
			}
			rev = n
		case metav1.ResourceVersionMatchNotOlderThan, "":
			if opts.Match == "" && opts.Limit > 0 && n > 0 {
				// Paging from a given version reads exactly that version, as upstream.
				rev = n
			} else if n > 0 {
				cur, err := s.CurrentRevision(ctx)
				if err != nil {
					return nil, err
				}
				if cur < n {
					return nil, newErr(ErrTooLarge, prefix, "too large resource version: %d, current: %d", n, cur)
				}
			}
		default:
			return nil, newErr(ErrInvalid, prefix, "unknown resourceVersionMatch %q", opts.Match)
		}
	}

	end := clientv3.GetPrefixRangeEnd(prefix)
	res := &ListResult{Revision: rev}
	batch := int64(1000)
	if opts.Limit > 0 && opts.Limit < batch {
		batch = opts.Limit
	}
	if opts.Limit > 0 && !opts.Predicate.Empty() {
		// Filtering drops items, so read ahead.
		batch = 1000
	}
	for {
		ops := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(batch)}
		if res.Revision > 0 {
			ops = append(ops, clientv3.WithRev(res.Revision))
		}
		resp, err := s.client.Get(ctx, fromKey, ops...)
		if err != nil {
			if errors.Is(err, rpctypes.ErrCompacted) {
				if opts.Continue != "" {
					return nil, newErr(ErrGone, prefix, "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.")
				}
				return nil, newErr(ErrGone, prefix, "too old resource version: %d", res.Revision)
			}
			if errors.Is(err, rpctypes.ErrFutureRev) {
				return nil, newErr(ErrTooLarge, prefix, "too large resource version: %d", res.Revision)
			}
			return nil, fmt.Errorf("list %s: %w", prefix, err)
		}
		if res.Revision == 0 {
			res.Revision = resp.Header.Revision
		}
		for i, kv := range resp.Kvs {
			obj, err := s.decode(kv.Value, kv.ModRevision, newObj())
			if err != nil {
				return nil, fmt.Errorf("%s: %w", kv.Key, err)
			}
			ok, err := opts.Predicate.Matches(obj)
			if err != nil {
				return nil, err
			}
			if ok {
				res.Items = append(res.Items, obj)
			}
			if opts.Limit > 0 && int64(len(res.Items)) >= opts.Limit {
				more := resp.More || i < len(resp.Kvs)-1
				if more {
					next := string(kv.Key) + "\x00"
					c, err := apistorage.EncodeContinue(next, prefix, res.Revision)
					if err != nil {
						return nil, err
					}
					res.Continue = c
					if opts.Predicate.Empty() {
						left := resp.Count - int64(i) - 1
						res.Remaining = &left
					}
				}
				return res, nil
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return res, nil
		}
		fromKey = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}
