package apiserver

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metainternalversionscheme "k8s.io/apimachinery/pkg/apis/meta/internalversion/scheme"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	k8sschema "k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/apiserver/pkg/endpoints/handlers/negotiation"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/apiserver/pkg/warning"
	"k8s.io/kubernetes/pkg/api/legacyscheme"

	"github.com/capstan-net/capstan/control/storage"
)

// warnings collects Warning headers from strategies.
type warnings struct{ list []string }

func (w *warnings) AddWarning(agent, text string) {
	if text != "" {
		w.list = append(w.list, text)
	}
}

func (s *Server) serveAPI(w http.ResponseWriter, r *http.Request) {
	ri, ok, err := parsePath(s.reg, r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if !ok {
		s.serveDiscovery(w, r)
		return
	}
	if s.cfg.Auth != nil {
		if err := s.cfg.Auth.authorize(s, r, ri); err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	if s.cfg.Metrics != nil {
		s.cfg.Metrics.label(r, ri)
	}
	ctx := genericapirequest.WithNamespace(r.Context(), ri.namespace)
	if u, ok := userFrom(r.Context()); ok {
		ctx = genericapirequest.WithUser(ctx, u)
	}
	ctx = genericapirequest.WithRequestInfo(ctx, &genericapirequest.RequestInfo{
		IsResourceRequest: true, Verb: ri.verb, APIGroup: ri.gv.Group, APIVersion: ri.gv.Version,
		Namespace: ri.namespace, Resource: ri.res.Name, Subresource: ri.sub, Name: ri.name,
	})
	warn := &warnings{}
	ctx = warning.WithWarningRecorder(ctx, warn)
	rw := &warningWriter{ResponseWriter: w, warn: warn}
	s.dispatch(ctx, rw, r, ri)
}

// warningWriter adds collected warnings as headers before the status line.
type warningWriter struct {
	http.ResponseWriter
	warn  *warnings
	wrote bool
}

func (w *warningWriter) WriteHeader(code int) {
	if !w.wrote {
		for _, t := range w.warn.list {
			w.Header().Add("Warning", fmt.Sprintf("299 - %s", strconv.Quote(t)))
		}
		w.wrote = true
	}
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection, which the
// node proxy hijacks for exec, attach and port-forward.
func (w *warningWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Hijack hands the connection to an upgrading proxy.
func (w *warningWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

func (w *warningWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *Server) dispatch(ctx context.Context, w http.ResponseWriter, r *http.Request, ri reqInfo) {
	var (
		obj  runtime.Object
		code = http.StatusOK
		err  error
	)
	if ri.res.Name == "namespaces" && ri.verb != "get" && ri.verb != "list" && ri.verb != "watch" {
		defer s.forgetNamespace(ri.name)
	}
	switch {
	case ri.sub != "" && !hasString(subresourceKinds[ri.sub].verbs, ri.verb):
		// Otherwise a GET of pods/x/binding would read the pod and a PUT
		// would write it past the subresource's meaning.
		err = statusFor(http.StatusMethodNotAllowed, metav1.StatusReasonMethodNotAllowed, ri.verb+" is not supported on "+ri.res.Name+"/"+ri.sub)
	case ri.sub == "log" || ri.sub == "exec" || ri.sub == "attach" || ri.sub == "portforward":
		err = s.podStream(ctx, w, r, ri)
		if err == nil {
			return
		}
	case ri.verb == "watch":
		err = s.serveWatch(ctx, w, r, ri)
		if err == nil {
			return
		}
	case ri.verb == "list":
		obj, err = s.list(ctx, r, ri)
	case ri.verb == "get" && ri.sub == "scale":
		obj, err = s.getScale(ctx, ri)
	case ri.verb == "get":
		obj, err = s.get(ctx, ri)
	case ri.verb == "create" && ri.sub == "binding":
		obj, code, err = s.bind(ctx, r, ri)
	case ri.verb == "create" && ri.sub == "eviction":
		obj, code, err = s.evict(ctx, r, ri)
	case ri.verb == "create" && ri.sub != "":
		err = statusFor(http.StatusMethodNotAllowed, metav1.StatusReasonMethodNotAllowed, "create is not supported on "+ri.res.Name+"/"+ri.sub)
	case ri.verb == "create" && ri.name != "":
		err = statusFor(http.StatusMethodNotAllowed, metav1.StatusReasonMethodNotAllowed, "POST to a named "+ri.res.Singular+" is not supported; use PUT or PATCH")
	case ri.verb == "create":
		obj, err = s.create(ctx, r, ri)
		code = http.StatusCreated
	case (ri.verb == "update" || ri.verb == "patch") && ri.sub == "scale":
		obj, err = s.updateScale(ctx, r, ri)
	case ri.verb == "update" && ri.name == "":
		err = statusFor(http.StatusMethodNotAllowed, metav1.StatusReasonMethodNotAllowed, "PUT needs an object name")
	case ri.verb == "update":
		var created bool
		obj, created, err = s.update(ctx, r, ri)
		if created {
			code = http.StatusCreated
		}
	case ri.verb == "patch" && ri.name == "":
		err = statusFor(http.StatusMethodNotAllowed, metav1.StatusReasonMethodNotAllowed, "PATCH needs an object name")
	case ri.verb == "patch":
		var created bool
		obj, created, err = s.patch(ctx, r, ri)
		if created {
			code = http.StatusCreated
		}
	case ri.verb == "delete" && ri.sub != "":
		err = statusFor(http.StatusMethodNotAllowed, metav1.StatusReasonMethodNotAllowed, "delete is not supported on "+ri.res.Name+"/"+ri.sub)
	case ri.verb == "delete":
		obj, code, err = s.deleteOne(ctx, r, ri)
	case ri.verb == "deletecollection":
		obj, err = s.deleteCollection(ctx, r, ri)
	default:
		err = statusFor(http.StatusMethodNotAllowed, metav1.StatusReasonMethodNotAllowed, ri.verb+" is not supported")
	}
	if err != nil {
		se := toStatusError(err, ri.res, ri.name)
		st := se.Status()
		if st.Code >= 500 && r.Context().Err() == nil {
			s.log.Error("request failed", "verb", ri.verb, "path", r.URL.Path, "err", err)
		}
		s.writeObject(w, r, int(st.Code), &st)
		return
	}
	s.respond(ctx, w, r, ri, code, obj)
}

// respond writes a served object, as a Table or metadata when asked.
func (s *Server) respond(ctx context.Context, w http.ResponseWriter, r *http.Request, ri reqInfo, code int, obj runtime.Object) {
	opts, _, err := negotiation.NegotiateOutputMediaType(r, codecs, restrictions{})
	if err == nil && opts.Convert != nil {
		conv, cerr := s.transform(ctx, r, ri, obj, opts.Convert.Kind)
		if cerr != nil {
			s.writeError(w, r, cerr)
			return
		}
		obj = conv
	}
	s.writeObject(w, r, code, obj)
}

// transform turns served objects into a Table or PartialObjectMetadata.
func (s *Server) transform(ctx context.Context, r *http.Request, ri reqInfo, obj runtime.Object, kind string) (runtime.Object, error) {
	if _, ok := obj.(*metav1.Status); ok {
		return obj, nil
	}
	switch kind {
	case "Table":
		return s.toTable(ctx, r, ri.res, obj)
	case "PartialObjectMetadata", "PartialObjectMetadataList":
		if meta.IsListType(obj) {
			items, err := meta.ExtractList(obj)
			if err != nil {
				return nil, err
			}
			out := &metav1.PartialObjectMetadataList{}
			if lm, err := meta.ListAccessor(obj); err == nil {
				out.ResourceVersion = lm.GetResourceVersion()
				out.Continue = lm.GetContinue()
				out.RemainingItemCount = lm.GetRemainingItemCount()
			}
			for _, it := range items {
				out.Items = append(out.Items, *partial(it))
			}
			out.SetGroupVersionKind(metav1.SchemeGroupVersion.WithKind("PartialObjectMetadataList"))
			return out, nil
		}
		return partial(obj), nil
	}
	return nil, notAcceptable(kind)
}

func partial(obj runtime.Object) *metav1.PartialObjectMetadata {
	out := meta.AsPartialObjectMetadata(accessor(obj))
	out.TypeMeta = metav1.TypeMeta{APIVersion: metav1.SchemeGroupVersion.String(), Kind: "PartialObjectMetadata"}
	return out
}

func writeJSON(w http.ResponseWriter, code int, v interface{}) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// --- reads ---

func (s *Server) get(ctx context.Context, ri reqInfo) (runtime.Object, error) {
	obj := ri.res.NewStored()
	if err := s.store.Get(ctx, ri.res.Key(ri.namespace, ri.name), obj); err != nil {
		return nil, err
	}
	return ri.res.ToServed(obj)
}

func (s *Server) predicate(r *http.Request, ri reqInfo) (storage.Predicate, error) {
	q := r.URL.Query()
	pred := storage.Predicate{GetAttrs: ri.res.AttrsOfStored}
	ls, err := labels.Parse(q.Get("labelSelector"))
	if err != nil {
		return pred, badRequest("unable to parse requirement: %v", err)
	}
	fs, err := fields.ParseSelector(q.Get("fieldSelector"))
	if err != nil {
		return pred, badRequest("invalid field selector: %v", err)
	}
	// Validate field labels (and convert old names) the upstream way.
	fs, err = fs.Transform(func(label, value string) (string, string, error) {
		l, v, err := legacyscheme.Scheme.ConvertFieldLabel(ri.res.GVK(), label, value)
		if err != nil {
			return "", "", badRequest("field label not supported: %s", label)
		}
		return l, v, nil
	})
	if err != nil {
		return pred, err
	}
	pred.Label, pred.Field = ls, fs
	return pred, nil
}

func listParams(r *http.Request) (rv string, match metav1.ResourceVersionMatch, limit int64, err error) {
	q := r.URL.Query()
	rv = q.Get("resourceVersion")
	match = metav1.ResourceVersionMatch(q.Get("resourceVersionMatch"))
	if l := q.Get("limit"); l != "" {
		limit, err = strconv.ParseInt(l, 10, 64)
		if err != nil || limit < 0 {
			return "", "", 0, badRequest("limit must be a non-negative integer, not %q", l)
		}
	}
	if _, perr := storage.ParseResourceVersion(rv); perr != nil {
		return "", "", 0, badRequest("invalid resourceVersion %q", rv)
	}
	switch match {
	case "", metav1.ResourceVersionMatchExact, metav1.ResourceVersionMatchNotOlderThan:
	default:
		return "", "", 0, apierrors.NewInvalid(metaKind("ListOptions"), "", field.ErrorList{field.NotSupported(field.NewPath("resourceVersionMatch"), match, []string{"Exact", "NotOlderThan"})})
	}
	if match != "" && rv == "" {
		return "", "", 0, apierrors.NewInvalid(metaKind("ListOptions"), "", field.ErrorList{field.Forbidden(field.NewPath("resourceVersionMatch"), "resourceVersionMatch is forbidden unless resourceVersion is provided")})
	}
	if match == metav1.ResourceVersionMatchExact && rv == "0" {
		return "", "", 0, apierrors.NewInvalid(metaKind("ListOptions"), "", field.ErrorList{field.Forbidden(field.NewPath("resourceVersionMatch"), "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"")})
	}
	return rv, match, limit, nil
}

func (s *Server) list(ctx context.Context, r *http.Request, ri reqInfo) (runtime.Object, error) {
	pred, err := s.predicate(r, ri)
	if err != nil {
		return nil, err
	}
	rv, match, limit, err := listParams(r)
	if err != nil {
		return nil, err
	}
	res, err := s.store.List(ctx, ri.res.Prefix(ri.namespace), storage.ListOptions{
		ResourceVersion: rv, Match: match, Limit: limit, Continue: r.URL.Query().Get("continue"), Predicate: pred,
	}, ri.res.NewStored)
	if err != nil {
		return nil, err
	}
	list := ri.res.NewServedList()
	items := make([]runtime.Object, 0, len(res.Items))
	for _, it := range res.Items {
		o, err := ri.res.ToServed(it)
		if err != nil {
			return nil, err
		}
		items = append(items, o)
	}
	if err := meta.SetList(list, items); err != nil {
		return nil, err
	}
	lm, err := meta.ListAccessor(list)
	if err != nil {
		return nil, err
	}
	lm.SetResourceVersion(strconv.FormatInt(res.Revision, 10))
	lm.SetContinue(res.Continue)
	lm.SetRemainingItemCount(res.Remaining)
	return list, nil
}

// --- writes ---

// checkNamespace enforces namespace lifecycle: content may only be created
// in an existing namespace that is not terminating.
func (s *Server) checkNamespace(ctx context.Context, ns string) error {
	if ns == "" {
		return nil
	}
	// An active namespace seen in the last second is trusted, as upstream's
	// lifecycle admission trusts its informer; writes to a namespace through
	// this server forget it at once.
	s.nsMu.Lock()
	seen, ok := s.nsActive[ns]
	s.nsMu.Unlock()
	if ok && time.Since(seen) < time.Second {
		return nil
	}
	nsRes, _ := s.reg.Lookup(registryCoreV1, "namespaces")
	obj := nsRes.NewStored()
	if err := s.store.Get(ctx, nsRes.Key("", ns), obj); err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return apierrors.NewNotFound(nsRes.GroupResource(), ns)
		}
		return err
	}
	if accessor(obj).GetDeletionTimestamp() != nil {
		return apierrors.NewForbidden(nsRes.GroupResource(), ns,
			fmt.Errorf("unable to create new content in namespace %s because it is being terminated", ns))
	}
	s.nsMu.Lock()
	s.nsActive[ns] = time.Now()
	s.nsMu.Unlock()
	return nil
}

// forgetNamespace drops a namespace ("" for all) from the lifecycle cache.
func (s *Server) forgetNamespace(ns string) {
	s.nsMu.Lock()
	if ns == "" {
		clear(s.nsActive)
	} else {
		delete(s.nsActive, ns)
	}
	s.nsMu.Unlock()
}

func dryRun(r *http.Request) (bool, error) {
	for _, v := range r.URL.Query()["dryRun"] {
		if v != "All" {
			return false, badRequest("dryRun must be \"All\", not %q", v)
		}
		return true, nil
	}
	return false, nil
}

func (s *Server) create(ctx context.Context, r *http.Request, ri reqInfo) (runtime.Object, error) {
	data, err := readBody(r)
	if err != nil {
		return nil, err
	}
	served, warns, err := decodeBody(r, data, ri.res.GVK(), ri.res.NewServed())
	if err != nil {
		return nil, err
	}
	addWarnings(ctx, warns)
	in, err := ri.res.ToInternal(served)
	if err != nil {
		return nil, badRequest("%v", err)
	}
	return s.createInternal(ctx, r, ri, in, nil)
}

// createInternal runs the create path for an internal object. applied, if
// set, is the server-side apply configuration that produced it.
func (s *Server) createInternal(ctx context.Context, r *http.Request, ri reqInfo, in runtime.Object, fmDone func() error) (runtime.Object, error) {
	res := ri.res
	if err := s.checkNamespace(ctx, ri.namespace); err != nil {
		return nil, err
	}
	m := accessor(in)
	if res.Namespaced && m.GetNamespace() == "" {
		m.SetNamespace(ri.namespace)
	}
	if m.GetResourceVersion() != "" {
		return nil, badRequest("resourceVersion should not be set on objects to be created")
	}
	rest.FillObjectMetaSystemFields(m)
	if m.GetGenerateName() != "" && m.GetName() == "" {
		m.SetName(res.Strategy.GenerateName(m.GetGenerateName()))
	}
	if s.cfg.Auth != nil {
		if err := mayCreateNamed(ctx, res.Name, m.GetName()); err != nil {
			return nil, err
		}
	}
	if ri.name != "" && m.GetName() != ri.name {
		return nil, badRequest("the name of the object (%s) does not match the name on the URL (%s)", m.GetName(), ri.name)
	}
	undo := func() {}
	if s.cfg.Hooks != nil {
		u, err := s.cfg.Hooks.BeforeCreate(ctx, res, in)
		if err != nil {
			return nil, err
		}
		if u != nil {
			undo = u
		}
	}
	if err := rest.BeforeCreate(res.Strategy, ctx, in); err != nil {
		undo()
		return nil, err
	}
	if fmDone != nil {
		if err := fmDone(); err != nil {
			undo()
			return nil, err
		}
	} else if fm, err := s.fieldManager(res, ""); err == nil {
		in = fm.UpdateNoErrors(res.NewInternal(), in, managerName(r))
	}
	stored, err := res.ToStored(in)
	if err != nil {
		undo()
		return nil, err
	}
	dry, err := dryRun(r)
	if err != nil {
		undo()
		return nil, err
	}
	if dry {
		undo()
		return res.ToServed(stored)
	}
	if err := s.store.Create(ctx, res.Key(m.GetNamespace(), m.GetName()), stored); err != nil {
		undo()
		if errors.Is(err, storage.ErrExists) {
			return nil, rest.CheckGeneratedNameError(ctx, res.Strategy, apierrors.NewAlreadyExists(res.GroupResource(), m.GetName()), in)
		}
		return nil, err
	}
	return res.ToServed(stored)
}

func addWarnings(ctx context.Context, list []string) {
	for _, w := range list {
		warning.AddWarning(ctx, "", w)
	}
}

// errDryRun carries the would-be result out of a storage update.
type errDryRun struct{ obj runtime.Object }

func (e *errDryRun) Error() string { return "dry run" }

// transformFunc computes a new internal object from the current one.
type transformFunc func(ctx context.Context, old runtime.Object) (runtime.Object, error)

// updateOpts describe an update's semantics.
type updateOpts struct {
	// requireRV: a PUT must carry a resourceVersion unless the strategy
	// allows unconditional updates; patches default it to the current one.
	put bool
	// managed is set when transform already recorded managed fields (apply).
	managed bool
}

// doUpdate runs a guaranteed update of one object through its strategy.
func (s *Server) doUpdate(ctx context.Context, r *http.Request, ri reqInfo, opts updateOpts, transform transformFunc) (runtime.Object, error) {
	res := ri.res
	strategy := res.UpdateStrategy(ri.sub)
	fm, err := s.fieldManager(res, ri.sub)
	if err != nil {
		return nil, err
	}
	dry, err := dryRun(r)
	if err != nil {
		return nil, err
	}
	var undo func()
	var lastOld runtime.Object // the version the stored update replaced
	out, err := s.store.GuaranteedUpdate(ctx, res.Key(ri.namespace, ri.name), res.NewStored, nil, func(existing runtime.Object) (runtime.Object, error) {
		if undo != nil {
			undo()
			undo = nil
		}
		old, err := res.ToInternal(existing)
		if err != nil {
			return nil, err
		}
		lastOld = old
		in, err := transform(ctx, old.DeepCopyObject())
		if err != nil {
			return nil, err
		}
		m, om := accessor(in), accessor(old)
		if m.GetName() != ri.name {
			return nil, badRequest("the name of the object (%s) does not match the name on the URL (%s)", m.GetName(), ri.name)
		}
		if res.Namespaced && m.GetNamespace() == "" {
			m.SetNamespace(ri.namespace)
		}
		switch {
		case m.GetResourceVersion() == "" && opts.put && !strategy.AllowUnconditionalUpdate(ctx):
			return nil, apierrors.NewInvalid(res.GVK().GroupKind(), ri.name, field.ErrorList{
				field.Invalid(field.NewPath("metadata", "resourceVersion"), m.GetResourceVersion(), "must be specified for an update")})
		case m.GetResourceVersion() == "":
			m.SetResourceVersion(om.GetResourceVersion())
		case m.GetResourceVersion() != om.GetResourceVersion():
			return nil, apierrors.NewConflict(res.GroupResource(), ri.name,
				errors.New("the object has been modified; please apply your changes to the latest version and try again"))
		}
		if s.cfg.Hooks != nil && ri.sub == "" {
			u, err := s.cfg.Hooks.BeforeUpdate(ctx, res, in, old)
			if err != nil {
				return nil, err
			}
			undo = u
		}
		if err := rest.BeforeUpdate(strategy, ctx, in, old); err != nil {
			return nil, err
		}
		if !opts.managed {
			in = fm.UpdateNoErrors(old, in, managerName(r))
		}
		stored, err := res.ToStored(in)
		if err != nil {
			return nil, err
		}
		if dry {
			return nil, &errDryRun{obj: stored}
		}
		return stored, nil
	})
	var dr *errDryRun
	if errors.As(err, &dr) {
		if undo != nil {
			undo()
		}
		return res.ToServed(dr.obj)
	}
	if err != nil {
		if undo != nil {
			undo()
		}
		return nil, err
	}
	if s.cfg.Hooks != nil && ri.sub == "" {
		if in, err := res.ToInternal(out); err == nil {
			s.cfg.Hooks.AfterUpdate(ctx, res, in, lastOld)
		}
	}
	if done, err := s.finishDeletion(ctx, ri, out); err != nil || done != nil {
		if err != nil {
			return nil, err
		}
		return res.ToServed(done)
	}
	return res.ToServed(out)
}

func (s *Server) update(ctx context.Context, r *http.Request, ri reqInfo) (runtime.Object, bool, error) {
	data, err := readBody(r)
	if err != nil {
		return nil, false, err
	}
	served, warns, err := decodeBody(r, data, ri.res.GVK(), ri.res.NewServed())
	if err != nil {
		return nil, false, err
	}
	addWarnings(ctx, warns)
	in, err := ri.res.ToInternal(served)
	if err != nil {
		return nil, false, badRequest("%v", err)
	}
	if ri.sub == "finalize" {
		return s.finalizeNamespace(ctx, r, ri, in)
	}
	out, err := s.doUpdate(ctx, r, ri, updateOpts{put: true}, func(ctx context.Context, old runtime.Object) (runtime.Object, error) {
		return in.DeepCopyObject(), nil
	})
	if errors.Is(err, storage.ErrNotFound) && ri.sub == "" && ri.res.Strategy.AllowCreateOnUpdate(ctx) {
		accessor(in).SetResourceVersion("")
		obj, err := s.createInternal(ctx, r, ri, in, nil)
		return obj, err == nil, err
	}
	return out, false, err
}

// --- deletes ---

func deleteOptions(r *http.Request) (*metav1.DeleteOptions, error) {
	opts := &metav1.DeleteOptions{}
	data, err := readBody(r)
	if err != nil {
		return nil, err
	}
	if len(bytes.TrimSpace(data)) > 0 {
		// client-go sends DeleteOptions in its content type (protobuf by
		// default) and as any group's DeleteOptions; the meta scheme knows
		// them all, as upstream decodes them.
		info, err := negotiation.NegotiateInputSerializer(r, false, metainternalversionscheme.Codecs)
		if err != nil {
			return nil, err
		}
		gvk := metav1.SchemeGroupVersion.WithKind("DeleteOptions")
		obj, _, err := info.Serializer.Decode(data, &gvk, opts)
		if err != nil {
			return nil, badRequest("invalid DeleteOptions: %v", err)
		}
		decoded, ok := obj.(*metav1.DeleteOptions)
		if !ok {
			return nil, badRequest("the body is a %T, not DeleteOptions", obj)
		}
		opts = decoded
	}
	q := r.URL.Query()
	if v := q.Get("gracePeriodSeconds"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return nil, badRequest("gracePeriodSeconds must be an integer, not %q", v)
		}
		opts.GracePeriodSeconds = &n
	}
	if v := q.Get("propagationPolicy"); v != "" {
		p := metav1.DeletionPropagation(v)
		opts.PropagationPolicy = &p
	}
	if v := q.Get("orphanDependents"); v != "" {
		b := v == "true"
		opts.OrphanDependents = &b
	}
	if v := q["dryRun"]; len(v) > 0 {
		opts.DryRun = v
	}
	if opts.PropagationPolicy != nil {
		switch *opts.PropagationPolicy {
		case metav1.DeletePropagationBackground, metav1.DeletePropagationForeground, metav1.DeletePropagationOrphan:
		default:
			return nil, apierrors.NewInvalid(metaKind("DeleteOptions"), "", field.ErrorList{
				field.NotSupported(field.NewPath("propagationPolicy"), *opts.PropagationPolicy, []string{"Foreground", "Background", "Orphan"})})
		}
	}
	for _, d := range opts.DryRun {
		if d != "All" {
			return nil, badRequest("dryRun must be \"All\", not %q", d)
		}
	}
	return opts, nil
}

func (s *Server) deleteOne(ctx context.Context, r *http.Request, ri reqInfo) (runtime.Object, int, error) {
	opts, err := deleteOptions(r)
	if err != nil {
		return nil, 0, err
	}
	obj, err := s.deleteObject(ctx, ri, opts)
	if err != nil {
		return nil, 0, err
	}
	return obj, http.StatusOK, nil
}

// deleteObject deletes one object: gracefully (pods), through finalizers,
// or at once. It returns the object as last seen.
func (s *Server) deleteObject(ctx context.Context, ri reqInfo, opts *metav1.DeleteOptions) (runtime.Object, error) {
	res := ri.res
	key := res.Key(ri.namespace, ri.name)
	for attempt := 0; attempt < 10; attempt++ {
		existing := res.NewStored()
		if err := s.store.Get(ctx, key, existing); err != nil {
			return nil, err
		}
		in, err := res.ToInternal(existing)
		if err != nil {
			return nil, err
		}
		m := accessor(in)
		rv := m.GetResourceVersion()
		graceful, pending, err := rest.BeforeDelete(res.Strategy, ctx, in, opts)
		if err != nil {
			return nil, err
		}
		if pending {
			return res.ToServed(existing)
		}
		if res.Name == "namespaces" {
			if done, err := s.markNamespaceTerminating(ctx, ri, in, rv, opts); err != nil || done != nil {
				if errors.Is(err, storage.ErrConflict) {
					continue
				}
				return done, err
			}
		}
		finalizers := m.GetFinalizers()
		policyFinalizer := ""
		switch {
		case opts.PropagationPolicy != nil && *opts.PropagationPolicy == metav1.DeletePropagationOrphan,
			opts.PropagationPolicy == nil && opts.OrphanDependents != nil && *opts.OrphanDependents:
			policyFinalizer = metav1.FinalizerOrphanDependents
		case opts.PropagationPolicy != nil && *opts.PropagationPolicy == metav1.DeletePropagationForeground:
			policyFinalizer = metav1.FinalizerDeleteDependents
		}
		if policyFinalizer != "" && !hasString(finalizers, policyFinalizer) {
			finalizers = append(finalizers, policyFinalizer)
		}
		dry := len(opts.DryRun) > 0
		if graceful || len(finalizers) > 0 {
			if !graceful && m.GetDeletionTimestamp() == nil {
				now := metav1.Now()
				m.SetDeletionTimestamp(&now)
				zero := int64(0)
				m.SetDeletionGracePeriodSeconds(&zero)
				if m.GetGeneration() > 0 {
					m.SetGeneration(m.GetGeneration() + 1)
				}
			}
			m.SetFinalizers(finalizers)
			stored, err := res.ToStored(in)
			if err != nil {
				return nil, err
			}
			if dry {
				return res.ToServed(stored)
			}
			out, err := s.store.GuaranteedUpdate(ctx, key, res.NewStored, &storage.Preconditions{ResourceVersion: &rv}, func(runtime.Object) (runtime.Object, error) {
				return stored, nil
			})
			if errors.Is(err, storage.ErrConflict) {
				continue
			}
			if err != nil {
				return nil, err
			}
			if len(finalizers) > 0 || (m.GetDeletionGracePeriodSeconds() != nil && *m.GetDeletionGracePeriodSeconds() > 0) {
				return res.ToServed(out)
			}
			rv = accessor(out).GetResourceVersion()
		}
		if dry {
			return res.ToServed(existing)
		}
		pre := &storage.Preconditions{ResourceVersion: &rv}
		if opts.Preconditions != nil && opts.Preconditions.UID != nil {
			pre.UID = opts.Preconditions.UID
		}
		deleted, err := s.store.Delete(ctx, key, res.NewStored, pre, nil)
		if errors.Is(err, storage.ErrConflict) && (opts.Preconditions == nil || opts.Preconditions.UID == nil || *opts.Preconditions.UID == m.GetUID()) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if s.cfg.Hooks != nil {
			if din, err := res.ToInternal(deleted); err == nil {
				s.cfg.Hooks.AfterDelete(ctx, res, din)
			}
		}
		return res.ToServed(deleted)
	}
	return nil, apierrors.NewConflict(res.GroupResource(), ri.name, errors.New("too many concurrent writers"))
}

// finishDeletion deletes an object whose last finalizer was just removed.
func (s *Server) finishDeletion(ctx context.Context, ri reqInfo, stored runtime.Object) (runtime.Object, error) {
	m := accessor(stored)
	if m.GetDeletionTimestamp() == nil || len(m.GetFinalizers()) > 0 {
		return nil, nil
	}
	if g := m.GetDeletionGracePeriodSeconds(); g != nil && *g > 0 {
		return nil, nil
	}
	if ri.res.Name == "namespaces" && !namespaceFinalized(stored) {
		return nil, nil
	}
	rv := m.GetResourceVersion()
	deleted, err := s.store.Delete(ctx, ri.res.Key(ri.namespace, ri.name), ri.res.NewStored, &storage.Preconditions{ResourceVersion: &rv}, nil)
	if errors.Is(err, storage.ErrNotFound) || errors.Is(err, storage.ErrConflict) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if s.cfg.Hooks != nil {
		if din, err := ri.res.ToInternal(deleted); err == nil {
			s.cfg.Hooks.AfterDelete(ctx, ri.res, din)
		}
	}
	return deleted, nil
}

func (s *Server) deleteCollection(ctx context.Context, r *http.Request, ri reqInfo) (runtime.Object, error) {
	opts, err := deleteOptions(r)
	if err != nil {
		return nil, err
	}
	pred, err := s.predicate(r, ri)
	if err != nil {
		return nil, err
	}
	res, err := s.store.List(ctx, ri.res.Prefix(ri.namespace), storage.ListOptions{Predicate: pred}, ri.res.NewStored)
	if err != nil {
		return nil, err
	}
	items := make([]runtime.Object, 0, len(res.Items))
	for _, it := range res.Items {
		m := accessor(it)
		one := ri
		one.namespace, one.name = m.GetNamespace(), m.GetName()
		o, err := s.deleteObject(ctx, one, opts.DeepCopy())
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		items = append(items, o)
	}
	list := ri.res.NewServedList()
	if err := meta.SetList(list, items); err != nil {
		return nil, err
	}
	return list, nil
}

func hasString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// --- watch ---

func (s *Server) serveWatch(ctx context.Context, w http.ResponseWriter, r *http.Request, ri reqInfo) error {
	q := r.URL.Query()
	pred, err := s.predicate(r, ri)
	if err != nil {
		return err
	}
	if ri.name != "" {
		pred.Field = fields.AndSelectors(pred.Field, fields.OneTermEqualSelector("metadata.name", ri.name))
	}
	rv, match, initial, err := watchParams(r)
	if err != nil {
		return err
	}
	opts := storage.WatchOptions{
		ResourceVersion:   rv,
		Match:             match,
		SendInitialEvents: initial,
		AllowBookmarks:    q.Get("allowWatchBookmarks") == "true",
		Predicate:         pred,
		BookmarkInterval:  s.cfg.BookmarkInterval,
	}
	if initial != nil && *initial && !opts.AllowBookmarks {
		return apierrors.NewInvalid(metaKind("ListOptions"), "", field.ErrorList{field.Forbidden(field.NewPath("allowWatchBookmarks"), "allowWatchBookmarks must be set to true when sendInitialEvents is true")})
	}
	timeout := 30 * time.Minute
	if v := q.Get("timeoutSeconds"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return badRequest("timeoutSeconds must be a non-negative integer, not %q", v)
		}
		if n > 0 {
			timeout = time.Duration(n) * time.Second
		}
	}
	mopts, info, err := negotiation.NegotiateOutputMediaType(r, codecs, restrictions{})
	if err != nil {
		return err
	}
	if info.StreamSerializer == nil {
		return notAcceptable(info.MediaType + " cannot stream a watch")
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	wi, err := s.store.Watch(wctx, ri.res.Prefix(ri.namespace), opts, ri.res.NewStored)
	if err != nil {
		return err
	}
	defer wi.Stop()

	mediaType := info.MediaType
	if mediaType != runtime.ContentTypeJSON {
		mediaType += ";stream=watch"
	}
	w.Header().Set("Content-Type", mediaType)
	w.Header().Set("Transfer-Encoding", "chunked")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	if flusher != nil {
		flusher.Flush()
	}
	framer := info.StreamSerializer.Framer.NewFrameWriter(w)
	outer := info.StreamSerializer.Serializer
	var buf bytesBuffer
	for {
		select {
		case <-wctx.Done():
			return nil
		case ev, ok := <-wi.ResultChan():
			if !ok {
				return nil
			}
			obj := ev.Object
			if ev.Type != watch.Error {
				if obj, err = ri.res.ToServed(obj); err != nil {
					return nil
				}
				switch {
				case mopts.Convert == nil:
				case ev.Type != watch.Bookmark:
					if obj, err = s.transform(ctx, r, ri, obj, mopts.Convert.Kind); err != nil {
						return nil
					}
				case strings.HasPrefix(mopts.Convert.Kind, "PartialObjectMetadata"):
					// A metadata client decodes nothing else, bookmarks included:
					// a full object here broke its watch on every bookmark.
					obj = partial(obj)
				}
			}
			buf.Reset()
			if err := encodeTo(&buf, info, obj, objectGV(obj)); err != nil {
				s.log.Warn("encode watch event", "err", err)
				return nil
			}
			we := &metav1.WatchEvent{Type: string(ev.Type), Object: runtime.RawExtension{Raw: buf.Bytes()}}
			if err := outer.Encode(we, framer); err != nil {
				return nil
			}
			if flusher != nil && len(wi.ResultChan()) == 0 {
				flusher.Flush()
			}
		}
	}
}

// watchParams validates a watch's version parameters as upstream does:
// resourceVersionMatch only goes with sendInitialEvents, and a streaming
// list needs no resourceVersion (it starts from the present).
func watchParams(r *http.Request) (string, metav1.ResourceVersionMatch, *bool, error) {
	q := r.URL.Query()
	rv := q.Get("resourceVersion")
	if _, err := storage.ParseResourceVersion(rv); err != nil {
		return "", "", nil, badRequest("invalid resourceVersion %q", rv)
	}
	var initial *bool
	if v := q.Get("sendInitialEvents"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return "", "", nil, badRequest("sendInitialEvents must be true or false, not %q", v)
		}
		initial = &b
	}
	match := metav1.ResourceVersionMatch(q.Get("resourceVersionMatch"))
	var errs field.ErrorList
	if initial != nil && match != metav1.ResourceVersionMatchNotOlderThan {
		errs = append(errs, field.Forbidden(field.NewPath("resourceVersionMatch"), "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"))
	}
	if match != "" {
		if initial == nil {
			errs = append(errs, field.Forbidden(field.NewPath("resourceVersionMatch"), "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided"))
		}
		if match != metav1.ResourceVersionMatchNotOlderThan {
			errs = append(errs, field.NotSupported(field.NewPath("resourceVersionMatch"), match, []string{string(metav1.ResourceVersionMatchNotOlderThan)}))
		}
	}
	if len(errs) > 0 {
		return "", "", nil, apierrors.NewInvalid(metaKind("ListOptions"), "", errs)
	}
	return rv, match, initial, nil
}

var registryCoreV1 = k8sschema.GroupVersion{Version: "v1"}

// metaKind names a meta kind in Invalid errors.
func metaKind(kind string) k8sschema.GroupKind {
	return k8sschema.GroupKind{Group: metav1.GroupName, Kind: kind}
}

type bytesBuffer = bytes.Buffer
