package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/containerd/containerd/v2/client"
	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	"github.com/capstan-net/capstan/cluster"
	"github.com/capstan-net/capstan/kubelet/agent"
	"github.com/capstan-net/capstan/kubelet/containerd"
	"github.com/capstan-net/capstan/kubelet/images"
)

func newImagesCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "images",
		Short: "Manage the images in nodes' containerd",
		Args:  cobra.NoArgs,
	}
	imp := &cobra.Command{
		Use:   "import FILE...",
		Short: "Import OCI image-layout archives into a node's CRI image store (or every node's, as kind load does)",
		Example: `  capstan images import --node node-2 app.tar      # one node of this machine
  capstan images import --cluster app.tar          # every node of the capstan up cluster`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, log, err := setup(cmd)
			if err != nil {
				return err
			}
			sockets, err := importTargets(v)
			if err != nil {
				return err
			}
			ctx, cancel := signalContext()
			defer cancel()
			for _, socket := range sockets {
				if err := importInto(ctx, socket, args, log, cmd); err != nil {
					return err
				}
			}
			return nil
		},
	}
	f := imp.Flags()
	f.String("node", "", "node whose containerd gets the images (default: this host's name)")
	f.Bool("cluster", false, "every node of the local cluster (capstan up)")
	f.String("containerd-socket", "", "a containerd socket, instead of a node's")
	f.String("data-dir", "/var/lib/capstan", "state directory (the local cluster's is <data-dir>/cluster)")
	f.String("run-dir", "/run/capstan", "runtime directory (a node's containerd socket is <run-dir>/<node>/containerd/containerd.sock)")
	cmd.AddCommand(imp)
	return cmd
}

// importTargets are the containerd sockets the flags name.
func importTargets(v *viper.Viper) ([]string, error) {
	runDir := v.GetString("run-dir")
	set := 0
	for _, k := range []string{"node", "containerd-socket"} {
		if v.GetString(k) != "" {
			set++
		}
	}
	if v.GetBool("cluster") {
		set++
	}
	if set > 1 {
		return nil, errors.New("give one of --node, --cluster and --containerd-socket")
	}
	switch {
	case v.GetString("containerd-socket") != "":
		return []string{v.GetString("containerd-socket")}, nil
	case v.GetBool("cluster"):
		st, err := cluster.ReadState(v.GetString("data-dir"))
		if err != nil {
			return nil, fmt.Errorf("--cluster: no local cluster under --data-dir %s: %w", v.GetString("data-dir"), err)
		}
		var out []string
		for _, n := range st.Nodes {
			out = append(out, agent.ContainerdSocket(runDir, n))
		}
		return out, nil
	}
	node := v.GetString("node")
	if node == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, err
		}
		node = h
	}
	return []string{agent.ContainerdSocket(runDir, node)}, nil
}

func importInto(ctx context.Context, socket string, files []string, log *slog.Logger, cmd *cobra.Command) error {
	if _, err := os.Stat(socket); err != nil {
		return fmt.Errorf("no containerd at %s (is the node's agent running?): %w", socket, err)
	}
	c, err := client.New(socket)
	if err != nil {
		return fmt.Errorf("connect to containerd at %s: %w", socket, err)
	}
	defer c.Close()
	for _, path := range files {
		names, err := images.Import(ctx, c, containerd.Namespace, path, log)
		if err != nil {
			return err
		}
		for _, name := range names {
			fmt.Fprintf(cmd.OutOrStdout(), "%s\t%s\n", socket, name)
		}
	}
	return nil
}
