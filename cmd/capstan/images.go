package main

import (
	"fmt"
	"os"

	"github.com/containerd/containerd/v2/client"
	"github.com/spf13/cobra"

	"github.com/capstan-net/capstan/kubelet/images"
)

func newImagesCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "images",
		Short: "Manage the images in a node's containerd",
		Args:  cobra.NoArgs,
	}
	imp := &cobra.Command{
		Use:   "import FILE...",
		Short: "Import OCI image-layout archives (such as make images builds) and unpack them",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, log, err := setup(cmd)
			if err != nil {
				return err
			}
			socket, ns := v.GetString("containerd-socket"), v.GetString("namespace")
			if ns == "" {
				return fmt.Errorf("--namespace must not be empty")
			}
			if _, err := os.Stat(socket); err != nil {
				return fmt.Errorf("--containerd-socket: %w (scripts/containerd.sh start runs one)", err)
			}
			ctx, cancel := signalContext()
			defer cancel()
			c, err := client.New(socket)
			if err != nil {
				return fmt.Errorf("connect to containerd at %s: %w", socket, err)
			}
			defer c.Close()
			for _, path := range args {
				names, err := images.Import(ctx, c, ns, path, log)
				if err != nil {
					return err
				}
				for _, name := range names {
					fmt.Fprintln(cmd.OutOrStdout(), name)
				}
			}
			return nil
		},
	}
	f := imp.Flags()
	f.String("containerd-socket", "/run/capstan/containerd/containerd.sock", "containerd socket (scripts/containerd.sh starts one there)")
	f.String("namespace", "capstan", "containerd namespace to import into (a node's namespace)")
	cmd.AddCommand(imp)
	return cmd
}
