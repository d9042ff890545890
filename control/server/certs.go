package server

import (
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/capstan-net/capstan/control/pki"
)

// files are the paths of the credentials the components are started with.
type files struct {
	ca, frontProxyCA                 *pki.CA
	servingCert, servingKey          string
	kubeletClientCert, kubeletClient string
	proxyClientCert, proxyClientKey  string
	saKey, saPub                     string
	etcdCA                           *pki.CA
	etcdServerCert, etcdServerKey    string
	etcdClientCert, etcdClientKey    string
	adminKubeconfig                  string
	controllerManagerKubeconfig      string
	schedulerKubeconfig              string
	serverKubeconfig                 string
}

// ensureCerts creates what is missing under <data-dir>/pki (kubeadm's
// layout) and the components' kubeconfigs.
func ensureCerts(cfg *Config, advertise string) (*files, error) {
	dir := filepath.Join(cfg.DataDir, "pki")
	f := &files{}
	var err error
	if f.ca, err = pki.LoadOrCreateCA(dir, "ca", "capstan-ca"); err != nil {
		return nil, err
	}
	if f.frontProxyCA, err = pki.LoadOrCreateCA(dir, "front-proxy-ca", "capstan-front-proxy-ca"); err != nil {
		return nil, err
	}
	steps := []struct {
		ca        *pki.CA
		base      string
		spec      pki.CertSpec
		cert, key *string
	}{
		{f.ca, "apiserver", pki.CertSpec{CommonName: "kube-apiserver", Server: true, Hosts: servingHosts(cfg, advertise)}, &f.servingCert, &f.servingKey},
		// The API server calls kubelets (logs, exec, port-forward) as this user.
		{f.ca, "apiserver-kubelet-client", pki.CertSpec{CommonName: "kube-apiserver-kubelet-client", Organizations: []string{"system:masters"}, Client: true}, &f.kubeletClientCert, &f.kubeletClient},
		{f.frontProxyCA, "front-proxy-client", pki.CertSpec{CommonName: "front-proxy-client", Client: true}, &f.proxyClientCert, &f.proxyClientKey},
	}
	for _, s := range steps {
		if *s.cert, *s.key, err = s.ca.EnsureCert(dir, s.base, s.spec); err != nil {
			return nil, fmt.Errorf("certificate %s: %w", s.base, err)
		}
	}
	if f.saKey, f.saPub, err = pki.EnsureServiceAccountKey(dir); err != nil {
		return nil, fmt.Errorf("service-account key: %w", err)
	}
	if len(cfg.EtcdEndpoints) == 0 {
		if err := ensureEtcdCerts(f, filepath.Join(dir, "etcd")); err != nil {
			return nil, err
		}
	}
	return f, ensureKubeconfigs(cfg, f, advertise)
}

func ensureEtcdCerts(f *files, dir string) error {
	var err error
	if f.etcdCA, err = pki.LoadOrCreateCA(dir, "ca", "capstan-etcd-ca"); err != nil {
		return err
	}
	if f.etcdServerCert, f.etcdServerKey, err = f.etcdCA.EnsureCert(dir, "server",
		pki.CertSpec{CommonName: "capstan-etcd", Server: true, Client: true, Hosts: []string{"127.0.0.1", "localhost"}}); err != nil {
		return fmt.Errorf("etcd serving certificate: %w", err)
	}
	f.etcdClientCert, f.etcdClientKey, err = f.etcdCA.EnsureCert(filepath.Dir(dir), "apiserver-etcd-client",
		pki.CertSpec{CommonName: "kube-apiserver-etcd-client", Client: true})
	return err
}

// ensureKubeconfigs writes the in-process components' kubeconfigs: they
// reach the server where it listens, 127.0.0.1 when it listens everywhere
// (as k3s's kubeconfig does).
func ensureKubeconfigs(cfg *Config, f *files, advertise string) error {
	dir := filepath.Join(cfg.DataDir, "kubeconfigs")
	f.adminKubeconfig = AdminKubeconfig(cfg.DataDir)
	f.controllerManagerKubeconfig = filepath.Join(dir, "controller-manager.kubeconfig")
	f.schedulerKubeconfig = filepath.Join(dir, "scheduler.kubeconfig")
	f.serverKubeconfig = filepath.Join(dir, "capstan-server.kubeconfig")
	local := "https://" + net.JoinHostPort(localAddress(cfg.BindAddress), fmt.Sprint(cfg.SecurePort))
	for _, k := range []struct {
		path, server string
		spec         pki.CertSpec
	}{
		{f.controllerManagerKubeconfig, local, pki.CertSpec{CommonName: "system:kube-controller-manager"}},
		{f.schedulerKubeconfig, local, pki.CertSpec{CommonName: "system:kube-scheduler"}},
		// Capstan's own loops: bootstrap objects, the kubelet-serving approver.
		{f.serverKubeconfig, local, pki.CertSpec{CommonName: "capstan-server", Organizations: []string{"system:masters"}}},
	} {
		if err := f.ca.EnsureClientKubeconfig(k.path, k.server, k.spec); err != nil {
			return fmt.Errorf("kubeconfig %s: %w", k.path, err)
		}
	}
	return nil
}

// writeAdminKubeconfig writes admin.kubeconfig (mode 0600, system:masters).
// The server writes it once it serves and the join token works, so whoever
// waits for it (capstan up) can start nodes at once.
func writeAdminKubeconfig(cfg *Config, f *files) error {
	local := "https://" + net.JoinHostPort(localAddress(cfg.BindAddress), fmt.Sprint(cfg.SecurePort))
	return f.ca.EnsureClientKubeconfig(f.adminKubeconfig, local,
		pki.CertSpec{CommonName: "kubernetes-admin", Organizations: []string{"system:masters"}})
}

// servingHosts are the names the API server's certificate covers.
func servingHosts(cfg *Config, advertise string) []string {
	hosts := []string{"127.0.0.1", "localhost", advertise, "kubernetes", "kubernetes.default",
		"kubernetes.default.svc", "kubernetes.default.svc." + cfg.ClusterDomain, cfg.firstServiceIP.String()}
	if ip := net.ParseIP(cfg.BindAddress); ip != nil && !ip.IsUnspecified() {
		hosts = append(hosts, cfg.BindAddress)
	}
	if h, err := os.Hostname(); err == nil {
		hosts = append(hosts, h)
	}
	return append(hosts, cfg.ExtraSANs...)
}

// localAddress is where in-process clients reach the API server.
func localAddress(bind string) string {
	if ip := net.ParseIP(bind); ip == nil || ip.IsUnspecified() {
		return "127.0.0.1"
	}
	return bind
}
