package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
)

// conntrackTimeouts are the netfilter conntrack timeouts kube-proxy sets on its node (its
// conntrack.tcpEstablishedTimeout and tcpCloseWaitTimeout defaults, in seconds). Flows the
// eBPF programs do not own (hostNetwork pods, the node's own) still go through netfilter's
// conntrack, and workloads tuned on kube-proxy nodes expect these: a half-closed connection
// is kept for an hour, not the kernel's minute.
var conntrackTimeouts = [][2]string{
	{"net/netfilter/nf_conntrack_tcp_timeout_established", "86400"},
	{"net/netfilter/nf_conntrack_tcp_timeout_close_wait", "3600"},
}

// setConntrackTimeouts writes conntrackTimeouts in the node's network namespace. Without
// the nf_conntrack module there is nothing to tune, which is not an error.
func setConntrackTimeouts(netns, procDir string, log *slog.Logger) error {
	return inNetns(netns, func() error {
		for _, s := range conntrackTimeouts {
			err := os.WriteFile(filepath.Join(procDir, "sys", s[0]), []byte(s[1]), 0o644)
			if errors.Is(err, os.ErrNotExist) {
				log.Debug("no netfilter conntrack; its timeouts left alone")
				return nil
			}
			if err != nil {
				return fmt.Errorf("sysctl %s=%s: %w", s[0], s[1], err)
			}
		}
		return nil
	})
}
