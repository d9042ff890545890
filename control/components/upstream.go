package components

import (
	"context"
	"fmt"

	"github.com/spf13/pflag"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	apiserverapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
	apiserveroptions "k8s.io/kubernetes/cmd/kube-apiserver/app/options"
	kcmapp "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	kcmoptions "k8s.io/kubernetes/cmd/kube-controller-manager/app/options"
	schedulerapp "k8s.io/kubernetes/cmd/kube-scheduler/app"
	scheduleroptions "k8s.io/kubernetes/cmd/kube-scheduler/app/options"
)

// APIServer is kube-apiserver.
func APIServer() Component {
	return Component{Name: "kube-apiserver", newFlags: func() (*pflag.FlagSet, func(context.Context) error) {
		s := apiserveroptions.NewServerRunOptions()
		fs := flagSet("kube-apiserver", s.Flags())
		return fs, func(ctx context.Context) error {
			if err := s.GenericServerRunOptions.ComponentGlobalsRegistry.Set(); err != nil {
				return fmt.Errorf("kube-apiserver: %w", err)
			}
			completed, err := s.Complete(ctx)
			if err != nil {
				return fmt.Errorf("kube-apiserver: %w", err)
			}
			if errs := completed.Validate(); len(errs) > 0 {
				return fmt.Errorf("kube-apiserver: %w", utilerrors.NewAggregate(errs))
			}
			if err := apiserverapp.Run(ctx, completed); err != nil {
				return fmt.Errorf("kube-apiserver: %w", err)
			}
			return nil
		}
	}}
}

// ControllerManager is kube-controller-manager.
func ControllerManager() Component {
	return Component{Name: "kube-controller-manager", newFlags: func() (*pflag.FlagSet, func(context.Context) error) {
		s, err := kcmoptions.NewKubeControllerManagerOptions()
		if err != nil {
			return pflag.NewFlagSet("kube-controller-manager", pflag.ContinueOnError), func(context.Context) error {
				return fmt.Errorf("kube-controller-manager options: %w", err)
			}
		}
		known, disabled, aliases := kcmapp.KnownControllers(), kcmapp.ControllersDisabledByDefault(), kcmapp.ControllerAliases()
		nfs := s.Flags(known, disabled, aliases)
		s.ParsedFlags = &nfs
		return flagSet("kube-controller-manager", nfs), func(ctx context.Context) error {
			if err := s.ComponentGlobalsRegistry.Set(); err != nil {
				return fmt.Errorf("kube-controller-manager: %w", err)
			}
			c, err := s.Config(ctx, known, disabled, aliases)
			if err != nil {
				return fmt.Errorf("kube-controller-manager: %w", err)
			}
			if err := kcmapp.Run(ctx, c.Complete()); err != nil {
				return fmt.Errorf("kube-controller-manager: %w", err)
			}
			return nil
		}
	}}
}

// Scheduler is kube-scheduler.
func Scheduler() Component {
	return Component{Name: "kube-scheduler", newFlags: func() (*pflag.FlagSet, func(context.Context) error) {
		opts := scheduleroptions.NewOptions()
		return flagSet("kube-scheduler", *opts.Flags), func(ctx context.Context) error {
			if err := opts.ComponentGlobalsRegistry.Set(); err != nil {
				return fmt.Errorf("kube-scheduler: %w", err)
			}
			cc, sched, err := schedulerapp.Setup(ctx, opts)
			if err != nil {
				return fmt.Errorf("kube-scheduler: %w", err)
			}
			if err := schedulerapp.Run(ctx, cc, sched); err != nil {
				return fmt.Errorf("kube-scheduler: %w", err)
			}
			return nil
		}
	}}
}
