package apiserver

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/proxy"
	translator "k8s.io/apiserver/pkg/util/proxy"
	"k8s.io/kubernetes/pkg/api/legacyscheme"
	"k8s.io/streaming/pkg/httpstream/wsstream"

	"github.com/capstan-net/capstan/control/storage"
)

// DefaultKubeletPort is the agent's port when a Node does not say.
const DefaultKubeletPort = 10250

// NodeProxyConfig wires NewNodeProxy.
type NodeProxyConfig struct {
	// Node reads a Node by name.
	Node func(ctx context.Context, name string) (*corev1.Node, error)
	// TLS reaches the agents: RootCAs holds the cluster CA and
	// Certificates the API server's client certificate (system:masters).
	TLS *tls.Config
	Log *slog.Logger
}

type nodeProxy struct {
	node      func(ctx context.Context, name string) (*corev1.Node, error)
	transport *http.Transport
	log       *slog.Logger
}

// NewNodeProxy returns Config.NodeProxy: it serves pods/log, exec, attach
// and portforward through the agent of the pod's node, as the kube-apiserver
// does through the kubelet. kubectl's WebSocket exec and attach are
// translated to SPDY and its WebSocket port-forward tunnel is unwrapped, so
// the agent only speaks SPDY.
func NewNodeProxy(cfg NodeProxyConfig) func(w http.ResponseWriter, r *http.Request, pod *corev1.Pod, sub string) error {
	tc := cfg.TLS.Clone()
	// Upgraded connections cannot be HTTP/2.
	tc.NextProtos = []string{"http/1.1"}
	p := &nodeProxy{
		node: cfg.Node,
		transport: &http.Transport{
			TLSClientConfig:     tc,
			DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout: 10 * time.Second,
			IdleConnTimeout:     90 * time.Second,
			MaxIdleConnsPerHost: 4,
		},
		log: cfg.Log,
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	return p.serve
}

func (p *nodeProxy) serve(w http.ResponseWriter, r *http.Request, pod *corev1.Pod, sub string) error {
	q := r.URL.Query()
	switch sub {
	case "log":
		opts := &corev1.PodLogOptions{}
		if err := decodeOptions(q, opts); err != nil {
			return err
		}
		if err := validateLogOptions(opts); err != nil {
			return err
		}
		container, err := podContainer(pod, opts.Container)
		if err != nil {
			return err
		}
		loc, err := p.location(r.Context(), pod, "/containerLogs/"+pod.Namespace+"/"+pod.Name+"/"+container, logParams(opts))
		if err != nil {
			return err
		}
		return p.streamLog(w, r, loc)
	case "exec", "attach":
		var (
			params    = url.Values{}
			streams   translator.Options
			container string
		)
		if sub == "exec" {
			opts := &corev1.PodExecOptions{}
			if err := decodeOptions(q, opts); err != nil {
				return err
			}
			if len(opts.Command) == 0 {
				return badRequest("you must specify at least one command for the container")
			}
			for _, c := range opts.Command {
				params.Add("command", c)
			}
			container = opts.Container
			streams = translator.Options{Stdin: opts.Stdin, Stdout: opts.Stdout, Stderr: opts.Stderr, Tty: opts.TTY}
		} else {
			opts := &corev1.PodAttachOptions{}
			if err := decodeOptions(q, opts); err != nil {
				return err
			}
			container = opts.Container
			streams = translator.Options{Stdin: opts.Stdin, Stdout: opts.Stdout, Stderr: opts.Stderr, Tty: opts.TTY}
		}
		if !streams.Stdin && !streams.Stdout && !streams.Stderr {
			return badRequest("you must specify at least 1 of stdin, stdout, stderr")
		}
		if streams.Tty {
			// A terminal has one output stream; the agent drops stderr
			// too, and the translator must not open a stream for it.
			streams.Stderr = false
		}
		// The kubelet's names for the streams (k8s.io/api/core/v1 ExecStdinParam...).
		for _, f := range []struct {
			on   bool
			name string
		}{{streams.Stdin, "input"}, {streams.Stdout, "output"}, {streams.Stderr, "error"}, {streams.Tty, "tty"}} {
			if f.on {
				params.Set(f.name, "1")
			}
		}
		var err error
		if container, err = podContainer(pod, container); err != nil {
			return err
		}
		prefix := "/exec/"
		if sub == "attach" {
			prefix = "/attach/"
		}
		loc, err := p.location(r.Context(), pod, prefix+pod.Namespace+"/"+pod.Name+"/"+container, params)
		if err != nil {
			return err
		}
		hw, err := hijackable(w)
		if err != nil {
			return err
		}
		upgrade := p.upgradeHandler(loc)
		ws := translator.NewStreamTranslatorHandler(loc, p.transport, 0, streams)
		translator.NewTranslatingHandler(upgrade, ws, wsstream.IsWebSocketRequestWithStreamCloseProtocol).ServeHTTP(hw, r)
		return nil
	case "portforward":
		opts := &corev1.PodPortForwardOptions{}
		if err := decodeOptions(q, opts); err != nil {
			return err
		}
		params := url.Values{}
		if len(opts.Ports) > 0 {
			ports := make([]string, len(opts.Ports))
			for i, port := range opts.Ports {
				if port < 1 || port > 65535 {
					return badRequest("port %d is not a valid port number", port)
				}
				ports[i] = strconv.Itoa(int(port))
			}
			params.Set("port", strings.Join(ports, ","))
		}
		loc, err := p.location(r.Context(), pod, "/portForward/"+pod.Namespace+"/"+pod.Name, params)
		if err != nil {
			return err
		}
		hw, err := hijackable(w)
		if err != nil {
			return err
		}
		upgrade := p.upgradeHandler(loc)
		tunnel := translator.NewTunnelingHandler(upgrade)
		translator.NewTranslatingHandler(upgrade, tunnel, wsstream.IsWebSocketRequestWithTunnelingProtocol).ServeHTTP(hw, r)
		return nil
	}
	return notFoundPath(r.URL.Path)
}

func decodeOptions(q url.Values, into runtime.Object) error {
	if err := legacyscheme.ParameterCodec.DecodeParameters(q, corev1.SchemeGroupVersion, into); err != nil {
		return badRequest("invalid options: %v", err)
	}
	return nil
}

func validateLogOptions(o *corev1.PodLogOptions) error {
	switch {
	case o.TailLines != nil && *o.TailLines < 0:
		return badRequest("tailLines must be greater than or equal to 0")
	case o.LimitBytes != nil && *o.LimitBytes < 1:
		return badRequest("limitBytes must be greater than 0")
	case o.SinceSeconds != nil && *o.SinceSeconds < 1:
		return badRequest("sinceSeconds must be greater than 0")
	case o.SinceSeconds != nil && o.SinceTime != nil:
		return badRequest("at most one of sinceTime or sinceSeconds may be specified")
	case o.Stream != nil && *o.Stream != corev1.LogStreamAll && *o.Stream != corev1.LogStreamStdout && *o.Stream != corev1.LogStreamStderr:
		return badRequest("stream must be one of All, Stdout, Stderr")
	}
	return nil
}

// logParams is the agent's query for a log request (the kube-apiserver's
// LogLocation).
func logParams(o *corev1.PodLogOptions) url.Values {
	params := url.Values{}
	if o.Follow {
		params.Set("follow", "true")
	}
	if o.Previous {
		params.Set("previous", "true")
	}
	if o.Timestamps {
		params.Set("timestamps", "true")
	}
	if o.SinceSeconds != nil {
		params.Set("sinceSeconds", strconv.FormatInt(*o.SinceSeconds, 10))
	}
	if o.SinceTime != nil {
		params.Set("sinceTime", o.SinceTime.UTC().Format(time.RFC3339))
	}
	if o.TailLines != nil {
		params.Set("tailLines", strconv.FormatInt(*o.TailLines, 10))
	}
	if o.LimitBytes != nil {
		params.Set("limitBytes", strconv.FormatInt(*o.LimitBytes, 10))
	}
	if o.Stream != nil {
		params.Set("stream", string(*o.Stream))
	}
	return params
}

// podContainer picks the container a request is for: the one named, or
// the pod's only container.
func podContainer(pod *corev1.Pod, name string) (string, error) {
	var names []string
	for _, c := range pod.Spec.InitContainers {
		names = append(names, c.Name)
	}
	for _, c := range pod.Spec.Containers {
		names = append(names, c.Name)
	}
	for _, c := range pod.Spec.EphemeralContainers {
		names = append(names, c.Name)
	}
	if name == "" {
		switch len(pod.Spec.Containers) {
		case 1:
			return pod.Spec.Containers[0].Name, nil
		case 0:
			return "", badRequest("a container name must be specified for pod %s", pod.Name)
		}
		return "", badRequest("a container name must be specified for pod %s, choose one of: %v", pod.Name, names)
	}
	for _, n := range names {
		if n == name {
			return name, nil
		}
	}
	return "", badRequest("container %s is not valid for pod %s, choose one of: %v", name, pod.Name, names)
}

// location is the agent's URL for path on the pod's node.
func (p *nodeProxy) location(ctx context.Context, pod *corev1.Pod, path string, params url.Values) (*url.URL, error) {
	unavailable := func(format string, args ...any) error {
		return statusFor(http.StatusServiceUnavailable, metav1.StatusReasonServiceUnavailable, fmt.Sprintf(format, args...))
	}
	node, err := p.node(ctx, pod.Spec.NodeName)
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) || apierrors.IsNotFound(err) {
			return nil, unavailable("node %q of pod %s does not exist", pod.Spec.NodeName, pod.Name)
		}
		return nil, fmt.Errorf("get node %s: %w", pod.Spec.NodeName, err)
	}
	var ip string
	for _, a := range node.Status.Addresses {
		if a.Type == corev1.NodeInternalIP && a.Address != "" {
			ip = a.Address
			break
		}
	}
	if ip == "" {
		return nil, unavailable("node %q has no InternalIP address to reach its agent", node.Name)
	}
	port := int(node.Status.DaemonEndpoints.KubeletEndpoint.Port)
	if port == 0 {
		port = DefaultKubeletPort
	}
	return &url.URL{
		Scheme:   "https",
		Host:     net.JoinHostPort(ip, strconv.Itoa(port)),
		Path:     path,
		RawQuery: params.Encode(),
	}, nil
}

