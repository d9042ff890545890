package cluster

import (
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"syscall"
)

// NodeCommand prepares args to run as a process of one node: in the node's
// network namespace and in its cgroup (a "host" leaf of the node's subtree),
// where the node's socket load balancer applies, so ClusterIPs answer it as
// they answer a Kubernetes node's own processes. The caller runs the command
// and then calls the returned cleanup (which only closes a descriptor; Down
// removes the cgroup).
func NodeCommand(cfg Config, node string, args ...string) (*exec.Cmd, func(), error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, nil, err
	}
	if len(args) == 0 {
		return nil, nil, errors.New("node command: nothing to run")
	}
	ns := cfg.netns(node)
	if !netnsExists(ns) {
		return nil, nil, fmt.Errorf("node %s: no network namespace %s (is the cluster up?)", node, ns)
	}
	fd, err := cgroupFD(filepath.Join(nodeCgroup(node), "host"))
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command("nsenter", append([]string{"--net=/run/netns/" + ns, "--"}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	return cmd, func() { syscall.Close(fd) }, nil
}
