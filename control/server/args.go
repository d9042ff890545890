package server

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/capstan-net/capstan/control/components"
	"github.com/capstan-net/capstan/control/etcd"
)

// serviceAccountIssuer is the issuer of service-account tokens, the in-cluster
// name of the API server, as kubeadm sets it.
func serviceAccountIssuer(domain string) string { return "https://kubernetes.default.svc." + domain }

func apiserverArgs(cfg *Config, f *files, e *etcd.Etcd, advertise string) components.Args {
	a := components.Args{
		"advertise-address":                  advertise,
		"bind-address":                       cfg.BindAddress,
		"secure-port":                        strconv.Itoa(cfg.SecurePort),
		"allow-privileged":                   "true",
		"authorization-mode":                 "Node,RBAC",
		"client-ca-file":                     f.ca.CertFile,
		"enable-admission-plugins":           "NodeRestriction",
		"enable-bootstrap-token-auth":        "true",
		"etcd-servers":                       strings.Join(e.Endpoints, ","),
		"kubelet-certificate-authority":      f.ca.CertFile,
		"kubelet-client-certificate":         f.kubeletClientCert,
		"kubelet-client-key":                 f.kubeletClient,
		"kubelet-preferred-address-types":    "InternalIP,ExternalIP,Hostname",
		"profiling":                          "false",
		"proxy-client-cert-file":             f.proxyClientCert,
		"proxy-client-key-file":              f.proxyClientKey,
		"requestheader-allowed-names":        "front-proxy-client",
		"requestheader-client-ca-file":       f.frontProxyCA.CertFile,
		"requestheader-extra-headers-prefix": "X-Remote-Extra-",
		"requestheader-group-headers":        "X-Remote-Group",
		"requestheader-username-headers":     "X-Remote-User",
		"service-account-issuer":             serviceAccountIssuer(cfg.ClusterDomain),
		"service-account-key-file":           f.saPub,
		"service-account-signing-key-file":   f.saKey,
		"service-cluster-ip-range":           cfg.ServiceCIDR,
		"service-node-port-range":            cfg.NodePortRange,
		"tls-cert-file":                      f.servingCert,
		"tls-private-key-file":               f.servingKey,
	}
	for k, v := range map[string]string{"etcd-cafile": e.CAFile, "etcd-certfile": e.CertFile, "etcd-keyfile": e.KeyFile, "etcd-prefix": cfg.EtcdPrefix} {
		if v != "" {
			a[k] = v
		}
	}
	return a
}

func controllerManagerArgs(cfg *Config, f *files) components.Args {
	return components.Args{
		"kubeconfig":                       f.controllerManagerKubeconfig,
		"authentication-kubeconfig":        f.controllerManagerKubeconfig,
		"authorization-kubeconfig":         f.controllerManagerKubeconfig,
		"bind-address":                     "127.0.0.1",
		"secure-port":                      "10257",
		"allocate-node-cidrs":              "true",
		"cluster-cidr":                     cfg.ClusterCIDR,
		"node-cidr-mask-size":              strconv.Itoa(cfg.NodeCIDRMaskSize),
		"service-cluster-ip-range":         cfg.ServiceCIDR,
		"cluster-signing-cert-file":        f.ca.CertFile,
		"cluster-signing-key-file":         f.ca.KeyFile,
		"root-ca-file":                     f.ca.CertFile,
		"service-account-private-key-file": f.saKey,
		"use-service-account-credentials":  "true",
		// Join tokens are bootstrap tokens; their cleaner and signer are off by default.
		"controllers":            "*,bootstrapsigner,tokencleaner",
		"configure-cloud-routes": "false",
		"leader-elect":           strconv.FormatBool(cfg.LeaderElect),
		"profiling":              "false",
		// The API server is in the same process: the client-side limits
		// meant for a remote one (20/s) only slow the controllers down.
		"kube-api-qps":   "100",
		"kube-api-burst": "200",
	}
}

func schedulerArgs(cfg *Config, f *files) components.Args {
	return components.Args{
		"kubeconfig":                f.schedulerKubeconfig,
		"authentication-kubeconfig": f.schedulerKubeconfig,
		"authorization-kubeconfig":  f.schedulerKubeconfig,
		"bind-address":              "127.0.0.1",
		"secure-port":               "10259",
		"leader-elect":              strconv.FormatBool(cfg.LeaderElect),
		"profiling":                 "false",
		// Its default client limit (50 requests/s) caps binding at about 50
		// pods/s; the API server is in the same process.
		"kube-api-qps":   "1000",
		"kube-api-burst": "2000",
	}
}

// overrides parses the three --<component>-arg lists.
type overrides struct{ apiserver, controllerManager, scheduler components.Args }

func parseOverrides(cfg *Config) (*overrides, error) {
	var o overrides
	var err error
	if o.apiserver, err = components.ParseOverrides(components.APIServer(), "--kube-apiserver-arg", cfg.APIServerArgs); err != nil {
		return nil, err
	}
	if o.controllerManager, err = components.ParseOverrides(components.ControllerManager(), "--kube-controller-manager-arg", cfg.ControllerManagerArgs); err != nil {
		return nil, err
	}
	if o.scheduler, err = components.ParseOverrides(components.Scheduler(), "--kube-scheduler-arg", cfg.SchedulerArgs); err != nil {
		return nil, err
	}
	for _, owned := range []string{"secure-port", "bind-address"} {
		if _, ok := o.apiserver[owned]; ok {
			return nil, fmt.Errorf("--kube-apiserver-arg %s: use capstan server's --%s, which the kubeconfigs follow", owned, owned)
		}
	}
	return &o, nil
}
