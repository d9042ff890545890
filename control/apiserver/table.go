package apiserver

import (
	"context"
	"net/http"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/kubernetes/pkg/api/legacyscheme"
	"k8s.io/kubernetes/pkg/printers"
	printersinternal "k8s.io/kubernetes/pkg/printers/internalversion"
	printerstorage "k8s.io/kubernetes/pkg/printers/storage"

	"github.com/capstan-net/capstan/control/registry"
)

// tableConvertor prints internal objects with upstream's column handlers,
// so `kubectl get` shows the usual columns.
type tableConvertor struct {
	printerstorage.TableConvertor
}

func newTableConvertor() tableConvertor {
	return tableConvertor{printerstorage.TableConvertor{TableGenerator: printers.NewTableGenerator().With(printersinternal.AddHandlers)}}
}

func tableOptions(r *http.Request) (*metav1.TableOptions, error) {
	opts := &metav1.TableOptions{}
	q := r.URL.Query()
	opts.NoHeaders = q.Get("noHeaders") == "true"
	switch v := metav1.IncludeObjectPolicy(q.Get("includeObject")); v {
	case "", metav1.IncludeMetadata:
		opts.IncludeObject = metav1.IncludeMetadata
	case metav1.IncludeNone, metav1.IncludeObject:
		opts.IncludeObject = v
	default:
		return nil, badRequest("includeObject must be one of None, Metadata or Object, not %q", v)
	}
	return opts, nil
}

func (s *Server) toTable(ctx context.Context, r *http.Request, res *registry.Resource, obj runtime.Object) (runtime.Object, error) {
	opts, err := tableOptions(r)
	if err != nil {
		return nil, err
	}
	var in runtime.Object
	var served []runtime.Object
	if meta.IsListType(obj) {
		items, err := meta.ExtractList(obj)
		if err != nil {
			return nil, err
		}
		list, err := legacyscheme.Scheme.New(res.InternalGV().WithKind(res.Kind + "List"))
		if err != nil {
			return nil, err
		}
		internal := make([]runtime.Object, 0, len(items))
		for _, it := range items {
			i, err := res.ToInternal(it)
			if err != nil {
				return nil, err
			}
			internal = append(internal, i)
		}
		if err := meta.SetList(list, internal); err != nil {
			return nil, err
		}
		if src, err := meta.ListAccessor(obj); err == nil {
			dst, _ := meta.ListAccessor(list)
			dst.SetResourceVersion(src.GetResourceVersion())
			dst.SetContinue(src.GetContinue())
			dst.SetRemainingItemCount(src.GetRemainingItemCount())
		}
		in, served = list, items
	} else {
		i, err := res.ToInternal(obj)
		if err != nil {
			return nil, err
		}
		in, served = i, []runtime.Object{obj}
	}
	table, err := s.tables.ConvertToTable(ctx, in, opts)
	if err != nil {
		return nil, err
	}
	for i := range table.Rows {
		if i >= len(served) {
			break
		}
		switch opts.IncludeObject {
		case metav1.IncludeObject:
			table.Rows[i].Object.Object = served[i]
		case metav1.IncludeMetadata:
			table.Rows[i].Object.Object = partial(served[i])
		default:
			table.Rows[i].Object = runtime.RawExtension{}
		}
	}
	table.SetGroupVersionKind(metav1.SchemeGroupVersion.WithKind("Table"))
	return table, nil
}
