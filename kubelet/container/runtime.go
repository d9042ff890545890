// Package container runs a node's containers on containerd through its Go
// client: images, containers with their tasks, exit bookkeeping and exec.
// It knows nothing about pods beyond the labels it stores; the pod sync
// loop in package kubelet decides what should run.
package container

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"syscall"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/opencontainers/runtime-spec/specs-go"
)

// Labels stored on every container this package creates. They are the only
// record of a container's pod and exit, so they survive agent restarts.
const (
	LabelPodUID       = "io.capstan.pod.uid"
	LabelPodName      = "io.capstan.pod.name"
	LabelPodNamespace = "io.capstan.pod.namespace"
	LabelContainer    = "io.capstan.container.name"
	LabelAttempt      = "io.capstan.container.attempt"
	LabelInit         = "io.capstan.container.init"
	LabelLogPath      = "io.capstan.container.log"
	LabelImage        = "io.capstan.container.image"
	LabelImageDigest  = "io.capstan.container.image-digest"
	LabelCreated      = "io.capstan.container.created"
	LabelStarted      = "io.capstan.container.started"
	LabelFinished     = "io.capstan.container.finished"
	LabelExitCode     = "io.capstan.container.exit-code"
	LabelReason       = "io.capstan.container.reason"
	LabelSpecHash     = "io.capstan.container.spec-hash"
)

// State is where a container is in its life.
type State string

const (
	StateCreated State = "created"
	StateRunning State = "running"
	StateExited  State = "exited"
)

// Info describes one container, from its labels and task.
type Info struct {
	ID           string
	Labels       map[string]string
	State        State
	Attempt      int
	Created      time.Time
	Started      time.Time
	Finished     time.Time
	ExitCode     int
	Reason       string // OOMKilled, Completed, Error
	ImageRef     string
	ImageID      string
	LogPath      string
	PodUID       string
	ContainerKey string // container name within the pod
}

// Config configures a Runtime.
type Config struct {
	Client      *client.Client
	Namespace   string // containerd namespace for this node
	Snapshotter string // default overlayfs
	// LogIO returns the IO for a container whose output goes to logPath.
	LogIO func(logPath string) cio.Creator
	// OnExit is called (from a goroutine) when a container's task exits.
	OnExit func(info Info)
	Log    *slog.Logger
}

// Runtime is one node's view of containerd.
type Runtime struct {
	cfg Config

	mu  sync.Mutex
	oom map[string]bool // container IDs whose task saw an OOM kill
	// waiting holds the IDs whose exit is watched, so adoption never
	// watches a task twice.
	waiting map[string]bool
	// life is Run's context: waits broken off while it lives are resumed.
	life context.Context
}

// New returns a Runtime; call Run to follow containerd's OOM events.
func New(cfg Config) *Runtime {
	if cfg.Snapshotter == "" {
		cfg.Snapshotter = "overlayfs"
	}
	return &Runtime{cfg: cfg, oom: map[string]bool{}, waiting: map[string]bool{}}
}

// Namespace returns the containerd namespace of this node.
func (r *Runtime) Namespace() string { return r.cfg.Namespace }

func (r *Runtime) ctx(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, r.cfg.Namespace)
}

