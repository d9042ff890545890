package perfcluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/capstan-net/capstan/cluster"
	"github.com/capstan-net/capstan/cni"
)

// From is where a command runs: a node's own network namespace and cgroup (Node alone, where
// the node's socket load balancer applies, as for a Kubernetes node's processes), a pod's
// network namespace (Node and PodUID), or a named network namespace (Netns).
type From struct {
	Node, PodUID, Netns string
}

// From is where commands run in the pod's network namespace.
func (r Running) From() From { return From{Node: r.Node, PodUID: r.UID} }

func (c *Cluster) command(from From, args ...string) (*exec.Cmd, func(), error) {
	switch {
	case from.Netns != "":
		return exec.Command("ip", append([]string{"netns", "exec", from.Netns}, args...)...), func() {}, nil
	case from.PodUID != "":
		path, err := c.podNetns(from.Node, from.PodUID)
		if err != nil {
			return nil, nil, err
		}
		return exec.Command("nsenter", append([]string{"--net=" + path, "--"}, args...)...), func() {}, nil
	default:
		return cluster.NodeCommand(c.Config, from.Node, args...)
	}
}

// podNetns finds a pod's network namespace in the endpoint records
// capstan-cni leaves in its node's run directory.
func (c *Cluster) podNetns(node, uid string) (string, error) {
	eps, err := cni.ListEndpoints(filepath.Join(c.Config.RunDir, node, "endpoints"))
	if err != nil {
		return "", err
	}
	for _, ep := range eps {
		if ep.PodUID == uid {
			if _, err := os.Stat(ep.Netns); err != nil {
				return "", fmt.Errorf("network namespace of pod %s: %w", uid, err)
			}
			return ep.Netns, nil
		}
	}
	return "", fmt.Errorf("pod %s: no CNI endpoint record on node %s", uid, node)
}

// Echo runs the host's capstan-echo with args, from, for probes that must be quick, and
// returns its trimmed output.
func (c *Cluster) Echo(from From, args ...string) (string, error) {
	cmd, done, err := c.command(from, append([]string{c.EchoBinary}, args...)...)
	if err != nil {
		return "", err
	}
	defer done()
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// Sysctl sets a sysctl (key=value) in from's network namespace.
func (c *Cluster) Sysctl(from From, kv string) error {
	cmd, done, err := c.command(from, "sysctl", "-qw", kv)
	if err != nil {
		return err
	}
	defer done()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%v: %v: %s", cmd.Args, err, out)
	}
	return nil
}

// Answers reports whether addr answers a connect from from (and, if want is set, with want).
func (c *Cluster) Answers(from From, addr, proto, want string) bool {
	out, err := c.Echo(from, "connect", "--protocol", proto, "--timeout", "300ms", addr)
	return err == nil && (want == "" || out == want)
}

// UntilAnswers polls until addr answers from from.
func (c *Cluster) UntilAnswers(ctx context.Context, from From, addr, proto, want string, timeout time.Duration) error {
	return Poll(ctx, timeout, func() error {
		if !c.Answers(from, addr, proto, want) {
			return fmt.Errorf("%s (%s) does not answer %q", addr, proto, want)
		}
		return nil
	})
}

// Perf is capstan-echo perf's JSON line.
type Perf struct {
	Test        string  `json:"test"`
	Target      string  `json:"target"`
	Connections int     `json:"connections"`
	Size        int     `json:"size"`
	DurationS   float64 `json:"duration_s"`
	Ops         int64   `json:"ops"`
	Bytes       int64   `json:"bytes"`
	Errors      int64   `json:"errors"`
	OpsPerS     float64 `json:"ops_per_s"`
	BitsPerS    float64 `json:"bits_per_s"`
	Latency     struct {
		P50 float64 `json:"p50"`
		P90 float64 `json:"p90"`
		P99 float64 `json:"p99"`
		Max float64 `json:"max"`
	} `json:"latency_us"`
	CPUS       float64 `json:"cpu_s"`
	FirstError string  `json:"first_error"`
}

// PerfRun is one capstan-echo perf run.
type PerfRun struct {
	Test, Addr  string
	Duration    time.Duration
	Connections int
	// Namespace and Pod run it in a pod (the image's capstan-echo, through kubectl exec);
	// Netns instead runs the host's capstan-echo in that network namespace.
	Namespace, Pod, Netns string
}

// Perf runs capstan-echo perf.
func (c *Cluster) Perf(ctx context.Context, r PerfRun) (Perf, error) {
	args := []string{"perf", r.Addr, "--test", r.Test, "--duration", r.Duration.String(), "--connections", strconv.Itoa(r.Connections)}
	var cmd *exec.Cmd
	if r.Netns != "" {
		cmd = exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", r.Netns, c.EchoBinary}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, c.Config.Binary, append([]string{"kubectl", "-n", r.Namespace, "exec", r.Pod, "--", "/capstan-echo"}, args...)...)
		cmd.Env = append(os.Environ(), "KUBECONFIG="+c.Kubeconfig)
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	runErr := cmd.Run()
	var p Perf
	if err := json.Unmarshal(lastLine(out.Bytes()), &p); err != nil {
		return p, fmt.Errorf("perf %s %s: %v: %s %s", r.Test, r.Addr, runErr, out.String(), errOut.String())
	}
	if p.Ops == 0 {
		return p, fmt.Errorf("perf %s %s: nothing got through: %s", r.Test, r.Addr, p.FirstError)
	}
	return p, nil
}

// Measure is Perf tried twice at most, with the CPU seconds the serve process of the pod
// serverUID spent during the run that counts. A run is a sample, and one lost to a transient
// is not the figure; a second failure is.
func (c *Cluster) Measure(ctx context.Context, r PerfRun, serverUID string, log *slog.Logger) (Perf, float64, error) {
	before := ServeCPU(serverUID)
	res, err := c.Perf(ctx, r)
	if err != nil {
		log.Warn("measurement failed, retrying once", "err", err)
		time.Sleep(2 * time.Second)
		before = ServeCPU(serverUID)
		res, err = c.Perf(ctx, r)
	}
	if err != nil {
		return res, 0, err
	}
	return res, ServeCPU(serverUID) - before, nil
}

func lastLine(b []byte) []byte {
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	return lines[len(lines)-1]
}

// podProcess finds the host pid of the process of a pod whose command line has word.
func podProcess(uid, word string) string {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		cg, err := os.ReadFile(filepath.Join(d, "cgroup"))
		if err != nil || !strings.Contains(string(cg), "pod"+uid) {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join(d, "cmdline"))
		if strings.Contains(string(cmdline), word) {
			return filepath.Base(d)
		}
	}
	return ""
}

// ServeCPU is the CPU time (user and system, seconds) of the capstan-echo serve process in the
// pod with uid, read from the host, or 0.
func ServeCPU(uid string) float64 {
	pid := podProcess(uid, "serve")
	if pid == "" {
		return 0
	}
	stat, err := os.ReadFile(filepath.Join("/proc", pid, "stat"))
	if err != nil {
		return 0
	}
	// Fields after the command's closing parenthesis: utime and stime are 14 and 15.
	_, rest, _ := strings.Cut(string(stat), ") ")
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}