// streamLog copies the agent's answer to a log request, flushing as it
// arrives so that a follow streams.
func (p *nodeProxy) streamLog(w http.ResponseWriter, r *http.Request, loc *url.URL) error {
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, loc.String(), nil)
	if err != nil {
		return err
	}
	resp, err := p.transport.RoundTrip(req)
	if err != nil {
		return statusFor(http.StatusServiceUnavailable, metav1.StatusReasonServiceUnavailable,
			fmt.Sprintf("cannot reach the agent at %s: %v", loc.Host, err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return agentError(resp)
	}
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	if flusher != nil {
		flusher.Flush()
	}
	buf := make([]byte, 32*1024)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return nil // the client is gone
			}
			if flusher != nil {
				flusher.Flush()
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && r.Context().Err() == nil {
				p.log.Warn("pod log stream from agent ended", "url", loc.String(), "err", err)
			}
			return nil
		}
	}
}

// agentError turns an agent's error answer into a Status: the agent's own
// Status if it sent one, else its text.
func agentError(resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64*1024))
	var st metav1.Status
	if json.Unmarshal(body, &st) == nil && st.Kind == "Status" && st.Code != 0 {
		st.TypeMeta = metav1.TypeMeta{}
		return &apierrors.StatusError{ErrStatus: st}
	}
	msg := strings.TrimSpace(string(body))
	if msg == "" {
		msg = resp.Status
	}
	return statusFor(int32(resp.StatusCode), reasonFor(resp.StatusCode), msg)
}