// Run follows task OOM events until ctx ends.
func (r *Runtime) Run(ctx context.Context) {
	r.mu.Lock()
	r.life = ctx
	r.mu.Unlock()
	for ctx.Err() == nil {
		evs, errs := r.cfg.Client.Subscribe(r.ctx(ctx), `topic=="/tasks/oom",namespace==`+strconv.Quote(r.cfg.Namespace))
	loop:
		for {
			select {
			case <-ctx.Done():
				return
			case err := <-errs:
				if ctx.Err() == nil {
					r.cfg.Log.Warn("containerd events", "err", err)
				}
				break loop
			case e := <-evs:
				v, err := typeurl.UnmarshalAny(e.Event)
				if err != nil {
					continue
				}
				if oom, ok := v.(*apievents.TaskOOM); ok {
					r.mu.Lock()
					r.oom[oom.ContainerID] = true
					r.mu.Unlock()
				}
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// PullError marks a failure to get an image (ErrImagePull in pod status).
type PullError struct {
	Ref string
	Err error
}

func (e *PullError) Error() string {
	return fmt.Sprintf("failed to pull image %q: %v", e.Ref, e.Err)
}
func (e *PullError) Unwrap() error { return e.Err }

// ErrImageNeverPull is returned for a missing image under PullNever.
var ErrImageNeverPull = errors.New("container: image not present with pull policy Never")

// EnsureImage returns the image, pulling it when the policy asks for that.
func (r *Runtime) EnsureImage(ctx context.Context, ref string, always, never bool) (client.Image, error) {
	ctx = r.ctx(ctx)
	img, err := r.cfg.Client.GetImage(ctx, ref)
	if err == nil && !always {
		return img, r.unpack(ctx, img)
	}
	if err != nil && !errdefs.IsNotFound(err) {
		return nil, fmt.Errorf("get image %s: %w", ref, err)
	}
	if never {
		return nil, fmt.Errorf("%w: %s", ErrImageNeverPull, ref)
	}
	pulled, perr := r.cfg.Client.Pull(ctx, ref, client.WithPullUnpack, client.WithPullSnapshotter(r.cfg.Snapshotter))
	if perr != nil {
		return nil, &PullError{Ref: ref, Err: perr}
	}
	return pulled, nil
}

func (r *Runtime) unpack(ctx context.Context, img client.Image) error {
	ok, err := img.IsUnpacked(ctx, r.cfg.Snapshotter)
	if err != nil || ok {
		return err
	}
	if err := img.Unpack(ctx, r.cfg.Snapshotter); err != nil {
		return fmt.Errorf("unpack %s: %w", img.Name(), err)
	}
	return nil
}

// Create makes a container (not yet started) from img with the given spec
// options and labels.
func (r *Runtime) Create(ctx context.Context, id string, img client.Image, labels map[string]string, opts []oci.SpecOpts) error {
	ctx = r.ctx(ctx)
	labels[LabelCreated] = time.Now().UTC().Format(time.RFC3339Nano)
	labels[LabelImage] = img.Name()
	labels[LabelImageDigest] = img.Target().Digest.String()
	specOpts := append([]oci.SpecOpts{oci.WithImageConfig(img)}, opts...)
	_, err := r.cfg.Client.NewContainer(ctx, id,
		client.WithImage(img),
		client.WithSnapshotter(r.cfg.Snapshotter),
		client.WithNewSnapshot(id, img),
		client.WithNewSpec(specOpts...),
		client.WithContainerLabels(labels),
	)
	if err != nil {
		return fmt.Errorf("create container %s: %w", id, err)
	}
	return nil
}

// Start starts the container's task with its output going to the log file
// named in its labels, and watches for its exit.
func (r *Runtime) Start(ctx context.Context, id string) error {
	ctx = r.ctx(ctx)
	c, err := r.cfg.Client.LoadContainer(ctx, id)
	if err != nil {
		return fmt.Errorf("load container %s: %w", id, err)
	}
	labels, err := c.Labels(ctx)
	if err != nil {
		return fmt.Errorf("labels of %s: %w", id, err)
	}
	io := cio.NullIO
	if r.cfg.LogIO != nil && labels[LabelLogPath] != "" {
		io = r.cfg.LogIO(labels[LabelLogPath])
	}
	task, err := c.NewTask(ctx, io)
	if err != nil {
		r.recordExit(ctx, c, 128, "StartError: "+err.Error(), time.Now())
		return fmt.Errorf("create task %s: %w", id, err)
	}
	exitc, err := task.Wait(ctx)
	if err != nil {
		task.Delete(ctx, client.WithProcessKill)
		return fmt.Errorf("wait task %s: %w", id, err)
	}
	if err := task.Start(ctx); err != nil {
		task.Delete(ctx, client.WithProcessKill)
		r.recordExit(ctx, c, 128, "StartError: "+err.Error(), time.Now())
		return fmt.Errorf("start task %s: %w", id, err)
	}
	if _, err := c.SetLabels(ctx, map[string]string{LabelStarted: time.Now().UTC().Format(time.RFC3339Nano)}); err != nil {
		r.cfg.Log.Warn("label started", "container", id, "err", err)
	}
	r.watch(c, task, exitc)
	return nil
}

// watch waits for the task to exit in the background, then records the
// exit on the container's labels and deletes the task.
func (r *Runtime) watch(c client.Container, task client.Task, exitc <-chan client.ExitStatus) {
	r.mu.Lock()
	if r.waiting[c.ID()] {
		r.mu.Unlock()
		return
	}
	r.waiting[c.ID()] = true
	r.mu.Unlock()
	go func() {
		st := <-exitc
		ctx := r.ctx(context.Background())
		code, _, err := st.Result()
		if err != nil {
			// The wait broke off (the agent is stopping, a worker's context
			// ended, containerd went away): that is no exit. Recording one
			// would make the next agent think a running container died.
			r.mu.Lock()
			delete(r.waiting, c.ID())
			life := r.life
			r.mu.Unlock()
			if life == nil || life.Err() != nil || errdefs.IsNotFound(err) {
				return // a restarted agent adopts the task; a removed one is gone
			}
			select {
			case <-life.Done():
				return
			case <-time.After(time.Second):
			}
			exitc, err := task.Wait(r.ctx(life))
			if err != nil {
				r.cfg.Log.Warn("wait task again", "container", c.ID(), "err", err)
				return
			}
			r.watch(c, task, exitc)
			return
		}
		at := st.ExitTime()
		if at.IsZero() {
			at = time.Now()
		}
		r.mu.Lock()
		oom := r.oom[c.ID()]
		delete(r.oom, c.ID())
		delete(r.waiting, c.ID())
		r.mu.Unlock()
		reason := "Completed"
		switch {
		case oom:
			reason = "OOMKilled"
		case code != 0:
			reason = "Error"
		}
		r.recordExit(ctx, c, int(code), reason, at)
		if _, err := task.Delete(ctx); err != nil && !errdefs.IsNotFound(err) {
			r.cfg.Log.Warn("delete exited task", "container", c.ID(), "err", err)
		}
		if r.cfg.OnExit != nil {
			if info, err := r.Inspect(context.Background(), c.ID()); err == nil {
				r.cfg.OnExit(info)
			}
		}
	}()
}

func (r *Runtime) recordExit(ctx context.Context, c client.Container, code int, reason string, at time.Time) {
	_, err := c.SetLabels(ctx, map[string]string{
		LabelExitCode: strconv.Itoa(code),
		LabelReason:   reason,
		LabelFinished: at.UTC().Format(time.RFC3339Nano),
	})
	if err != nil && !errdefs.IsNotFound(err) {
		r.cfg.Log.Warn("record exit", "container", c.ID(), "err", err)
	}
}

// Adopt takes over the containers a previous agent left: running tasks
// are watched again (not restarted); tasks that stopped meanwhile get
// their exit recorded.
func (r *Runtime) Adopt(ctx context.Context) error {
	ctx = r.ctx(ctx)
	cs, err := r.cfg.Client.Containers(ctx)
	if err != nil {
		return fmt.Errorf("list containers: %w", err)
	}
	for _, c := range cs {
		task, err := c.Task(ctx, cio.Load)
		if errdefs.IsNotFound(err) {
			continue
		}
		if err != nil {
			// Stdio of the old task cannot be reattached (binary logging
			// needs none); load without IO then.
			task, err = c.Task(ctx, nil)
			if err != nil {
				r.cfg.Log.Warn("adopt task", "container", c.ID(), "err", err)
				continue
			}
		}
		exitc, err := task.Wait(ctx)
		if err != nil {
			r.cfg.Log.Warn("adopt wait", "container", c.ID(), "err", err)
			continue
		}
		r.watch(c, task, exitc)
	}
	return nil
}

// List returns the node's containers.
func (r *Runtime) List(ctx context.Context) ([]Info, error) {
	return r.list(ctx)
}

// ListPod returns the containers of one pod, filtered by containerd.
func (r *Runtime) ListPod(ctx context.Context, podUID string) ([]Info, error) {
	return r.list(ctx, fmt.Sprintf(`labels.%q==%q`, LabelPodUID, podUID))
}

func (r *Runtime) list(ctx context.Context, filters ...string) ([]Info, error) {
	ctx = r.ctx(ctx)
	cs, err := r.cfg.Client.Containers(ctx, filters...)
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	out := make([]Info, 0, len(cs))
	for _, c := range cs {
		info, err := r.info(ctx, c)
		if errdefs.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, info)
	}
	return out, nil
}

// Inspect returns one container.
func (r *Runtime) Inspect(ctx context.Context, id string) (Info, error) {
	ctx = r.ctx(ctx)
	c, err := r.cfg.Client.LoadContainer(ctx, id)
	if err != nil {
		return Info{}, err
	}
	return r.info(ctx, c)
}

func (r *Runtime) info(ctx context.Context, c client.Container) (Info, error) {
	ci, err := c.Info(ctx, client.WithoutRefreshedMetadata)
	if err != nil {
		return Info{}, err
	}
	return r.describe(ctx, c, ci), nil
}

func (r *Runtime) describe(ctx context.Context, c client.Container, ci containers.Container) Info {
	l := ci.Labels
	info := Info{
		ID:           ci.ID,
		Labels:       l,
		State:        StateCreated,
		ImageRef:     l[LabelImage],
		LogPath:      l[LabelLogPath],
		PodUID:       l[LabelPodUID],
		ContainerKey: l[LabelContainer],
		Reason:       l[LabelReason],
	}
	info.Attempt, _ = strconv.Atoi(l[LabelAttempt])
	info.Created = parseTime(l[LabelCreated])
	info.Started = parseTime(l[LabelStarted])
	info.Finished = parseTime(l[LabelFinished])
	info.ImageID = l[LabelImageDigest]
	if v, ok := l[LabelExitCode]; ok {
		info.State = StateExited
		info.ExitCode, _ = strconv.Atoi(v)
		return info
	}
	if !info.Started.IsZero() {
		info.State = StateRunning
	}
	return info
}

func parseTime(s string) time.Time {
	t, _ := time.Parse(time.RFC3339Nano, s)
	return t
}

// Stop signals the container's task with SIGTERM (or the image's stop
// signal), waits up to grace, then kills it. A container without a task
// is already stopped.
func (r *Runtime) Stop(ctx context.Context, id string, grace time.Duration) error {
	ctx = r.ctx(ctx)
	c, err := r.cfg.Client.LoadContainer(ctx, id)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	task, err := c.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("task of %s: %w", id, err)
	}
	exitc, err := task.Wait(ctx)
	if err != nil {
		return fmt.Errorf("wait %s: %w", id, err)
	}
	sig := syscall.SIGTERM
	if s, err := client.GetStopSignal(ctx, c, syscall.SIGTERM); err == nil {
		sig = s
	}
	if grace > 0 {
		if err := task.Kill(ctx, sig); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("signal %s: %w", id, err)
		}
		select {
		case <-exitc:
			return nil
		case <-time.After(grace):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := task.Kill(ctx, syscall.SIGKILL, client.WithKillAll); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("kill %s: %w", id, err)
	}
	select {
	case <-exitc:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("container %s did not exit after SIGKILL", id)
	}
}

// Remove stops (without grace) and deletes a container and its snapshot.
func (r *Runtime) Remove(ctx context.Context, id string) error {
	if err := r.Stop(ctx, id, 0); err != nil {
		return err
	}
	ctx = r.ctx(ctx)
	c, err := r.cfg.Client.LoadContainer(ctx, id)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if task, err := c.Task(ctx, nil); err == nil {
		if _, err := task.Delete(ctx, client.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("delete task %s: %w", id, err)
		}
	}
	if err := c.Delete(ctx, client.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete container %s: %w", id, err)
	}
	return nil
}

// TerminalSize is a terminal's size in characters.
type TerminalSize struct{ Width, Height uint16 }

// Exec runs cmd in the running container id and returns its exit code.
func (r *Runtime) Exec(ctx context.Context, id string, cmd []string, tty bool, stdin io.Reader, stdout, stderr io.Writer, resize <-chan TerminalSize) (int, error) {
	ctx = r.ctx(ctx)
	c, err := r.cfg.Client.LoadContainer(ctx, id)
	if err != nil {
		return -1, fmt.Errorf("load container %s: %w", id, err)
	}
	task, err := c.Task(ctx, nil)
	if err != nil {
		return -1, fmt.Errorf("container %s is not running: %w", id, err)
	}
	spec, err := c.Spec(ctx)
	if err != nil {
		return -1, fmt.Errorf("spec of %s: %w", id, err)
	}
	proc := *spec.Process
	proc.Args = cmd
	proc.Terminal = tty
	proc.ConsoleSize = nil
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	// The process's stdin closes only when the shim is told to: do that
	// once the caller's stdin has ended and been copied (as containerd's
	// CRI exec does).
	var stdinDone chan struct{}
	if stdin != nil {
		stdinDone = make(chan struct{})
		stdin = &eofNotifier{r: stdin, done: stdinDone}
	}
	opts := []cio.Opt{cio.WithStreams(stdin, stdout, stderr)}
	if tty {
		opts = append(opts, cio.WithTerminal)
	}
	execID := fmt.Sprintf("exec-%d", time.Now().UnixNano())
	p, err := task.Exec(ctx, execID, &proc, cio.NewCreator(opts...))
	if err != nil {
		return -1, fmt.Errorf("exec in %s: %w", id, err)
	}
	defer p.Delete(context.WithoutCancel(ctx), client.WithProcessKill)
	exitc, err := p.Wait(ctx)
	if err != nil {
		return -1, fmt.Errorf("wait exec: %w", err)
	}
	if err := p.Start(ctx); err != nil {
		return -1, fmt.Errorf("start exec: %w", err)
	}
	if stdin == nil {
		p.CloseIO(ctx, client.WithStdinCloser)
	} else {
		go func() {
			select {
			case <-stdinDone:
				p.CloseIO(ctx, client.WithStdinCloser)
			case <-ctx.Done():
			}
		}()
	}
	for {
		select {
		case sz, ok := <-resize:
			if !ok {
				resize = nil
				continue
			}
			p.Resize(ctx, uint32(sz.Width), uint32(sz.Height))
		case st := <-exitc:
			code, _, err := st.Result()
			// Let the copy of the last output finish before returning.
			if pio := p.IO(); pio != nil {
				pio.Wait()
			}
			return int(code), err
		case <-ctx.Done():
			p.Kill(context.WithoutCancel(ctx), syscall.SIGKILL)
			return -1, ctx.Err()
		}
	}
}

// Pid returns the host pid of the container's init process.
func (r *Runtime) Pid(ctx context.Context, id string) (uint32, error) {
	ctx = r.ctx(ctx)
	c, err := r.cfg.Client.LoadContainer(ctx, id)
	if err != nil {
		return 0, err
	}
	task, err := c.Task(ctx, nil)
	if err != nil {
		return 0, err
	}
	return task.Pid(), nil
}

// NetworkNamespace is an oci option placing the container in the network
// namespace pinned at path.
func NetworkNamespace(path string) oci.SpecOpts {
	return oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: path})
}

// ImageSpec returns an image's OCI config (entrypoint, cmd, env, user).
func (r *Runtime) ImageSpec(ctx context.Context, img client.Image) (ocispec.Image, error) {
	return img.Spec(r.ctx(ctx))
}

// eofNotifier closes done when its reader reaches the end (or fails).
type eofNotifier struct {
	r    io.Reader
	done chan struct{}
	once sync.Once
}

func (e *eofNotifier) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil {
		e.once.Do(func() { close(e.done) })
	}
	return n, err
}
