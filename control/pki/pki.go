// Package pki creates and loads the cluster's certificate authorities, the
// certificates the control-plane components use, the service-account
// signing key and kubeconfigs. Every file is written to a temporary name and
// renamed into place; a certificate found on disk is kept while it still
// matches what is asked of it.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/capstan-net/capstan/internal/atomicfile"
)

// Lifetimes: CAs outlive their leaves; a leaf is reissued when it has less
// than renewBefore left.
const (
	caLifetime   = 10 * 365 * 24 * time.Hour
	leafLifetime = 5 * 365 * 24 * time.Hour
	renewBefore  = 30 * 24 * time.Hour
)

// CA is a certificate authority able to sign.
type CA struct {
	Cert     *x509.Certificate
	CertPEM  []byte
	Key      crypto.Signer
	CertFile string
	KeyFile  string
}

func newKey() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }

// EncodeKey is the PKCS#8 PEM form of a private key.
func EncodeKey(k crypto.Signer) ([]byte, error) {
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

// ParseCert decodes the first PEM certificate in data.
func ParseCert(data []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(b.Bytes)
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	return n
}

// LoadOrCreateCA loads <dir>/<base>.crt and .key, creating a CA named cn if
// neither exists. One file without the other is an error: replacing a CA
// would orphan every certificate it signed.
func LoadOrCreateCA(dir, base, cn string) (*CA, error) {
	certPath, keyPath := filepath.Join(dir, base+".crt"), filepath.Join(dir, base+".key")
	certPEM, certErr := os.ReadFile(certPath)
	keyPEM, keyErr := os.ReadFile(keyPath)
	switch {
	case certErr == nil && keyErr == nil:
		cert, err := ParseCert(certPEM)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", certPath, err)
		}
		key, err := parseKey(keyPEM)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", keyPath, err)
		}
		return &CA{Cert: cert, CertPEM: certPEM, Key: key, CertFile: certPath, KeyFile: keyPath}, nil
	case !errors.Is(certErr, os.ErrNotExist) || !errors.Is(keyErr, os.ErrNotExist):
		return nil, fmt.Errorf("CA %s: need both %s and %s (%v, %v)", cn, certPath, keyPath, certErr, keyErr)
	}
	key, err := newKey()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(caLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create CA %s: %w", cn, err)
	}
	cert, _ := x509.ParseCertificate(der)
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	kp, err := EncodeKey(key)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.Write(keyPath, kp, 0o600); err != nil {
		return nil, err
	}
	if err := atomicfile.Write(certPath, certPEM, 0o644); err != nil {
		return nil, err
	}
	return &CA{Cert: cert, CertPEM: certPEM, Key: key, CertFile: certPath, KeyFile: keyPath}, nil
}

// CertSpec is what a leaf certificate must say.
type CertSpec struct {
	CommonName    string
	Organizations []string
	// Server and Client choose the extended key usages.
	Server, Client bool
	// Hosts are the DNS names and IP addresses a serving certificate covers.
	Hosts []string
}

func (s CertSpec) template() *x509.Certificate {
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: s.CommonName, Organization: s.Organizations},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(leafLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
	}
	if s.Server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if s.Client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	for _, h := range s.Hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	return tmpl
}

// matches reports whether c, signed by ca, still says what s asks and is
// not about to expire.
func (s CertSpec) matches(c *x509.Certificate, ca *CA) bool {
	if c.CheckSignatureFrom(ca.Cert) != nil || time.Until(c.NotAfter) < renewBefore {
		return false
	}
	if c.Subject.CommonName != s.CommonName || !slices.Equal(c.Subject.Organization, s.Organizations) {
		return false
	}
	for _, h := range s.Hosts {
		if h != "" && c.VerifyHostname(h) != nil {
			return false
		}
	}
	return true
}

// NewKeyPair makes a key and a certificate for it signed by ca.
func (ca *CA) NewKeyPair(spec CertSpec) (certPEM, keyPEM []byte, err error) {
	key, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, spec.template(), ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("sign certificate for %s: %w", spec.CommonName, err)
	}
	keyPEM, err = EncodeKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, err
}

