package apiserver

import (
	"context"
	"crypto/subtle"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/authentication/user"

	"github.com/capstan-net/capstan/control/pki"
)

// Groups and users with fixed meaning, as in Kubernetes.
const (
	GroupMasters       = "system:masters"
	GroupNodes         = "system:nodes"
	GroupBootstrappers = "system:bootstrappers"
	NodeUserPrefix     = "system:node:"
)

// JoinPath is where a node trades the join token for its credentials.
const JoinPath = "/capstan/v1/join"

// JoinRequest asks for a node client certificate.
type JoinRequest struct {
	NodeName string `json:"nodeName"`
	// CSR is a PEM certificate request whose key the node keeps.
	CSR string `json:"csr"`
	// ServingCSR, when set, asks for the serving certificate of the node's
	// agent endpoint (logs, exec, port-forward), valid for Addresses.
	ServingCSR string   `json:"servingCSR,omitempty"`
	Addresses  []string `json:"addresses,omitempty"`
}

// JoinResponse carries the node's certificate and the cluster CA.
type JoinResponse struct {
	Certificate        string `json:"certificate"`
	ServingCertificate string `json:"servingCertificate,omitempty"`
	CA                 string `json:"ca"`
}

// Authenticator identifies callers by client certificate (signed by the
// cluster CA) or by the join token, and authorizes what they may do.
type Authenticator struct {
	CA        *pki.CA
	JoinToken string
}

type userKey struct{}

func userFrom(ctx context.Context) (user.Info, bool) {
	u, ok := ctx.Value(userKey{}).(user.Info)
	return u, ok
}

func (a *Authenticator) authenticate(r *http.Request) (user.Info, bool) {
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
		c := r.TLS.VerifiedChains[0][0]
		return &user.DefaultInfo{Name: c.Subject.CommonName, Groups: append(append([]string{}, c.Subject.Organization...), user.AllAuthenticated)}, true
	}
	if h := r.Header.Get("Authorization"); strings.HasPrefix(h, "Bearer ") {
		tok := strings.TrimSpace(strings.TrimPrefix(h, "Bearer "))
		if a.JoinToken != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(a.JoinToken)) == 1 {
			return &user.DefaultInfo{Name: "system:bootstrap:join", Groups: []string{GroupBootstrappers, user.AllAuthenticated}}, true
		}
	}
	return nil, false
}

// public paths need no credentials, as upstream's public-info-viewer role.
func public(path string) bool {
	switch path {
	case "/healthz", "/livez", "/readyz", "/version":
		return true
	}
	return false
}

func (a *Authenticator) wrap(s *Server, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, ok := a.authenticate(r)
		if !ok {
			if public(r.URL.Path) {
				next.ServeHTTP(w, r)
				return
			}
			s.writeObject(w, r, http.StatusUnauthorized, &metav1.Status{
				Status: metav1.StatusFailure, Code: http.StatusUnauthorized, Reason: metav1.StatusReasonUnauthorized, Message: "Unauthorized",
			})
			return
		}
		r = r.WithContext(context.WithValue(r.Context(), userKey{}, u))
		if r.URL.Path == JoinPath {
			a.serveJoin(s, w, r, u)
			return
		}
		if inGroup(u, GroupBootstrappers) && !public(r.URL.Path) {
			s.writeError(w, r, apierrors.NewForbidden(forbiddenGR(r), "", fmt.Errorf("User %q may only join nodes", u.GetName())))
			return
		}
		next.ServeHTTP(w, r)
	})
}

func forbiddenGR(r *http.Request) schema.GroupResource {
	return schema.GroupResource{Resource: strings.Trim(r.URL.Path, "/")}
}

func inGroup(u user.Info, g string) bool {
	for _, x := range u.GetGroups() {
		if x == g {
			return true
		}
	}
	return false
}

// authorize applies Capstan's fixed policy: masters may do anything; a
// node may read, and may write only its own Node and Lease, the pods bound
// to it, and events.
func (a *Authenticator) authorize(s *Server, r *http.Request, ri reqInfo) error {
	u, ok := userFrom(r.Context())
	if !ok {
		return statusFor(http.StatusUnauthorized, metav1.StatusReasonUnauthorized, "Unauthorized")
	}
	if inGroup(u, GroupMasters) {
		return nil
	}
	if inGroup(u, GroupNodes) && strings.HasPrefix(u.GetName(), NodeUserPrefix) {
		node := strings.TrimPrefix(u.GetName(), NodeUserPrefix)
		if a.nodeMay(s, r, ri, node) {
			return nil
		}
	}
	scope := "at the cluster scope"
	if ri.namespace != "" {
		scope = fmt.Sprintf("in the namespace %q", ri.namespace)
	}
	res := ri.res.Name
	if ri.sub != "" {
		res += "/" + ri.sub
	}
	return apierrors.NewForbidden(ri.res.GroupResource(), ri.name,
		fmt.Errorf("User %q cannot %s resource %q in API group %q %s", u.GetName(), ri.verb, res, ri.gv.Group, scope))
}

