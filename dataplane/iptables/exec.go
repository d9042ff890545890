package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
)

// commands runs the iptables binaries, inside Config.Netns when it is set. nsenter enters the
// namespace for the child alone, so the caller's threads never change namespace.
type commands struct {
	netns                            string
	nsenter, restore, save, iptables string
}

func newCommands(cfg Config) commands {
	def := func(s, d string) string {
		if s == "" {
			return d
		}
		return s
	}
	return commands{
		netns:    cfg.Netns,
		nsenter:  def(cfg.Nsenter, "nsenter"),
		restore:  def(cfg.IptablesRestore, "iptables-restore"),
		save:     def(cfg.IptablesSave, "iptables-save"),
		iptables: def(cfg.Iptables, "iptables"),
	}
}

// exitError is a command that ran and failed, with what it said.
type exitError struct {
	cmd    string
	code   int
	stderr string
}

func (e *exitError) Error() string {
	// One line for logs; the usage hint iptables adds to every error says nothing.
	var lines []string
	for l := range strings.SplitSeq(e.stderr, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "Try `") {
			lines = append(lines, l)
		}
	}
	msg := strings.Join(lines, "; ")
	if msg == "" {
		msg = "no output"
	}
	return fmt.Sprintf("%s: exit status %d: %s", e.cmd, e.code, msg)
}

// run runs bin with args and stdin, returning stdout. A failure is an *exitError when the
// command ran and failed.
func (c commands) run(ctx context.Context, stdin []byte, bin string, args ...string) ([]byte, error) {
	var stdout bytes.Buffer
	err := c.runTo(ctx, stdin, &stdout, bin, args...)
	return stdout.Bytes(), err
}

// runTo is run with stdout going to w.
func (c commands) runTo(ctx context.Context, stdin []byte, w io.Writer, bin string, args ...string) error {
	argv := append([]string{bin}, args...)
	if c.netns != "" {
		argv = append([]string{c.nsenter, "--net=" + c.netns, "--"}, argv...)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = w, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ctx.Err() == nil {
		return &exitError{cmd: strings.Join(argv, " "), code: ee.ExitCode(), stderr: stderr.String()}
	}
	if err != nil {
		return fmt.Errorf("%s: %w", strings.Join(argv, " "), err)
	}
	return nil
}

// restoreInput feeds a ruleset to iptables-restore. --noflush leaves alone every chain the
// input does not declare (the built-in ones, other programs' chains); -w waits for the
// xtables lock rather than failing when another program holds it.
func (c commands) restoreInput(ctx context.Context, input []byte) error {
	// stdout is the listing each table section starts with (see table.writeTo).
	if err := c.runTo(ctx, input, io.Discard, c.restore, "-w", "--noflush"); err != nil {
		return restoreError(input, err)
	}
	return nil
}

// saveTable returns iptables-save's dump of one table.
func (c commands) saveTable(ctx context.Context, table string) ([]byte, error) {
	return c.run(ctx, nil, c.save, "-t", table)
}

// check asks iptables whether a rule exists: found is false when iptables exits 1 ("no such
// rule"); any other failure is an error.
func (c commands) check(ctx context.Context, table, chain, spec string) (found bool, err error) {
	args := append([]string{"-w", "-t", table, "-C", chain}, splitSpec(spec)...)
	_, err = c.run(ctx, nil, c.iptables, args...)
	var ee *exitError
	if errors.As(err, &ee) && ee.code == 1 {
		return false, nil
	}
	return err == nil, err
}

// insert puts a rule first in chain.
func (c commands) insert(ctx context.Context, table, chain, spec string) error {
	args := append([]string{"-w", "-t", table, "-I", chain}, splitSpec(spec)...)
	_, err := c.run(ctx, nil, c.iptables, args...)
	return err
}

// restoreLine finds the input line iptables-restore blames: "line 12: ..." from the nf_tables
// backend's commit, or "Error occurred at line: 12" from its parser.
var restoreLine = regexp.MustCompile(`(?:\bline:? )(\d+)`)

// restoreError names the failed input line next to iptables-restore's own message, since the
// line number alone means nothing to whoever reads the log.
func restoreError(input []byte, err error) error {
	var ee *exitError
	if !errors.As(err, &ee) {
		return fmt.Errorf("iptables-restore: %w", err)
	}
	m := restoreLine.FindStringSubmatch(ee.stderr)
	if m == nil {
		return fmt.Errorf("iptables-restore: %w", err)
	}
	n, _ := strconv.Atoi(m[1])
	lines := bytes.Split(input, []byte("\n"))
	if n < 1 || n > len(lines) {
		return fmt.Errorf("iptables-restore: %w", err)
	}
	return fmt.Errorf("iptables-restore: input line %d %q: %w", n, lines[n-1], err)
}

// splitSpec splits a rule spec into arguments, keeping a double-quoted part (a comment) as one
// argument without its quotes, as a shell would.
func splitSpec(spec string) []string {
	var (
		out    []string
		cur    strings.Builder
		quoted bool
		inArg  bool
	)
	for _, r := range spec {
		switch {
		case r == '"':
			quoted = !quoted
			inArg = true
		case r == ' ' && !quoted:
			if inArg {
				out = append(out, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteRune(r)
			inArg = true
		}
	}
	if inArg {
		out = append(out, cur.String())
	}
	return out
}
