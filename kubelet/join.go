package kubelet

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	certutil "k8s.io/client-go/util/cert"

	"github.com/capstan-net/capstan/control/bootstrap"
	"github.com/capstan-net/capstan/control/pki"
)

// Join is what a node joins the cluster with: the API server, the cluster CA
// that server's certificate must chain to, and a bootstrap token.
type Join struct {
	Server string
	CAPEM  []byte
	Token  string
}

// Joined reports whether the kubelet already holds credentials of its own
// (a kubeconfig whose client certificate is still valid), so no token is needed.
func (c *Config) Joined() bool {
	rc, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig())
	if err != nil || rc.CertFile == "" {
		return false
	}
	certs, err := certutil.CertsFromFile(rc.CertFile)
	return err == nil && len(certs) > 0 && time.Now().Before(certs[0].NotAfter)
}

// WriteBootstrapKubeconfig writes the kubeconfig (mode 0600) the kubelet
// uses to ask for its client certificate.
func (c *Config) WriteBootstrapKubeconfig(j Join) error {
	return pki.WriteKubeconfig(c.BootstrapKubeconfig(), pki.Kubeconfig{
		Server: j.Server, CAPEM: j.CAPEM, Token: j.Token, User: "kubelet-bootstrap",
	})
}

// ErrTokenRejected means the API server does not accept the join token.
var ErrTokenRejected = errors.New("the server rejected the join token")

// Check asks the server who the token's holder is, so that a wrong server,
// CA or token is an error now rather than a kubelet retrying forever. A
// server that is not up yet is waited for, up to timeout.
func (j Join) Check(ctx context.Context, timeout time.Duration) error {
	if _, _, err := bootstrap.ParseToken(j.Token); err != nil {
		return fmt.Errorf("join token: %w", err)
	}
	if _, err := certutil.ParseCertsPEM(j.CAPEM); err != nil {
		return fmt.Errorf("--ca-file: %w", err)
	}
	cs, err := kubernetes.NewForConfig(&rest.Config{
		Host: j.Server, BearerToken: j.Token, Timeout: 10 * time.Second,
		TLSClientConfig: rest.TLSClientConfig{CAData: j.CAPEM},
	})
	if err != nil {
		return fmt.Errorf("--server %s: %w", j.Server, err)
	}
	deadline := time.Now().Add(timeout)
	// A server that has just started serves before it has stored the
	// token's Secret: a rejection counts only after a few seconds of it.
	rejectDeadline := time.Now().Add(10 * time.Second)
	for {
		_, err = cs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
		switch {
		case err == nil:
			return nil
		case apierrors.IsUnauthorized(err) && time.Now().After(rejectDeadline):
			return fmt.Errorf("%w (%s): check --token-file against the server's <data-dir>/join-token", ErrTokenRejected, j.Server)
		case isCertError(err):
			return fmt.Errorf("server %s: %w: is --ca-file the cluster CA (<data-dir>/pki/ca.crt on the server)?", j.Server, err)
		case !apierrors.IsUnauthorized(err) && !isUnreachable(err) || time.Now().After(deadline):
			return fmt.Errorf("join %s: %w", j.Server, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

func isCertError(err error) bool {
	var unknown x509.UnknownAuthorityError
	var host x509.HostnameError
	var invalid x509.CertificateInvalidError
	return errors.As(err, &unknown) || errors.As(err, &host) || errors.As(err, &invalid)
}

// isUnreachable reports errors of a server that is not listening yet.
func isUnreachable(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) || apierrors.IsServiceUnavailable(err) || apierrors.IsTimeout(err) || os.IsTimeout(err)
}
