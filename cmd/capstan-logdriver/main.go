// Command capstan-logdriver is the containerd logging binary of Capstan
// nodes: the shim runs it once per container as
// `capstan-logdriver logdriver FILE`, with the container's stdout and
// stderr on fds 3 and 4, and it writes them to FILE in the CRI log format.
// It is a separate small binary (the agent falls back to `capstan
// logdriver`) because one runs per container start, and the full capstan
// binary costs several times more CPU to start.
package main

import (
	"fmt"
	"os"

	"github.com/capstan-net/capstan/kubelet/logs"
)

func main() {
	args := os.Args[1:]
	if len(args) > 0 && args[0] == "logdriver" {
		args = args[1:]
	}
	if err := logs.DriverMain(args); err != nil {
		fmt.Fprintln(os.Stderr, "capstan-logdriver:", err)
		os.Exit(2)
	}
}
