package main

import (
	"github.com/spf13/cobra"

	"github.com/capstan-net/capstan/cni/install"
	"github.com/capstan-net/capstan/internal/bpffs"
)

// newNodeInitCmd is the init container of Capstan's DaemonSet: it prepares
// the node for `capstan dataplane`.
func newNodeInitCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "node-init",
		Short: "Prepare a node for the dataplane: mount bpffs if missing, install capstan-cni",
		Long: `Prepare a node for capstan dataplane, as the init container of Capstan's DaemonSet:
mount a bpf filesystem at --bpffs when none is there (the mount must propagate to the
host), and copy capstan-cni and the portmap plugin (as capstan-portmap) from beside
this binary into --cni-bin-dir.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v, log, err := setup(cmd)
			if err != nil {
				return err
			}
			if err := bpffs.Ensure(v.GetString("bpffs")); err != nil {
				return err
			}
			bins, err := beside()
			if err != nil {
				return err
			}
			done, err := install.Plugins(bins.dir, v.GetString("cni-bin-dir"))
			if err != nil {
				return err
			}
			log.Info("node ready for the dataplane", "bpffs", v.GetString("bpffs"), "installed", done)
			return nil
		},
	}
	cmd.Flags().String("bpffs", bpffs.Root, "where the bpf filesystem must be mounted")
	cmd.Flags().String("cni-bin-dir", "/opt/cni/bin", "CNI plugin directory to install capstan-cni into")
	return cmd
}
