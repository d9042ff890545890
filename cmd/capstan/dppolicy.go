package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"
	"golang.org/x/sys/unix"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/capstan-net/capstan/dataplane/daemon"
	"github.com/capstan-net/capstan/dataplane/ebpf"
)

// newDPPolicyCmd lists the rules the maps enforce for one pod, in the spirit of
// `cilium bpf policy get`. The pod is found through the API (its address and node) unless it
// is given as an address.
func newDPPolicyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy POD|POD-IP",
		Short: "List the NetworkPolicy rules in force for a pod, read from its node's maps",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			addr, pinDir, title, err := resolvePod(cmd.Context(), v, args[0])
			if err != nil {
				return err
			}
			p, err := ebpf.OpenPinned(pinDir)
			if err != nil {
				return err
			}
			defer p.Close()
			pol, err := p.PolicyFor(addr)
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintf(w, "%s (%s, maps in %s)\n", title, addr, pinDir)
			showPolicyDir(w, "INGRESS", "from", pol.IngressIsolated, pol.Ingress)
			showPolicyDir(w, "EGRESS", "to", pol.EgressIsolated, pol.Egress)
			return w.Flush()
		},
	}
	cmd.Flags().StringP("namespace", "n", "default", "the pod's namespace")
	cmd.Flags().String("kubeconfig", "", "kubeconfig to find the pod with (default: the local cluster's)")
	return cmd
}

func showPolicyDir(w io.Writer, dir, peerWord string, isolated bool, rules []ebpf.PolicyRule) {
	if !isolated {
		fmt.Fprintf(w, "\n%s: not isolated (no policy selects the pod for %s): everything allowed\n", dir, strings.ToLower(dir))
		return
	}
	fmt.Fprintf(w, "\n%s: isolated; allowed: replies of allowed flows", dir)
	if dir == "INGRESS" {
		fmt.Fprint(w, ", the pod's own node")
	}
	fmt.Fprintln(w, ", and:")
	if len(rules) == 0 {
		fmt.Fprintln(w, "  (no rules: all other traffic denied)")
		return
	}
	fmt.Fprintf(w, "  %s PEER\tPORTS\tPOLICY\n", strings.ToUpper(peerWord))
	for _, r := range rules {
		switch {
		case r.Deny:
			fmt.Fprintf(w, "  %s\tnone (ipBlock except)\t-\n", r.Peer)
		case r.AnyPort:
			fmt.Fprintf(w, "  %s\tall\t%s\n", r.Peer, r.Policy)
		default:
			for i, pr := range r.Ports {
				peer := r.Peer.String()
				if i > 0 {
					peer = ""
				}
				fmt.Fprintf(w, "  %s\t%s\t%s\n", peer, pr, pr.Policy)
			}
		}
	}
}

// resolvePod turns the argument into the pod's address and its node's pin directory.
func resolvePod(ctx context.Context, v *viper.Viper, arg string) (netip.Addr, string, string, error) {
	if a, err := netip.ParseAddr(arg); err == nil {
		return a, dpPinDir(v), "pod address " + arg, nil
	}
	cs, err := dpClient(v)
	if err != nil {
		return netip.Addr{}, "", "", err
	}
	ns := v.GetString("namespace")
	pod, err := cs.CoreV1().Pods(ns).Get(ctx, arg, metav1.GetOptions{})
	if err != nil {
		return netip.Addr{}, "", "", fmt.Errorf("pod %s/%s: %w", ns, arg, err)
	}
	if pod.Spec.NodeName == "" {
		return netip.Addr{}, "", "", fmt.Errorf("pod %s/%s is not scheduled to a node yet", ns, arg)
	}
	if pod.Spec.HostNetwork {
		return netip.Addr{}, "", "", fmt.Errorf("pod %s/%s uses the host network: NetworkPolicy does not apply to it", ns, arg)
	}
	var addr netip.Addr
	for _, ip := range pod.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil && a.Is4() {
			addr = a
			break
		}
	}
	if !addr.IsValid() {
		return netip.Addr{}, "", "", fmt.Errorf("pod %s/%s has no IPv4 address yet", ns, arg)
	}
	pinDir := v.GetString("pin-dir")
	if pinDir == "" {
		pinDir = filepath.Join(daemon.DefaultPinRoot, pod.Spec.NodeName)
	}
	return addr, pinDir, fmt.Sprintf("pod %s/%s on node %s", ns, arg, pod.Spec.NodeName), nil
}

func dpClient(v *viper.Viper) (kubernetes.Interface, error) {
	kc := v.GetString("kubeconfig")
	if kc == "" {
		kc = defaultKubeconfig()
	}
	if kc == "" {
		// client-go would fall back to in-cluster settings and talk of KUBERNETES_MASTER.
		return nil, errors.New("no kubeconfig found: pass --kubeconfig, set CAPSTAN_DATA_DIR to the cluster's data dir, or run capstan up; or give the pod's IP with --pin-dir")
	}
	rc, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %q: %w", kc, err)
	}
	return kubernetes.NewForConfig(rc)
}

