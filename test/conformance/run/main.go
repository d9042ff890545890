// Command run brings up a fresh local cluster per service mode, runs an
// upstream e2e selection on it (parallel specs first, then the [Serial]
// ones alone), records the results under docs/conformance/ and renders
// docs/conformance.md from every record there:
//
//	go run ./test/conformance/run -suite conformance -modes ebpf
//	go run ./test/conformance/run -suite sig-network -modes ebpf,iptables,none
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/capstan-net/capstan/cluster"
	"github.com/capstan-net/capstan/test/conformance"
)

type options struct {
	suite, bin, docs string
	modes            []string
	procs, nodes     int
	keep             bool
	timeout          time.Duration
}

func main() {
	var o options
	var modes string
	flag.StringVar(&o.suite, "suite", "conformance", "conformance ([Conformance]) or sig-network (every [sig-network] spec that can apply)")
	flag.StringVar(&modes, "modes", "ebpf", "service modes to run in, comma-separated: ebpf, iptables, none (with bin/kube-proxy)")
	flag.StringVar(&o.bin, "bin", "bin", "where make left capstan, e2e.test, ginkgo, kube-proxy and images/e2e-images.tar")
	flag.StringVar(&o.docs, "docs", "docs", "where conformance.md and the records (conformance/*.json) go")
	flag.IntVar(&o.procs, "procs", 6, "ginkgo processes for the parallel specs")
	flag.IntVar(&o.nodes, "nodes", 3, "cluster nodes")
	flag.DurationVar(&o.timeout, "timeout", 2*time.Hour, "limit of each ginkgo run (parallel, then serial); specs still running then are reported interrupted")
	flag.BoolVar(&o.keep, "keep", false, "leave the last cluster up (capstan down --name conf ... removes it)")
	renderOnly := flag.Bool("render", false, "only render conformance.md from the records already in -docs")
	flag.Parse()
	o.modes = strings.Split(modes, ",")
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	run := o.run
	if *renderOnly {
		run = func(context.Context, *slog.Logger) error { return render(o.docs) }
	}
	if err := run(ctx, log); err != nil {
		fmt.Fprintf(os.Stderr, "conformance: %v\n", err)
		os.Exit(1)
	}
}

func (o options) selection() (focus, skip string, err error) {
	switch o.suite {
	case "conformance":
		return conformance.FocusConformance, "", nil
	case "sig-network":
		return conformance.FocusNetwork, conformance.SkipNetwork, nil
	}
	return "", "", fmt.Errorf("-suite %q: want conformance or sig-network", o.suite)
}

func (o options) run(ctx context.Context, log *slog.Logger) error {
	if _, _, err := o.selection(); err != nil {
		return err
	}
	for _, m := range o.modes {
		if m != "ebpf" && m != "iptables" && m != "none" {
			return fmt.Errorf("-modes: %q is not ebpf, iptables or none", m)
		}
	}
	bin, err := filepath.Abs(o.bin)
	if err != nil {
		return err
	}
	o.bin = bin
	for _, mode := range o.modes {
		rec, err := o.runMode(ctx, log, mode)
		if err != nil {
			return fmt.Errorf("mode %s: %w", mode, err)
		}
		if err := rec.Save(filepath.Join(o.docs, "conformance")); err != nil {
			return err
		}
		log.Info("recorded", "suite", o.suite, "mode", mode, "passed", rec.Passed, "failed", rec.Failed, "skipped", rec.Skipped)
		// After each mode, so a run stopped later still leaves its table.
		if err := render(o.docs); err != nil {
			return err
		}
	}
	return nil
}

