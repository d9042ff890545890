package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/capstan-net/capstan/dataplane/daemon"
	"github.com/capstan-net/capstan/kubelet/containerd"
)

// StopAgent stops one node's agent and leaves its pods, programs and state in
// place, as a crashed or stopped kubelet would; Up starts it again.
func StopAgent(cfg Config, node string) error {
	if err := cfg.setDefaults(); err != nil {
		return err
	}
	if cfg.running(node) == 0 {
		return fmt.Errorf("node %s: no agent running", node)
	}
	cfg.stop(node)
	return nil
}

// Down stops the cluster's processes and removes its containers, network
// namespaces, links, pinned BPF objects, cgroups, mounts and state, and puts
// back the host settings its kubelets changed.
func Down(ctx context.Context, cfg Config) error {
	if err := cfg.setDefaults(); err != nil {
		return err
	}
	st, err := readState(cfg.stateFile())
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		st = &State{Name: cfg.Name}
	}
	var errs []error
	// Agents first (pods keep running without them), then the server.
	for _, node := range st.Nodes {
		cfg.stop(node + "-kube-proxy")
		cfg.stop(node)
	}
	cfg.stop("server")
	for _, node := range st.Nodes {
		if err := cfg.removeNode(node); err != nil {
			errs = append(errs, fmt.Errorf("node %s: %w", node, err))
		}
	}
	errs = append(errs, cfg.removeHost(st)...)
	return errors.Join(errs...)
}

// removeNode ends every process of a node (pods, shims, its containerd and
// agent if still there) and removes what it leaves.
func (cfg *Config) removeNode(node string) error {
	var errs []error
	if dir, err := nodeCgroupDir(node); err == nil {
		if err := killCgroup(dir); err != nil {
			errs = append(errs, err)
		}
	}
	nodeDir, runDir := filepath.Join(cfg.DataDir, "nodes", node), filepath.Join(cfg.RunDir, node)
	state := filepath.Join(runDir, "containerd")
	removeCNICache(state)
	removeLogLinks(nodeDir)
	if err := unmountUnder(nodeDir, runDir); err != nil {
		errs = append(errs, err)
	}
	os.RemoveAll(containerd.ShimSocketDir(state))
	os.Remove(containerd.ShimSocketRoot)
	if netnsExists(cfg.netns(node)) {
		if err := run("ip", "netns", "del", cfg.netns(node)); err != nil {
			errs = append(errs, err)
		}
	}
	// Unpinning the maps and links detaches the node's programs.
	os.RemoveAll(filepath.Join(daemon.DefaultPinRoot, node))
	removeCgroups(nodeCgroup(node))
	for _, d := range []string{runDir, nodeDir} {
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeCNICache drops the results libcni cached (in its host-wide
// /var/lib/cni) for the sandboxes of the containerd with this state dir:
// their pods never got a CNI DEL.
func removeCNICache(state string) {
	ids, _ := os.ReadDir(filepath.Join(state, "io.containerd.grpc.v1.cri", "sandboxes"))
	for _, id := range ids {
		files, _ := filepath.Glob(filepath.Join("/var/lib/cni/results", "capstan-"+id.Name()+"-*"))
		for _, f := range files {
			os.Remove(f)
		}
	}
}

// removeHost undoes what Up did to the host itself.
func (cfg *Config) removeHost(st *State) []error {
	var errs []error
	os.Remove(daemon.DefaultPinRoot)
	// The shared parents go only once no node (of any cluster) uses them.
	parents, _ := filepath.Glob("/sys/fs/cgroup/*/capstan")
	for _, p := range append(parents, "/sys/fs/cgroup/capstan") {
		os.Remove(p)
	}
	if err := restoreHost(); err != nil {
		errs = append(errs, err)
	}
	for ns, veth := range map[string]string{cfg.serverNetns(): cfg.serverVeth(), cfg.outsideNetns(): cfg.outsideVeth()} {
		// The link goes with its namespace only once the kernel has
		// cleaned the namespace up, later; deleting it is at once.
		if linkExists(veth) {
			if err := run("ip", "link", "del", veth); err != nil {
				errs = append(errs, err)
			}
		}
		if netnsExists(ns) {
			if err := run("ip", "netns", "del", ns); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if linkExists(cfg.bridge()) {
		if err := run("ip", "link", "del", cfg.bridge()); err != nil {
			errs = append(errs, err)
		}
	}
	os.Remove(filepath.Join(cfg.DataDir, "nodes"))
	os.Remove(cfg.RunDir)
	if err := os.RemoveAll(cfg.dir()); err != nil {
		errs = append(errs, err)
	}
	return errs
}
