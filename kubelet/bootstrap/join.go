// Package bootstrap joins a node to the cluster: it trades the join token
// for the node's client certificate (system:node:<name>) and the serving
// certificate of its agent endpoint, and keeps them on disk so a restarted
// agent needs no token.
package bootstrap

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/capstan-net/capstan/control/apiserver"
	"github.com/capstan-net/capstan/control/pki"
	"github.com/capstan-net/capstan/internal/atomicfile"
)

// Credentials are the files a joined node uses.
type Credentials struct {
	Kubeconfig  string
	CAFile      string
	ServingCert string
	ServingKey  string
}

// Options describe a join.
type Options struct {
	Server   string // https://host:port
	Token    string
	CAFile   string // the cluster CA; required unless Insecure
	Insecure bool   // skip verifying the server on the join call only
	NodeName string
	Addrs    []net.IP
	Dir      string // where the credentials are kept
}

// Join returns the node's credentials, joining only when the ones in
// opts.Dir are missing or no longer cover the node's addresses.
func Join(ctx context.Context, opts Options) (*Credentials, error) {
	creds := &Credentials{
		Kubeconfig:  filepath.Join(opts.Dir, "kubelet.kubeconfig"),
		CAFile:      filepath.Join(opts.Dir, "ca.crt"),
		ServingCert: filepath.Join(opts.Dir, "serving.crt"),
		ServingKey:  filepath.Join(opts.Dir, "serving.key"),
	}
	hosts := []string{opts.NodeName}
	for _, ip := range opts.Addrs {
		hosts = append(hosts, ip.String())
	}
	if caPEM, err := os.ReadFile(creds.CAFile); err == nil {
		if _, err := os.Stat(creds.Kubeconfig); err == nil && pki.CertCovers(creds.ServingCert, caPEM, hosts) {
			return creds, nil
		}
	}
	if opts.Token == "" {
		return nil, errors.New("join: no credentials in " + opts.Dir + " and no --token to get them")
	}
	if opts.Server == "" {
		return nil, errors.New("join: --server is required")
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	switch {
	case opts.CAFile != "":
		caPEM, err := os.ReadFile(opts.CAFile)
		if err != nil {
			return nil, fmt.Errorf("join: read --ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, fmt.Errorf("join: --ca-file %s holds no PEM certificate", opts.CAFile)
		}
		tlsCfg.RootCAs = pool
	case opts.Insecure:
		tlsCfg.InsecureSkipVerify = true
	default:
		return nil, errors.New("join: --ca-file is required to trust the server (or --insecure-skip-ca-verification)")
	}

	csr, key, err := pki.NewCSR(apiserver.NodeUserPrefix+opts.NodeName, []string{apiserver.GroupNodes})
	if err != nil {
		return nil, err
	}
	scsr, skey, err := pki.NewCSR(apiserver.NodeUserPrefix+opts.NodeName, nil)
	if err != nil {
		return nil, err
	}
	req := apiserver.JoinRequest{NodeName: opts.NodeName, CSR: string(csr), ServingCSR: string(scsr)}
	for _, ip := range opts.Addrs {
		req.Addresses = append(req.Addresses, ip.String())
	}
	body, _ := json.Marshal(req)
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(opts.Server, "/")+apiserver.JoinPath, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}
	hreq.Header.Set("Authorization", "Bearer "+opts.Token)
	hreq.Header.Set("Content-Type", "application/json")
	cl := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}, Timeout: 30 * time.Second}
	resp, err := cl.Do(hreq)
	if err != nil {
		return nil, fmt.Errorf("join %s: %w", opts.Server, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("join %s: %s: %s", opts.Server, resp.Status, strings.TrimSpace(string(data)))
	}
	var jr apiserver.JoinResponse
	if err := json.Unmarshal(data, &jr); err != nil {
		return nil, fmt.Errorf("join: decode answer: %w", err)
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, err
	}
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{creds.CAFile, []byte(jr.CA), 0o644},
		{creds.ServingKey, skey, 0o600},
		{creds.ServingCert, []byte(jr.ServingCertificate), 0o644},
	} {
		if err := atomicfile.Write(f.path, f.data, f.mode); err != nil {
			return nil, err
		}
	}
	err = pki.WriteKubeconfig(creds.Kubeconfig, pki.Kubeconfig{
		Server: opts.Server, CAPEM: []byte(jr.CA), CertPEM: []byte(jr.Certificate), KeyPEM: key,
		User: apiserver.NodeUserPrefix + opts.NodeName,
	})
	if err != nil {
		return nil, err
	}
	return creds, nil
}
