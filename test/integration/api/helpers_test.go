package api_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilrand "k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/capstan-net/capstan/control/server/servertest"
)

// startServer runs a server for t, on the external etcd when
// CAPSTAN_TEST_ETCD names one.
func startServer(t *testing.T, opts servertest.Options) *servertest.Server {
	t.Helper()
	opts.EtcdEndpoints = servertest.EnvEtcd()
	return servertest.Start(t, opts)
}

// newNamespace creates a uniquely named namespace, so tests sharing an
// external etcd never see each other's objects.
func newNamespace(t *testing.T, cs kubernetes.Interface, prefix string) string {
	t.Helper()
	name := prefix + "-" + utilrand.String(6)
	ctx := context.Background()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		// Best effort: the server may already be gone; an external etcd
		// keeps the namespace for a later server's controller to empty.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		cs.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{})
	})
	return name
}

// waitFor polls cond until it returns true or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var lastErr error
	for {
		ok, err := cond()
		if ok {
			return
		}
		lastErr = err
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s (last error: %v)", timeout, what, lastErr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// rawClient is an HTTP client with cfg's credentials, for requests
// client-go would refuse to send.
type rawClient struct {
	host string
	http *http.Client
}

func newRawClient(t *testing.T, cfg *rest.Config) *rawClient {
	t.Helper()
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hc.Timeout = 30 * time.Second
	return &rawClient{host: strings.TrimSuffix(cfg.Host, "/"), http: hc}
}

// response is one raw answer: the code, the body and, when the body is a
// Status, the decoded Status.
type response struct {
	code   int
	body   []byte
	header http.Header
	status *metav1.Status
}

func (c *rawClient) do(t *testing.T, method, path, contentType string, body []byte) response {
	t.Helper()
	return c.doWith(t, method, path, contentType, "", body)
}

// doWith sends one request; accept "" asks for JSON.
func (c *rawClient) doWith(t *testing.T, method, path, contentType, accept string, body []byte) response {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, c.host+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if accept == "" {
		accept = "application/json"
	}
	req.Header.Set("Accept", accept)
	resp, err := c.http.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	out := response{code: resp.StatusCode, body: data, header: resp.Header}
	var st metav1.Status
	if json.Unmarshal(data, &st) == nil && st.Kind == "Status" {
		out.status = &st
	}
	return out
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// nodeConfig joins a node with the cluster's join token and returns a
// client config carrying that node's credentials.
func nodeConfig(t *testing.T, s *servertest.Server, node string) *rest.Config {
	t.Helper()
	token, err := os.ReadFile(filepath.Join(s.DataDir, "join-token"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: node}}, key)
	if err != nil {
		t.Fatal(err)
	}
	body := mustJSON(t, map[string]string{
		"nodeName": node,
		"csr":      string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER})),
	})
	anon := rest.AnonymousClientConfig(s.Config)
	anon.BearerToken = strings.TrimSpace(string(token))
	rc := newRawClient(t, anon)
	resp := rc.do(t, http.MethodPost, "/capstan/v1/join", "application/json", body)
	if resp.code != http.StatusOK {
		t.Fatalf("join %s: %d %s", node, resp.code, resp.body)
	}
	var jr struct {
		Certificate string `json:"certificate"`
		CA          string `json:"ca"`
	}
	if err := json.Unmarshal(resp.body, &jr); err != nil {
		t.Fatalf("join response: %v: %s", err, resp.body)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cfg := rest.AnonymousClientConfig(s.Config)
	cfg.TLSClientConfig.CAData = []byte(jr.CA)
	cfg.TLSClientConfig.CertData = []byte(jr.Certificate)
	cfg.TLSClientConfig.KeyData = pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	return cfg
}

// serverLog returns everything the test server has logged so far.
func serverLog(t *testing.T, s *servertest.Server) string {
	t.Helper()
	matches, _ := filepath.Glob(filepath.Join(s.DataDir, "server-*.log"))
	var b strings.Builder
	for _, m := range matches {
		data, err := os.ReadFile(m)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(data)
	}
	return b.String()
}

// assertNoServerErrors fails if the server logged a failed request (a
// 5xx) or a panic.
func assertNoServerErrors(t *testing.T, s *servertest.Server) {
	t.Helper()
	log := serverLog(t, s)
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "request failed") || strings.Contains(line, "panic") {
			t.Errorf("server logged: %s", line)
		}
	}
}

// statusCode is the HTTP code of an API error, 0 for other errors.
func statusCode(err error) int32 {
	var st apierrors.APIStatus
	if errors.As(err, &st) {
		return st.Status().Code
	}
	return 0
}

func ptr[T any](v T) *T { return &v }

func fmtErr(err error) string {
	if err == nil {
		return "<nil>"
	}
	return fmt.Sprintf("%T: %v", err, err)
}
