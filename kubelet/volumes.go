package kubelet

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/capstan-net/capstan/internal/atomicfile"
)

// prepareVolumes makes the pod's volumes on disk and returns each volume's
// host path by name. configMap and secret contents are rewritten on every
// call, so updates reach running pods as upstream's do (eventually).
func (k *Kubelet) prepareVolumes(ctx context.Context, pod *corev1.Pod) (map[string]string, error) {
	paths := map[string]string{}
	base := filepath.Join(k.podDir(pod.UID), "volumes")
	for _, v := range pod.Spec.Volumes {
		dir := filepath.Join(base, v.Name)
		switch {
		case v.HostPath != nil:
			if err := ensureHostPath(v.HostPath); err != nil {
				return nil, fmt.Errorf("volume %q: %w", v.Name, err)
			}
			paths[v.Name] = v.HostPath.Path
		case v.EmptyDir != nil:
			if err := os.MkdirAll(dir, 0o777); err != nil {
				return nil, fmt.Errorf("volume %q: %w", v.Name, err)
			}
			os.Chmod(dir, 0o777)
			paths[v.Name] = dir
		case v.ConfigMap != nil:
			cm, err := k.cfg.Client.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, v.ConfigMap.Name, metav1.GetOptions{})
			optional := v.ConfigMap.Optional != nil && *v.ConfigMap.Optional
			data := map[string][]byte{}
			switch {
			case apierrors.IsNotFound(err) && optional:
			case err != nil:
				return nil, fmt.Errorf("volume %q: configmap %q: %w", v.Name, v.ConfigMap.Name, err)
			default:
				for key, val := range cm.Data {
					data[key] = []byte(val)
				}
				for key, val := range cm.BinaryData {
					data[key] = val
				}
			}
			if err := writeKeys(dir, data, v.ConfigMap.Items, v.ConfigMap.DefaultMode, optional); err != nil {
				return nil, fmt.Errorf("volume %q: %w", v.Name, err)
			}
			paths[v.Name] = dir
		case v.Secret != nil:
			s, err := k.cfg.Client.CoreV1().Secrets(pod.Namespace).Get(ctx, v.Secret.SecretName, metav1.GetOptions{})
			optional := v.Secret.Optional != nil && *v.Secret.Optional
			data := map[string][]byte{}
			switch {
			case apierrors.IsNotFound(err) && optional:
			case err != nil:
				return nil, fmt.Errorf("volume %q: secret %q: %w", v.Name, v.Secret.SecretName, err)
			default:
				data = s.Data
			}
			if err := writeKeys(dir, data, v.Secret.Items, v.Secret.DefaultMode, optional); err != nil {
				return nil, fmt.Errorf("volume %q: %w", v.Name, err)
			}
			paths[v.Name] = dir
		default:
			return nil, fmt.Errorf("volume %q: only emptyDir, hostPath, configMap and secret volumes are supported", v.Name)
		}
	}
	return paths, nil
}

func ensureHostPath(hp *corev1.HostPathVolumeSource) error {
	t := corev1.HostPathUnset
	if hp.Type != nil {
		t = *hp.Type
	}
	st, err := os.Stat(hp.Path)
	switch t {
	case corev1.HostPathDirectoryOrCreate:
		if os.IsNotExist(err) {
			return os.MkdirAll(hp.Path, 0o755)
		}
	case corev1.HostPathFileOrCreate:
		if os.IsNotExist(err) {
			if err := os.MkdirAll(filepath.Dir(hp.Path), 0o755); err != nil {
				return err
			}
			f, err := os.OpenFile(hp.Path, os.O_CREATE|os.O_RDONLY, 0o644)
			if err != nil {
				return err
			}
			return f.Close()
		}
	case corev1.HostPathDirectory:
		if err != nil || !st.IsDir() {
			return fmt.Errorf("hostPath %s is not a directory", hp.Path)
		}
	case corev1.HostPathFile:
		if err != nil || !st.Mode().IsRegular() {
			return fmt.Errorf("hostPath %s is not a file", hp.Path)
		}
	case corev1.HostPathSocket:
		if err != nil || st.Mode()&os.ModeSocket == 0 {
			return fmt.Errorf("hostPath %s is not a socket", hp.Path)
		}
	}
	return nil
}

// writeKeys writes a configMap's or secret's keys as files in dir.
func writeKeys(dir string, data map[string][]byte, items []corev1.KeyToPath, defaultMode *int32, optional bool) error {
	mode := os.FileMode(0o644)
	if defaultMode != nil {
		mode = os.FileMode(*defaultMode)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	want := map[string]bool{}
	write := func(rel string, val []byte, m os.FileMode) error {
		if strings.Contains(rel, "..") || filepath.IsAbs(rel) {
			return fmt.Errorf("path %q must be relative and may not contain '..'", rel)
		}
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		want[rel] = true
		if old, err := os.ReadFile(p); err == nil && string(old) == string(val) {
			return os.Chmod(p, m)
		}
		return atomicfile.Write(p, val, m)
	}
	if len(items) == 0 {
		for key, val := range data {
			if err := write(key, val, mode); err != nil {
				return err
			}
		}
	} else {
		for _, it := range items {
			val, ok := data[it.Key]
			if !ok {
				if optional {
					continue
				}
				return fmt.Errorf("key %q not found", it.Key)
			}
			m := mode
			if it.Mode != nil {
				m = os.FileMode(*it.Mode)
			}
			if err := write(it.Path, val, m); err != nil {
				return err
			}
		}
	}
	// Keys removed from the source disappear from the volume.
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		if !want[rel] {
			os.Remove(p)
		}
		return nil
	})
	return nil
}
