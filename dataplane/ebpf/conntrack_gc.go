package ebpf

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// SweepConntrack deletes the conntrack flows past their expiry that their timers did not
// (bpf_timer_init can fail under load, see ct_gc in bpf/tc_node.c), giving back their
// least-conn counts, and reply entries left without their forward entry. It returns how many
// entries it deleted. The sweep runs in the kernel, over the whole map, in one BPF_PROG_RUN.
func (d *Datapath) SweepConntrack() (int, error) {
	// A tc program runs on a packet: any Ethernet-sized buffer does, it is never read.
	ret, err := d.tcNode.CtGc.Run(&ebpf.RunOptions{Data: make([]byte, 64)})
	if err != nil {
		return 0, fmt.Errorf("conntrack sweep: %w", err)
	}
	return int(ret), nil
}
