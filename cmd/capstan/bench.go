package main

import (
	"context"
	"fmt"
	"os"
	"runtime/pprof"

	"github.com/spf13/cobra"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/capstan-net/capstan/control/scheduler"
	"github.com/capstan-net/capstan/control/server"
	"github.com/capstan-net/capstan/test/bench/apibench"
)

func newBenchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Run benchmarks that print figures",
	}
	api := &cobra.Command{
		Use:   "api",
		Short: "Pod creates/s and watch delivery latency against a fresh local server",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			v, log, err := setup(cmd)
			if err != nil {
				return err
			}
			ctx, cancel := signalContext()
			defer cancel()
			if path := v.GetString("cpuprofile"); path != "" {
				f, err := os.Create(path)
				if err != nil {
					return err
				}
				defer f.Close()
				if err := pprof.StartCPUProfile(f); err != nil {
					return err
				}
				defer pprof.StopCPUProfile()
			}
			// Protobuf is what Kubernetes' own components (controllers,
			// scheduler, kubelet) speak; --json measures kubectl-style clients.
			ct := "application/vnd.kubernetes.protobuf"
			if v.GetBool("json") {
				ct = "application/json"
			}
			res, err := apibench.Run(ctx, apibench.Config{
				Pods: v.GetInt("pods"), Watchers: v.GetInt("watchers"), Workers: v.GetInt("workers"),
				DataDir: v.GetString("data-dir"), ContentType: ct,
			}, log)
			if err != nil {
				return fmt.Errorf("bench api: %w", err)
			}
			res.Print(os.Stdout)
			return nil
		},
	}
	f := api.Flags()
	f.Int("pods", 10000, "pods to create")
	f.Int("watchers", 10, "concurrent pod watchers")
	f.Int("workers", 64, "concurrent creating clients")
	f.String("data-dir", "", "server data dir (default: a temporary directory)")
	f.String("cpuprofile", "", "write a CPU profile of the whole run (client and server) to this file")
	f.Bool("json", false, "use JSON instead of protobuf on the wire")
	cmd.AddCommand(api, newBenchSchedulerCmd())
	return cmd
}

func newBenchSchedulerCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "scheduler",
		Short: "Pods bound per second by the scheduler, against a fresh local server with simulated nodes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			v, log, err := setup(cmd)
			if err != nil {
				return err
			}
			ctx, cancel := signalContext()
			defer cancel()
			dir, err := os.MkdirTemp("", "capstan-schedbench-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(dir)
			sctx, stop := context.WithCancel(ctx)
			defer stop()
			ready := make(chan struct{})
			errc := make(chan error, 1)
			// The benchmark runs its own scheduler; the server runs none.
			go func() {
				errc <- server.Run(sctx, server.Config{DataDir: dir, BindAddress: "127.0.0.1", Ready: ready,
					Controllers: server.ControllersConfig{Enabled: []string{"-scheduler", "-nodelifecycle", "*"}}}, log)
			}()
			select {
			case <-ready:
			case err := <-errc:
				return fmt.Errorf("server: %w", err)
			}
			rc, err := clientcmd.BuildConfigFromFlags("", server.AdminKubeconfig(dir))
			if err != nil {
				return err
			}
			rc.QPS, rc.Burst = 5000, 10000
			pods, nodes := v.GetInt("pods"), v.GetInt("nodes")
			rate, err := scheduler.BenchmarkBind(ctx, rc, pods, nodes, log)
			if err != nil {
				return fmt.Errorf("bench scheduler: %w", err)
			}
			fmt.Printf("Scheduler benchmark: %d pods on %d simulated nodes\n  pods bound/s   %8.0f\n", pods, nodes, rate)
			return nil
		},
	}
	c.Flags().Int("pods", 5000, "pods to schedule")
	c.Flags().Int("nodes", 100, "simulated nodes")
	return c
}
