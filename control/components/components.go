// Package components runs the upstream Kubernetes control-plane components
// (kube-apiserver, kube-controller-manager, kube-scheduler) in-process, from
// k8s.io/kubernetes at the version this module pins, each configured by the
// same command-line flags its own binary takes.
//
// The components are driven through their options packages and public Run
// functions rather than their cobra commands: the commands install process
// signal handlers of their own, which may exist only once per process and
// would take shutdown out of the caller's hands.
package components

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/spf13/pflag"
	cliflag "k8s.io/component-base/cli/flag"
)

// Component is one upstream component.
type Component struct {
	// Name is the upstream binary's name, e.g. "kube-apiserver".
	Name string
	// newFlags returns a flag set bound to fresh options and the function
	// that runs the component with what was parsed into them.
	newFlags func() (*pflag.FlagSet, func(ctx context.Context) error)
}

// Parse checks args against the component's flags and returns the function
// that runs it with them; it returns only when ctx ends or the component
// fails.
func (c Component) Parse(args []string) (func(ctx context.Context) error, error) {
	fs, run := c.newFlags()
	if err := fs.Parse(args); err != nil {
		return nil, fmt.Errorf("%s: %w", c.Name, err)
	}
	if rest := fs.Args(); len(rest) > 0 {
		return nil, fmt.Errorf("%s takes no arguments, got %q", c.Name, rest)
	}
	return run, nil
}

// flagSet gathers named flag sets into one that reports errors instead of
// exiting, as the upstream binaries' commands do.
func flagSet(name string, nfs cliflag.NamedFlagSets) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetNormalizeFunc(cliflag.WordSepNormalizeFunc)
	fs.SetOutput(discard{})
	for _, set := range nfs.FlagSets {
		fs.AddFlagSet(set)
	}
	return fs
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// Args are a component's flags by name, without the leading dashes.
type Args map[string]string

// ParseOverrides reads repeatable "name=value" entries (as given to
// --kube-apiserver-arg and friends; a leading "--" is allowed) and checks
// every name against the component's flags, so a misspelt flag is reported
// before anything starts.
func ParseOverrides(c Component, option string, entries []string) (Args, error) {
	out := Args{}
	var errs []error
	fs, _ := c.newFlags()
	for _, e := range entries {
		name, value, ok := strings.Cut(strings.TrimPrefix(e, "--"), "=")
		switch {
		case !ok || name == "":
			errs = append(errs, fmt.Errorf("%s %q: want name=value", option, e))
		case fs.Lookup(name) == nil:
			errs = append(errs, fmt.Errorf("%s %q: %s has no flag --%s", option, e, c.Name, name))
		default:
			out[name] = value
		}
	}
	return out, errors.Join(errs...)
}

// Merge returns defaults with overrides applied (an override replaces the
// default of the same name) as command-line flags, sorted by name.
func Merge(defaults, overrides Args) []string {
	all := maps.Clone(defaults)
	if all == nil {
		all = Args{}
	}
	maps.Copy(all, overrides)
	names := slices.Sorted(maps.Keys(all))
	out := make([]string, 0, len(names))
	for _, n := range names {
		out = append(out, "--"+n+"="+all[n])
	}
	return out
}
