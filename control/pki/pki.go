// Package pki creates and loads the cluster's certificate authority, the
// API server's serving certificate, client certificates and kubeconfigs.
// Files are written to a temporary name and renamed into place.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/capstan-net/capstan/internal/atomicfile"
)

// CA is a certificate authority able to sign.
type CA struct {
	Cert    *x509.Certificate
	CertPEM []byte
	Key     crypto.Signer
}

// WriteFileAtomic writes data to path through a temporary file and rename.
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	return atomicfile.Write(path, data, mode)
}

func newKey() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }

func keyPEM(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func parseKey(data []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, errors.New("no PEM block in key")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("key cannot sign")
	}
	return s, nil
}

func parseCert(data []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, errors.New("no PEM block in certificate")
	}
	return x509.ParseCertificate(b.Bytes)
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	return n
}

// LoadOrCreateCA loads dir/ca.crt and dir/ca.key, creating them if absent.
func LoadOrCreateCA(dir string) (*CA, error) {
	certPath, keyPath := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if certPEM, err := os.ReadFile(certPath); err == nil {
		keyData, err := os.ReadFile(keyPath)
		if err != nil {
			return nil, fmt.Errorf("read ca key: %w", err)
		}
		cert, err := parseCert(certPEM)
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", certPath, err)
		}
		key, err := parseKey(keyData)
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", keyPath, err)
		}
		return &CA{Cert: cert, CertPEM: certPEM, Key: key}, nil
	}
	key, err := newKey()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "capstan-ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create ca: %w", err)
	}
	cert, _ := x509.ParseCertificate(der)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	kp, err := keyPEM(key)
	if err != nil {
		return nil, err
	}
	if err := WriteFileAtomic(keyPath, kp, 0o600); err != nil {
		return nil, err
	}
	if err := WriteFileAtomic(certPath, certPEM, 0o644); err != nil {
		return nil, err
	}
	return &CA{Cert: cert, CertPEM: certPEM, Key: key}, nil
}

// Sign issues a certificate for pub.
func (ca *CA) Sign(pub crypto.PublicKey, cn string, orgs []string, server bool, hosts []string) ([]byte, error) {
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(5, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		for _, h := range hosts {
			if ip := net.ParseIP(h); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else if h != "" {
				tmpl.DNSNames = append(tmpl.DNSNames, h)
			}
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("sign certificate for %s: %w", cn, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// NewKeyPair makes a key and a certificate for it signed by ca.
func (ca *CA) NewKeyPair(cn string, orgs []string, server bool, hosts []string) (certPEM, keyPEMBytes []byte, err error) {
	key, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	certPEM, err = ca.Sign(key.Public(), cn, orgs, server, hosts)
	if err != nil {
		return nil, nil, err
	}
	keyPEMBytes, err = keyPEM(key)
	return certPEM, keyPEMBytes, err
}

// EnsureServingCert writes dir/server.crt and server.key for hosts unless a
// valid pair covering every host already exists.
func EnsureServingCert(dir string, ca *CA, hosts []string) (certPath, keyPath string, err error) {
	certPath, keyPath = filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	if data, err := os.ReadFile(certPath); err == nil {
		if c, err := parseCert(data); err == nil && covers(c, hosts) && c.CheckSignatureFrom(ca.Cert) == nil {
			return certPath, keyPath, nil
		}
	}
	certPEM, kp, err := ca.NewKeyPair("capstan-apiserver", nil, true, hosts)
	if err != nil {
		return "", "", err
	}
	if err := WriteFileAtomic(keyPath, kp, 0o600); err != nil {
		return "", "", err
	}
	if err := WriteFileAtomic(certPath, certPEM, 0o644); err != nil {
		return "", "", err
	}
	return certPath, keyPath, nil
}

func covers(c *x509.Certificate, hosts []string) bool {
	for _, h := range hosts {
		if h == "" {
			continue
		}
		if c.VerifyHostname(h) != nil {
			return false
		}
	}
	return true
}

// LoadOrCreateToken reads a secret token from path or creates one.
func LoadOrCreateToken(path string) (string, error) {
	if data, err := os.ReadFile(path); err == nil {
		if t := strings.TrimSpace(string(data)); t != "" {
			return t, nil
		}
	}
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	t := hex.EncodeToString(b)
	return t, WriteFileAtomic(path, []byte(t+"\n"), 0o600)
}

// Kubeconfig is what a client needs to reach the API server.
type Kubeconfig struct {
	Server  string
	CAPEM   []byte
	CertPEM []byte
	KeyPEM  []byte
	Token   string
	User    string
}

// WriteKubeconfig writes a one-context kubeconfig with mode 0600.
func WriteKubeconfig(path string, k Kubeconfig) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["capstan"] = &clientcmdapi.Cluster{Server: k.Server, CertificateAuthorityData: k.CAPEM}
	cfg.AuthInfos[k.User] = &clientcmdapi.AuthInfo{ClientCertificateData: k.CertPEM, ClientKeyData: k.KeyPEM, Token: k.Token}
	cfg.Contexts["capstan"] = &clientcmdapi.Context{Cluster: "capstan", AuthInfo: k.User, Namespace: "default"}
	cfg.CurrentContext = "capstan"
	data, err := clientcmd.Write(*cfg)
	if err != nil {
		return err
	}
	return WriteFileAtomic(path, data, 0o600)
}

// NewCSR makes a key and a PEM certificate request for it, for a node
// asking the cluster CA for a certificate it keeps the key of.
func NewCSR(cn string, orgs []string) (csrPEM, keyPEMBytes []byte, err error) {
	key, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: cn, Organization: orgs},
	}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("certificate request: %w", err)
	}
	keyPEMBytes, err = keyPEM(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), keyPEMBytes, nil
}

// CertCovers reports whether the PEM certificate at path is signed by the
// CA in caPEM and valid for every host.
func CertCovers(path string, caPEM []byte, hosts []string) bool {
	data, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	c, err := parseCert(data)
	if err != nil || time.Now().After(c.NotAfter) {
		return false
	}
	ca, err := parseCert(caPEM)
	if err != nil || c.CheckSignatureFrom(ca) != nil {
		return false
	}
	return covers(c, hosts)
}
