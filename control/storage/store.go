// Package storage keeps Kubernetes objects in etcd as JSON under
// /registry/<resource>/<namespace>/<name>. An object's resourceVersion is the
// etcd mod revision of its key, and every write is a transaction conditioned
// on the revision the writer read.
package storage

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
)

// Store is the etcd-backed object store.
type Store struct {
	client *clientv3.Client
	codec  runtime.Codec
	log    *slog.Logger

	hubMu sync.Mutex
	hubs  map[string]*hub
}

// New returns a Store that encodes objects with codec (JSON for the
// versioned k8s.io/api types).
func New(client *clientv3.Client, codec runtime.Codec, log *slog.Logger) *Store {
	return &Store{client: client, codec: codec, log: log}
}

// Client exposes the etcd client for collaborators such as allocators.
func (s *Store) Client() *clientv3.Client { return s.client }

// Preconditions must hold on the stored object for an update or delete.
type Preconditions struct {
	UID             *types.UID
	ResourceVersion *string
}

func (p *Preconditions) check(key string, obj runtime.Object) error {
	if p == nil {
		return nil
	}
	m, err := meta.Accessor(obj)
	if err != nil {
		return err
	}
	if p.UID != nil && *p.UID != m.GetUID() {
		return newErr(ErrConflict, key, "the UID in the precondition (%s) does not match the UID in record (%s). The object might have been deleted and then recreated", *p.UID, m.GetUID())
	}
	if p.ResourceVersion != nil && *p.ResourceVersion != m.GetResourceVersion() {
		return newErr(ErrConflict, key, "the ResourceVersion in the precondition (%s) does not match the ResourceVersion in record (%s). The object might have been modified", *p.ResourceVersion, m.GetResourceVersion())
	}
	return nil
}

// ParseResourceVersion turns an API resourceVersion into a revision; "" is 0.
func ParseResourceVersion(rv string) (int64, error) {
	if rv == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(rv, 10, 64)
	if err != nil || n < 0 {
		return 0, newErr(ErrInvalid, "", "invalid resource version %q", rv)
	}
	return n, nil
}

func setRV(obj runtime.Object, rev int64) error {
	m, err := meta.Accessor(obj)
	if err != nil {
		return err
	}
	m.SetResourceVersion(strconv.FormatInt(rev, 10))
	return nil
}

func (s *Store) encode(obj runtime.Object) ([]byte, error) {
	m, err := meta.Accessor(obj)
	if err != nil {
		return nil, err
	}
	// The revision lives in etcd, not in the stored bytes.
	rv := m.GetResourceVersion()
	m.SetResourceVersion("")
	defer m.SetResourceVersion(rv)
	var b strings.Builder
	if err := s.codec.Encode(obj, &b); err != nil {
		return nil, fmt.Errorf("encode %T: %w", obj, err)
	}
	return []byte(b.String()), nil
}

func (s *Store) decode(data []byte, rev int64, into runtime.Object) (runtime.Object, error) {
	obj, _, err := s.codec.Decode(data, nil, into)
	if err != nil {
		return nil, fmt.Errorf("decode stored object: %w", err)
	}
	if err := setRV(obj, rev); err != nil {
		return nil, err
	}
	return obj, nil
}

// CurrentRevision reads etcd's current revision with a quorum read.
func (s *Store) CurrentRevision(ctx context.Context) (int64, error) {
	resp, err := s.client.Get(ctx, "/registry/health", clientv3.WithCountOnly())
	if err != nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}

// Create writes obj at key if nothing is there; on success obj carries its
// new resourceVersion.
func (s *Store) Create(ctx context.Context, key string, obj runtime.Object) error {
	data, err := s.encode(obj)
	if err != nil {
		return err
	}
	resp, err := s.client.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(data))).
		Commit()
	if err != nil {
		return fmt.Errorf("create %s: %w", key, err)
	}
	if !resp.Succeeded {
		return newErr(ErrExists, key, "")
	}
	return setRV(obj, resp.Header.Revision)
}

