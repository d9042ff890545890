// Package apiserver serves the Kubernetes REST API over Capstan's etcd
// storage: routing, discovery, OpenAPI, content negotiation, the write
// verbs with patching and server-side apply, watches, and authentication.
package apiserver

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/managedfields"
	"k8s.io/apimachinery/pkg/version"
	"k8s.io/apiserver/pkg/endpoints/handlers/negotiation"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/kubernetes/pkg/api/legacyscheme"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"

	"github.com/capstan-net/capstan/control/registry"
	"github.com/capstan-net/capstan/control/storage"
)

// Hooks let the registry's allocators take part in writes to a resource.
type Hooks interface {
	// BeforeCreate runs before validation; undo releases what it took.
	BeforeCreate(ctx context.Context, res *registry.Resource, obj runtime.Object) (undo func(), err error)
	// BeforeUpdate runs before validation of an update.
	BeforeUpdate(ctx context.Context, res *registry.Resource, obj, old runtime.Object) (undo func(), err error)
	// AfterUpdate runs once an update is stored (never for a dry run).
	AfterUpdate(ctx context.Context, res *registry.Resource, obj, old runtime.Object)
	// AfterDelete runs once an object is gone from storage.
	AfterDelete(ctx context.Context, res *registry.Resource, obj runtime.Object)
}

// Config wires the server.
type Config struct {
	Registry *registry.Registry
	Store    *storage.Store
	Log      *slog.Logger
	Hooks    Hooks
	Auth     *Authenticator
	Metrics  *Metrics
	// BookmarkInterval for watches; zero means one minute.
	BookmarkInterval time.Duration
	// Ready reports whether the server can serve (etcd reachable).
	Ready func(ctx context.Context) error
	// ExternalAddress is advertised in discovery.
	ExternalAddress string
	// NodeProxy serves pods/log, exec, attach and portforward by reaching
	// the pod's node agent; nil answers 503.
	NodeProxy func(w http.ResponseWriter, r *http.Request, pod *corev1.Pod, sub string) error
}

// Server is the API server's HTTP handler.
type Server struct {
	cfg     Config
	reg     *registry.Registry
	store   *storage.Store
	log     *slog.Logger
	openapi *openAPI
	mux     *http.ServeMux
	tables  tableConvertor

	mu       sync.Mutex
	managers map[string]*managedfields.FieldManager

	nsMu     sync.Mutex
	nsActive map[string]time.Time // namespace -> when last seen active
}

// New builds the server; building OpenAPI models takes a moment.
func New(cfg Config) (*Server, error) {
	// Table and PartialObjectMetadata live in meta.k8s.io/v1.
	if !legacyscheme.Scheme.Recognizes(metav1.SchemeGroupVersion.WithKind("Table")) {
		if err := metav1.AddMetaToScheme(legacyscheme.Scheme); err != nil {
			return nil, err
		}
	}
	oa, err := buildOpenAPI(cfg.Registry)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:      cfg,
		reg:      cfg.Registry,
		store:    cfg.Store,
		log:      cfg.Log,
		openapi:  oa,
		mux:      http.NewServeMux(),
		tables:   newTableConvertor(),
		managers: map[string]*managedfields.FieldManager{},
		nsActive: map[string]time.Time{},
	}
	if err := oa.register(s.mux); err != nil {
		return nil, err
	}
	s.mux.HandleFunc("/healthz", s.health(false))
	s.mux.HandleFunc("/livez", s.health(false))
	s.mux.HandleFunc("/readyz", s.health(true))
	s.mux.HandleFunc("/version", s.serveVersion)
	s.mux.HandleFunc("/api", s.serveDiscovery)
	s.mux.HandleFunc("/api/", s.serveAPI)
	s.mux.HandleFunc("/apis", s.serveDiscovery)
	s.mux.HandleFunc("/apis/", s.serveAPI)
	if cfg.Metrics != nil {
		s.mux.Handle("/metrics", cfg.Metrics.Handler())
	}
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, notFoundPath(r.URL.Path))
	})
	return s, nil
}

