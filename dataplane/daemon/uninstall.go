package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/capstan-net/capstan/cni"
	"github.com/capstan-net/capstan/dataplane/iptables"
)

// ownerWatch follows the DaemonSet running the daemon, so that on the way
// out the daemon knows whether it is being replaced (a rolling update, a
// restart: keep everything, connections carry on) or removed (helm
// uninstall, kubectl delete: leave nothing on the node).
type ownerWatch struct {
	cs       kubernetes.Interface
	ns, name string
	removed  atomic.Bool
}

func watchOwner(ctx context.Context, cs kubernetes.Interface, daemonSet string, log *slog.Logger) *ownerWatch {
	ns, name, _ := strings.Cut(daemonSet, "/")
	w := &ownerWatch{cs: cs, ns: ns, name: name}
	lw := cache.NewListWatchFromClient(cs.AppsV1().RESTClient(), "daemonsets", ns, fields.OneTermEqualSelector("metadata.name", name))
	_, inf := cache.NewInformerWithOptions(cache.InformerOptions{
		ListerWatcher: lw, ObjectType: &appsv1.DaemonSet{},
		Handler: cache.ResourceEventHandlerFuncs{
			AddFunc: func(obj any) { w.observe(obj) },
			UpdateFunc: func(_, obj any) {
				w.observe(obj)
			},
			DeleteFunc: func(any) {
				w.removed.Store(true)
				log.Info("the DaemonSet running this daemon was deleted: the node will be cleaned on exit", "daemonset", daemonSet)
			},
		},
	})
	go inf.Run(ctx.Done())
	return w
}

func (w *ownerWatch) observe(obj any) {
	if ds, ok := obj.(*appsv1.DaemonSet); ok && ds.DeletionTimestamp != nil {
		w.removed.Store(true)
	}
}

// Removed reports whether the DaemonSet is gone or going. The watch's
// answer counts first; else the API is asked. An API that refuses the
// daemon's own credentials (its ServiceAccount or binding deleted, which
// uninstalling does) counts as removed; an API that cannot be reached
// does not: a daemon that cannot tell keeps the node's state.
func (w *ownerWatch) Removed() bool {
	if w.removed.Load() {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ds, err := w.cs.AppsV1().DaemonSets(w.ns).Get(ctx, w.name, metav1.GetOptions{})
	switch {
	case err == nil:
		return ds.DeletionTimestamp != nil
	case apierrors.IsNotFound(err), apierrors.IsUnauthorized(err), apierrors.IsForbidden(err):
		return true
	default:
		return false
	}
}

// Uninstall removes what the daemon installed on the node: its BPF pins
// (and so its programs' attachments and maps), its routes, the VXLAN
// device, its iptables chains, the CNI configuration and plugins, and its
// pod records. It is for a node leaving Capstan: pods still running there
// lose their network.
func Uninstall(ctx context.Context, cfg Config) error {
	if err := cfg.setDefaults(); err != nil {
		return err
	}
	var errs []error
	if cfg.CNI.ConfDir != "" {
		errs = append(errs, removeIfExists(filepath.Join(cfg.CNI.ConfDir, cni.ConfListName)))
	}
	if cfg.CNI.BinDir != "" {
		errs = append(errs, removeIfExists(filepath.Join(cfg.CNI.BinDir, cni.PluginType)))
		if strings.HasPrefix(cfg.CNI.Portmap, "capstan-") {
			errs = append(errs, removeIfExists(filepath.Join(cfg.CNI.BinDir, cfg.CNI.Portmap)))
		}
	}
	// Unpinning the links detaches the programs; the maps go with their
	// last reference.
	errs = append(errs, os.RemoveAll(cfg.PinDir))
	os.Remove(filepath.Dir(cfg.PinDir)) // the pin root, if no other node uses it
	errs = append(errs, inNetns(cfg.Netns, removeNetworking))
	iptCfg := iptables.Config{Netns: cfg.Netns, Logger: cfg.Logger}
	if err := iptables.Cleanup(ctx, iptCfg); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, d := range []string{cfg.EndpointsDir, cfg.CNI.IPAMDir} {
		if d != "" {
			errs = append(errs, os.RemoveAll(d))
		}
	}
	return errors.Join(errs...)
}

// removeNetworking deletes the daemon's routes and VXLAN device from the
// current network namespace.
func removeNetworking() error {
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: routeProtocol}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if err := netlink.RouteDel(&r); err != nil {
			return fmt.Errorf("delete route %s: %w", r.Dst, err)
		}
	}
	if l, err := netlink.LinkByName(vxlanDevice); err == nil {
		if err := netlink.LinkDel(l); err != nil {
			return fmt.Errorf("delete %s: %w", vxlanDevice, err)
		}
	}
	return nil
}

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// uninstallAfter runs Uninstall once Run has closed its handles, with a
// context of its own: Run's has ended.
func uninstallAfter(cfg Config, log *slog.Logger) error {
	log.Info("the DaemonSet running this daemon is gone: removing everything it installed on the node")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := Uninstall(ctx, cfg); err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	log.Info("node cleaned")
	return nil
}