// Get decodes the object at key into out.
func (s *Store) Get(ctx context.Context, key string, out runtime.Object) error {
	resp, err := s.client.Get(ctx, key)
	if err != nil {
		return fmt.Errorf("get %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return newErr(ErrNotFound, key, "")
	}
	_, err = s.decode(resp.Kvs[0].Value, resp.Kvs[0].ModRevision, out)
	return err
}

// UpdateFunc computes the new object from the stored one. Returning the
// existing object unchanged (same pointer) skips the write.
type UpdateFunc func(existing runtime.Object) (runtime.Object, error)

// GuaranteedUpdate reads key, applies fn and writes the result if the key
// is unchanged since the read, retrying fn on a concurrent write. fn is
// where callers reject a stale resourceVersion that a client supplied.
// newObj returns an empty object of the stored type.
func (s *Store) GuaranteedUpdate(ctx context.Context, key string, newObj func() runtime.Object, pre *Preconditions, fn UpdateFunc) (runtime.Object, error) {
	for attempt := 0; ; attempt++ {
		resp, err := s.client.Get(ctx, key)
		if err != nil {
			return nil, fmt.Errorf("get %s: %w", key, err)
		}
		if len(resp.Kvs) == 0 {
			return nil, newErr(ErrNotFound, key, "")
		}
		kv := resp.Kvs[0]
		existing, err := s.decode(kv.Value, kv.ModRevision, newObj())
		if err != nil {
			return nil, err
		}
		if err := pre.check(key, existing); err != nil {
			return nil, err
		}
		updated, err := fn(existing)
		if err != nil {
			return nil, err
		}
		if updated == existing {
			return existing, nil
		}
		data, err := s.encode(updated)
		if err != nil {
			return nil, err
		}
		if string(data) == string(kv.Value) {
			// No-op writes do not bump the resourceVersion, as upstream.
			return existing, nil
		}
		tx, err := s.client.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)).
			Then(clientv3.OpPut(key, string(data))).
			Commit()
		if err != nil {
			return nil, fmt.Errorf("update %s: %w", key, err)
		}
		if tx.Succeeded {
			return updated, setRV(updated, tx.Header.Revision)
		}
		if attempt > 100 {
			return nil, newErr(ErrConflict, key, "too many concurrent writers")
		}
	}
}

// Delete removes key if the preconditions hold and check (if any) accepts
// the stored object. It returns the object as it was last stored.
func (s *Store) Delete(ctx context.Context, key string, newObj func() runtime.Object, pre *Preconditions, check func(existing runtime.Object) error) (runtime.Object, error) {
	for {
		resp, err := s.client.Get(ctx, key)
		if err != nil {
			return nil, fmt.Errorf("get %s: %w", key, err)
		}
		if len(resp.Kvs) == 0 {
			return nil, newErr(ErrNotFound, key, "")
		}
		kv := resp.Kvs[0]
		existing, err := s.decode(kv.Value, kv.ModRevision, newObj())
		if err != nil {
			return nil, err
		}
		if err := pre.check(key, existing); err != nil {
			return nil, err
		}
		if check != nil {
			if err := check(existing); err != nil {
				return nil, err
			}
		}
		tx, err := s.client.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)).
			Then(clientv3.OpDelete(key)).
			Commit()
		if err != nil {
			return nil, fmt.Errorf("delete %s: %w", key, err)
		}
		if tx.Succeeded {
			return existing, nil
		}
	}
}

// Count returns the number of keys under prefix.
func (s *Store) Count(ctx context.Context, prefix string) (int64, error) {
	resp, err := s.client.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, err
	}
	return resp.Count, nil
}

// rvOf reads an object's resourceVersion as a revision.
func rvOf(obj runtime.Object) int64 {
	m, err := meta.Accessor(obj)
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(m.GetResourceVersion(), 10, 64)
	return n
}

var _ = metav1.ResourceVersionMatchExact