// newDPMonitorCmd streams the packets NetworkPolicy drops, like `cilium monitor --type drop`.
// The programs emit at most 100 events a second per CPU, so a flood cannot swamp the reader.
func newDPMonitorCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "monitor",
		Short: "Stream the packets NetworkPolicy drops, with the reason",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			dirs, err := monitorDirs(v)
			if err != nil {
				return err
			}
			ctx, cancel := signalContext()
			defer cancel()
			if d := v.GetDuration("duration"); d > 0 {
				ctx, cancel = context.WithTimeout(ctx, d)
				defer cancel()
			}
			names := newPodNames(v)
			// Events carry the kernel's monotonic clock; the ring may still hold drops from
			// before this command started, which are not shown.
			start := monotonicNow()
			out := cmd.OutOrStdout()
			var mu sync.Mutex
			left := v.GetInt("count")
			done := make(chan struct{})
			var closeOnce sync.Once
			finish := func() { closeOnce.Do(func() { close(done) }) }

			var errs []error
			for node, dir := range dirs {
				mon, err := ebpf.OpenPolicyMonitor(dir)
				if err != nil {
					return err
				}
				// Closing unblocks the reader below.
				defer mon.Close()
				go func() {
					for {
						ev, err := mon.Read()
						if err != nil {
							if !errors.Is(err, os.ErrClosed) {
								mu.Lock()
								errs = append(errs, fmt.Errorf("node %s: %w", node, err))
								mu.Unlock()
							}
							finish()
							return
						}
						if ev.Time < start {
							continue
						}
						at := time.Now().Add(ev.Time - monotonicNow())
						mu.Lock()
						fmt.Fprintf(out, "%s %s %s (%s -> %s)\n", at.Format("15:04:05.000"), node, ev,
							names.name(ev.Src.Addr()), names.name(ev.Dst.Addr()))
						left--
						if left == 0 {
							finish()
						}
						mu.Unlock()
					}
				}()
			}
			select {
			case <-ctx.Done():
			case <-done:
			}
			return errors.Join(errs...)
		},
	}
	cmd.Flags().Int("count", 0, "exit after this many drops (0: run until interrupted)")
	cmd.Flags().Duration("duration", 0, "exit after this long (0: run until interrupted)")
	cmd.Flags().Bool("all-nodes", false, "follow every node pinned under "+daemon.DefaultPinRoot+" (the local cluster's)")
	cmd.Flags().String("kubeconfig", "", "kubeconfig to name pods with (default: the local cluster's; none: addresses only)")
	return cmd
}

func monotonicNow() time.Duration {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Duration(ts.Nano())
}

// monitorDirs picks the pin directories to follow, by node name.
func monitorDirs(v *viper.Viper) (map[string]string, error) {
	if !v.GetBool("all-nodes") {
		dir := dpPinDir(v)
		return map[string]string{filepath.Base(dir): dir}, nil
	}
	ents, err := os.ReadDir(daemon.DefaultPinRoot)
	if err != nil {
		return nil, fmt.Errorf("--all-nodes: %w", err)
	}
	out := make(map[string]string)
	for _, e := range ents {
		if e.IsDir() {
			out[e.Name()] = filepath.Join(daemon.DefaultPinRoot, e.Name())
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("--all-nodes: no node pinned under %s", daemon.DefaultPinRoot)
	}
	return out, nil
}

// podNames names pod addresses for the monitor, best effort: the pod list is refreshed at
// most every few seconds when an address is unknown.
type podNames struct {
	cs      kubernetes.Interface
	mu      sync.Mutex
	byAddr  map[netip.Addr]string
	fetched time.Time
}

func newPodNames(v *viper.Viper) *podNames {
	cs, err := dpClient(v)
	if err != nil {
		cs = nil
	}
	return &podNames{cs: cs, byAddr: make(map[netip.Addr]string)}
}

func (n *podNames) name(a netip.Addr) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if s, ok := n.byAddr[a]; ok {
		return s
	}
	if n.cs != nil && time.Since(n.fetched) > 5*time.Second {
		n.fetched = time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if pods, err := n.cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{}); err == nil {
			for _, p := range pods.Items {
				if p.Spec.HostNetwork {
					continue
				}
				for _, ip := range p.Status.PodIPs {
					if pa, err := netip.ParseAddr(ip.IP); err == nil {
						n.byAddr[pa] = p.Namespace + "/" + p.Name
					}
				}
			}
		}
		if s, ok := n.byAddr[a]; ok {
			return s
		}
	}
	return "?"
}