// runMode brings a cluster up in one mode, runs the suite on it and takes it
// down again.
func (o options) runMode(ctx context.Context, log *slog.Logger, mode string) (*conformance.Record, error) {
	start := time.Now()
	work, err := os.MkdirTemp("", "capstan-conformance-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	cfg := cluster.Config{
		Name: "conf", DataDir: filepath.Join(work, "data"), RunDir: filepath.Join(work, "run"),
		Nodes: o.nodes, Mode: mode, Subnet: netip.MustParsePrefix("172.28.100.0/24"),
		Binary: filepath.Join(o.bin, "capstan"), Images: []string{filepath.Join(o.bin, "images", "e2e-images.tar")},
		ReadyTimeout: 5 * time.Minute, Log: log,
	}
	if mode == "none" {
		cfg.KubeProxy = filepath.Join(o.bin, "kube-proxy")
	}
	if _, err := cluster.Up(ctx, cfg); err != nil {
		return nil, errors.Join(err, down(cfg, o.keep))
	}
	res, err := o.runSuite(ctx, cfg, work)
	if err := down(cfg, o.keep); err != nil {
		log.Warn("cluster down", "err", err)
	}
	if err != nil {
		return nil, err
	}
	rec := conformance.NewRecord(o.suite, mode, res)
	rec.Date, rec.Took = start.UTC(), time.Since(start).Round(time.Minute).String()
	rec.Kubernetes, rec.Capstan, rec.Machine = kubeVersion(o.bin), commit(), machine()
	return rec, nil
}

// runSuite runs the parallel specs, then the serial ones alone.
func (o options) runSuite(ctx context.Context, cfg cluster.Config, work string) (*conformance.Results, error) {
	focus, skip, _ := o.selection()
	kubectl := filepath.Join(work, "kubectl")
	if err := os.Symlink(cfg.Binary, kubectl); err != nil {
		return nil, err
	}
	reports := filepath.Join(o.bin, "conformance", o.suite+"-"+cfg.Mode)
	os.RemoveAll(reports)
	r := conformance.Run{
		Ginkgo: filepath.Join(o.bin, "ginkgo"), E2ETest: filepath.Join(o.bin, "e2e.test"),
		Kubeconfig: cluster.Kubeconfig(cfg.DataDir), Kubectl: kubectl, Dir: reports,
		Name: "parallel", Focus: focus, Skip: join(skip, conformance.Serial), Procs: o.procs, Nodes: o.nodes, Timeout: o.timeout, Output: os.Stdout,
	}
	res, err := r.Exec(ctx)
	if err != nil {
		return nil, err
	}
	r.Name, r.Focus, r.Skip, r.Procs = "serial", focus+".*"+conformance.Serial+"|"+conformance.Serial+".*"+focus, skip, 1
	serial, err := r.Exec(ctx)
	if err != nil {
		return nil, err
	}
	res.Merge(serial)
	return res, nil
}

func join(a, b string) string {
	if a == "" {
		return b
	}
	return a + "|" + b
}

func down(cfg cluster.Config, keep bool) error {
	if keep {
		return nil
	}
	return cluster.Down(context.Background(), cfg)
}

// render writes conformance.md from every record in docs/conformance.
func render(docs string) error {
	recs, err := conformance.LoadRecords(filepath.Join(docs, "conformance"))
	if err != nil {
		return err
	}
	var ex []conformance.Explanation
	if data, err := os.ReadFile(filepath.Join(docs, "conformance", "explanations.tsv")); err == nil {
		if ex, err = conformance.ParseExplanations(string(data)); err != nil {
			return err
		}
	}
	var b strings.Builder
	conformance.WriteMarkdown(&b, recs, ex)
	return os.WriteFile(filepath.Join(docs, "conformance.md"), []byte(b.String()), 0o644)
}

func kubeVersion(bin string) string {
	out, _ := exec.Command(filepath.Join(bin, "capstan"), "version").Output()
	for _, f := range strings.Fields(string(out)) {
		if strings.HasPrefix(f, "v1.") {
			return f
		}
	}
	return "unknown"
}

func commit() string {
	out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

func machine() string {
	host, _ := os.Hostname()
	var uts syscall.Utsname
	syscall.Uname(&uts)
	rel := make([]byte, 0, len(uts.Release))
	for _, c := range uts.Release {
		if c == 0 {
			break
		}
		rel = append(rel, byte(c))
	}
	return fmt.Sprintf("%s, Linux %s, %d cores", host, rel, runtime.NumCPU())
}