func (a *Authenticator) nodeMay(s *Server, r *http.Request, ri reqInfo, node string) bool {
	switch ri.verb {
	case "get", "list", "watch":
		return true
	}
	switch ri.res.Name {
	case "nodes":
		if ri.verb == "create" {
			return true // createInternal checks the body's name
		}
		return ri.name == node
	case "leases":
		return ri.namespace == "kube-node-lease" && (ri.name == node || ri.verb == "create")
	case "events":
		return ri.verb == "create" || ri.verb == "update" || ri.verb == "patch"
	case "pods":
		if ri.name == "" || ri.verb == "create" && ri.sub == "" {
			return false
		}
		// The pod must be bound to this node.
		if ri.verb == "deletecollection" {
			return false
		}
		pod := &corev1.Pod{}
		if err := s.store.Get(r.Context(), ri.res.Key(ri.namespace, ri.name), pod); err != nil {
			// Deleting a pod that is already gone reveals nothing and
			// writes nothing: let it reach its 404.
			return apierrors.IsNotFound(err) && ri.verb == "delete"
		}
		return pod.Spec.NodeName == node
	}
	return false
}

// mayCreateNamed rejects a node creating a Node other than its own.
func mayCreateNamed(ctx context.Context, resource, name string) error {
	u, ok := userFrom(ctx)
	if !ok || inGroup(u, GroupMasters) || resource != "nodes" {
		return nil
	}
	if strings.TrimPrefix(u.GetName(), NodeUserPrefix) != name {
		return apierrors.NewForbidden(schema.GroupResource{Resource: "nodes"}, name, fmt.Errorf("User %q cannot create node %q", u.GetName(), name))
	}
	return nil
}

func (a *Authenticator) serveJoin(s *Server, w http.ResponseWriter, r *http.Request, u user.Info) {
	if r.Method != http.MethodPost {
		s.writeError(w, r, statusFor(http.StatusMethodNotAllowed, metav1.StatusReasonMethodNotAllowed, "join takes POST"))
		return
	}
	if !inGroup(u, GroupBootstrappers) && !inGroup(u, GroupMasters) {
		s.writeError(w, r, statusFor(http.StatusForbidden, metav1.StatusReasonForbidden, "only the join token may join nodes"))
		return
	}
	body, err := readBody(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var req JoinRequest
	if err := json.Unmarshal(body, &req); err != nil {
		s.writeError(w, r, badRequest("invalid join request: %v", err))
		return
	}
	if req.NodeName == "" || strings.ContainsAny(req.NodeName, "/:") {
		s.writeError(w, r, badRequest("join request: nodeName %q is not a valid node name", req.NodeName))
		return
	}
	block, _ := pem.Decode([]byte(req.CSR))
	if block == nil {
		s.writeError(w, r, badRequest("join request: csr is not PEM"))
		return
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil || csr.CheckSignature() != nil {
		s.writeError(w, r, badRequest("join request: invalid csr"))
		return
	}
	cert, err := a.CA.Sign(csr.PublicKey, NodeUserPrefix+req.NodeName, []string{GroupNodes}, false, nil)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	resp := JoinResponse{Certificate: string(cert), CA: string(a.CA.CertPEM)}
	if req.ServingCSR != "" {
		block, _ := pem.Decode([]byte(req.ServingCSR))
		if block == nil {
			s.writeError(w, r, badRequest("join request: servingCSR is not PEM"))
			return
		}
		scsr, err := x509.ParseCertificateRequest(block.Bytes)
		if err != nil || scsr.CheckSignature() != nil {
			s.writeError(w, r, badRequest("join request: invalid servingCSR"))
			return
		}
		hosts := append([]string{req.NodeName}, req.Addresses...)
		for _, h := range req.Addresses {
			if net.ParseIP(h) == nil {
				s.writeError(w, r, badRequest("join request: address %q is not an IP address", h))
				return
			}
		}
		serving, err := a.CA.Sign(scsr.PublicKey, NodeUserPrefix+req.NodeName, []string{GroupNodes}, true, hosts)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		resp.ServingCertificate = string(serving)
	}
	writeJSON(w, http.StatusOK, resp)
}
