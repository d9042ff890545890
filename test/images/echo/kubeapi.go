package main

import (
	"fmt"
	"io"
	"time"

	"k8s.io/client-go/rest"
)

// runKubeapi GETs a path of the Kubernetes API as the pod's service
// account, through the in-cluster configuration client-go gives every
// in-cluster controller (the kubernetes Service's address and the
// service-account token and CA mounted into the pod). It prints the HTTP
// status code and exits 0 for a 2xx answer, 1 otherwise.
func runKubeapi(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("kubeapi", stderr)
	timeout := fs.Duration("timeout", 5*time.Second, "request timeout")
	pos, err := parse(fs, args)
	if err != nil || len(pos) != 1 {
		fmt.Fprintln(stderr, "usage: capstan-echo kubeapi PATH [--timeout 5s]")
		return 2
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		fmt.Fprintf(stderr, "OTHER in-cluster config: %v\n", err)
		return 1
	}
	cfg.Timeout = *timeout
	client, err := rest.HTTPClientFor(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "OTHER client: %v\n", err)
		return 1
	}
	resp, err := client.Get(cfg.Host + pos[0])
	if err != nil {
		fmt.Fprintf(stderr, "OTHER %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	fmt.Fprintln(stdout, resp.StatusCode)
	if resp.StatusCode/100 != 2 {
		return 1
	}
	return 0
}