func reasonFor(code int) metav1.StatusReason {
	switch code {
	case http.StatusBadRequest:
		return metav1.StatusReasonBadRequest
	case http.StatusUnauthorized:
		return metav1.StatusReasonUnauthorized
	case http.StatusForbidden:
		return metav1.StatusReasonForbidden
	case http.StatusNotFound:
		return metav1.StatusReasonNotFound
	case http.StatusServiceUnavailable:
		return metav1.StatusReasonServiceUnavailable
	}
	return metav1.StatusReasonInternalError
}

func (p *nodeProxy) upgradeHandler(loc *url.URL) *proxy.UpgradeAwareHandler {
	return proxy.NewUpgradeAwareHandler(loc, p.transport, false, true, proxyResponder{log: p.log})
}

// proxyResponder answers when an upgrade cannot be proxied: a request
// that is no upgrade, or an agent that cannot be reached.
type proxyResponder struct{ log *slog.Logger }

func (pr proxyResponder) Error(w http.ResponseWriter, r *http.Request, err error) {
	var st metav1.Status
	if apiStatus, ok := err.(apierrors.APIStatus); ok {
		st = apiStatus.Status()
	} else {
		pr.log.Warn("proxy to agent failed", "path", r.URL.Path, "err", err)
		st = statusFor(http.StatusServiceUnavailable, metav1.StatusReasonServiceUnavailable, "cannot reach the agent: "+err.Error()).ErrStatus
	}
	st.TypeMeta = metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}
	writeJSON(w, int(st.Code), &st)
}

// hijackable finds, under the wrappers of the handler chain, the writer
// that can take over the connection for an upgrade. Wrappers show what they
// wrap with Unwrap, as for http.ResponseController; the result keeps the
// outer writer for headers and status.
func hijackable(w http.ResponseWriter) (http.ResponseWriter, error) {
	for inner := w; ; {
		if h, ok := inner.(http.Hijacker); ok {
			if inner == w {
				return w, nil
			}
			return hijackWriter{ResponseWriter: w, hijack: h}, nil
		}
		u, ok := inner.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return nil, statusFor(http.StatusInternalServerError, metav1.StatusReasonInternalError,
				fmt.Sprintf("cannot upgrade the connection: %T does not unwrap to an http.Hijacker", inner))
		}
		inner = u.Unwrap()
	}
}

type hijackWriter struct {
	http.ResponseWriter
	hijack http.Hijacker
}

func (h hijackWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) { return h.hijack.Hijack() }

func (h hijackWriter) Flush() {
	if f, ok := h.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}