// Handler is the full chain: metrics, authentication, then routing.
func (s *Server) Handler() http.Handler {
	var h http.Handler = s.mux
	if s.cfg.Auth != nil {
		h = s.cfg.Auth.wrap(s, h)
	}
	if s.cfg.Metrics != nil {
		h = s.cfg.Metrics.wrap(h)
	}
	return h
}

// Version is the Kubernetes version Capstan's API corresponds to.
var Version = version.Info{
	Major: "1", Minor: "37", GitVersion: "v1.37.2-capstan", GitCommit: "capstan",
	GitTreeState: "clean", GoVersion: "go", Compiler: "gc", Platform: "linux/amd64",
}

func (s *Server) serveVersion(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, Version)
}

func (s *Server) health(ready bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if ready && s.cfg.Ready != nil {
			ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
			defer cancel()
			if err := s.cfg.Ready(ctx); err != nil {
				http.Error(w, fmt.Sprintf("[-]etcd failed: %v\nreadyz check failed", err), http.StatusInternalServerError)
				return
			}
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok"))
	}
}

// fieldManager returns the managed-fields tracker of a resource or subresource.
func (s *Server) fieldManager(res *registry.Resource, sub string) (*managedfields.FieldManager, error) {
	key := res.GVR().String() + "/" + sub
	s.mu.Lock()
	defer s.mu.Unlock()
	if fm, ok := s.managers[key]; ok {
		return fm, nil
	}
	var strategy interface{} = res.UpdateStrategy(sub)
	var reset map[fieldpath.APIVersion]fieldpath.Filter
	if rs, ok := strategy.(rest.ResetFieldsStrategy); ok {
		reset = fieldpath.NewExcludeFilterSetMap(rs.GetResetFields())
	}
	fm, err := managedfields.NewDefaultFieldManager(s.openapi.typeConverter,
		runtime.UnsafeObjectConvertor(legacyscheme.Scheme), legacyscheme.Scheme, legacyscheme.Scheme,
		res.GVK(), res.InternalGV(), sub, reset)
	if err != nil {
		return nil, fmt.Errorf("field manager for %s: %w", key, err)
	}
	s.managers[key] = fm
	return fm, nil
}

// managerName is fieldManager from the query or derived from the user agent.
func managerName(r *http.Request) string {
	if m := r.URL.Query().Get("fieldManager"); m != "" {
		return m
	}
	ua := r.UserAgent()
	if i := strings.Index(ua, "/"); i > 0 {
		ua = ua[:i]
	}
	if ua == "" {
		return "unknown"
	}
	return ua
}

func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	se := toStatusError(err, nil, "")
	st := se.Status()
	if st.Code >= 500 {
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	s.writeObject(w, r, int(st.Code), &st)
}

// writeObject negotiates the response type and writes obj.
func (s *Server) writeObject(w http.ResponseWriter, r *http.Request, code int, obj runtime.Object) {
	opts, info, err := negotiation.NegotiateOutputMediaType(r, codecs, restrictions{})
	if err != nil {
		info = jsonInfo()
		code = http.StatusNotAcceptable
		st := toStatusError(err, nil, "").Status()
		obj = &st
	}
	if opts.Pretty && info.PrettySerializer != nil {
		info.Serializer = info.PrettySerializer
	}
	w.Header().Set("Content-Type", info.MediaType)
	w.WriteHeader(code)
	if r.Method == http.MethodHead {
		return
	}
	if err := encodeTo(w, info, obj, objectGV(obj)); err != nil {
		s.log.Warn("encode response", "err", err)
	}
}

func jsonInfo() runtime.SerializerInfo {
	for _, i := range codecs.SupportedMediaTypes() {
		if i.MediaType == runtime.ContentTypeJSON {
			return i
		}
	}
	panic("apiserver: no JSON serializer")
}