// EnsureCert writes <dir>/<base>.crt and .key unless a pair there, signed
// by ca, already matches spec. It returns the two paths.
func (ca *CA) EnsureCert(dir, base string, spec CertSpec) (certPath, keyPath string, err error) {
	certPath, keyPath = filepath.Join(dir, base+".crt"), filepath.Join(dir, base+".key")
	if data, err := os.ReadFile(certPath); err == nil {
		if c, err := ParseCert(data); err == nil && spec.matches(c, ca) {
			if _, err := os.Stat(keyPath); err == nil {
				return certPath, keyPath, nil
			}
		}
	}
	certPEM, keyPEM, err := ca.NewKeyPair(spec)
	if err != nil {
		return "", "", err
	}
	if err := atomicfile.Write(keyPath, keyPEM, 0o600); err != nil {
		return "", "", err
	}
	if err := atomicfile.Write(certPath, certPEM, 0o644); err != nil {
		return "", "", err
	}
	return certPath, keyPath, nil
}

// EnsureServiceAccountKey writes an RSA key pair for signing service-account
// tokens (<dir>/sa.key and sa.pub) unless one is there, and returns the paths.
// RSA, not ECDSA: every OIDC consumer of the tokens understands RS256.
func EnsureServiceAccountKey(dir string) (keyPath, pubPath string, err error) {
	keyPath, pubPath = filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")
	if data, err := os.ReadFile(keyPath); err == nil {
		if _, err := parseKey(data); err != nil {
			return "", "", fmt.Errorf("%s: %w", keyPath, err)
		}
		if _, err := os.Stat(pubPath); err == nil {
			return keyPath, pubPath, nil
		}
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return "", "", err
	}
	kp, err := EncodeKey(key)
	if err != nil {
		return "", "", err
	}
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return "", "", err
	}
	if err := atomicfile.Write(keyPath, kp, 0o600); err != nil {
		return "", "", err
	}
	pub := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	return keyPath, pubPath, atomicfile.Write(pubPath, pub, 0o644)
}

// Kubeconfig is what a client needs to reach the API server.
type Kubeconfig struct {
	Server string
	CAPEM  []byte
	// Either a client certificate and key (inline or as files) or a token.
	CertPEM, KeyPEM   []byte
	CertFile, KeyFile string
	Token             string
	User              string
}

// WriteKubeconfig writes a one-context kubeconfig with mode 0600.
func WriteKubeconfig(path string, k Kubeconfig) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["capstan"] = &clientcmdapi.Cluster{Server: k.Server, CertificateAuthorityData: k.CAPEM}
	cfg.AuthInfos[k.User] = &clientcmdapi.AuthInfo{
		ClientCertificateData: k.CertPEM, ClientKeyData: k.KeyPEM,
		ClientCertificate: k.CertFile, ClientKey: k.KeyFile, Token: k.Token,
	}
	cfg.Contexts["capstan"] = &clientcmdapi.Context{Cluster: "capstan", AuthInfo: k.User, Namespace: "default"}
	cfg.CurrentContext = "capstan"
	data, err := clientcmd.Write(*cfg)
	if err != nil {
		return err
	}
	return atomicfile.Write(path, data, 0o600)
}

// EnsureClientKubeconfig writes a kubeconfig at path for a client certificate
// matching spec, keeping the one there while its certificate still matches
// (signed by ca, same subject) and it names server.
func (ca *CA) EnsureClientKubeconfig(path, server string, spec CertSpec) error {
	spec.Client = true
	if cfg, err := clientcmd.LoadFromFile(path); err == nil {
		for _, ctx := range cfg.Contexts {
			cl, user := cfg.Clusters[ctx.Cluster], cfg.AuthInfos[ctx.AuthInfo]
			if cl == nil || user == nil || cl.Server != server {
				continue
			}
			if c, err := ParseCert(user.ClientCertificateData); err == nil && spec.matches(c, ca) {
				return nil
			}
		}
	}
	certPEM, keyPEM, err := ca.NewKeyPair(spec)
	if err != nil {
		return err
	}
	return WriteKubeconfig(path, Kubeconfig{Server: server, CAPEM: ca.CertPEM, CertPEM: certPEM, KeyPEM: keyPEM, User: spec.CommonName})
}
