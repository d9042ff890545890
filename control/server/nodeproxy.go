package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/http"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/capstan-net/capstan/control/apiserver"
	"github.com/capstan-net/capstan/control/pki"
	"github.com/capstan-net/capstan/control/registry"
	"github.com/capstan-net/capstan/control/storage"
)

// nodeProxy reaches node agents for pods/log, exec, attach and
// portforward, with a client certificate made at start-up and kept in
// memory only.
func nodeProxy(ca *pki.CA, store *storage.Store, reg *registry.Registry, log *slog.Logger) (func(http.ResponseWriter, *http.Request, *corev1.Pod, string) error, error) {
	certPEM, keyPEM, err := ca.NewKeyPair("capstan:apiserver", []string{apiserver.GroupMasters}, false, nil)
	if err != nil {
		return nil, fmt.Errorf("kubelet client certificate: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("kubelet client certificate: %w", err)
	}
	nodes, ok := reg.Lookup(schema.GroupVersion{Version: "v1"}, "nodes")
	if !ok {
		return nil, fmt.Errorf("no nodes resource")
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	return apiserver.NewNodeProxy(apiserver.NodeProxyConfig{
		Node: func(ctx context.Context, name string) (*corev1.Node, error) {
			n := &corev1.Node{}
			return n, store.Get(ctx, nodes.Key("", name), n)
		},
		TLS: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		Log: log,
	}), nil
}
