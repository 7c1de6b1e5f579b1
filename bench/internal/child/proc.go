package child

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// Proc is a long-running child (godwit, Caddy, a backend, a test app):
// started by Start, tracked for KillAll, its output in a log file, and
// reaped by a goroutine of its own, so that waiting for it can also watch a
// timeout or a context. Its methods may be called from any goroutine.
type Proc struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{} // closed once the process has exited and is reaped
}

// tailLines is how much of a log an error quotes.
const tailLines = 15

// Start starts c, made by Command (the caller may set its Env), as the
// child called name in errors. Its stdout and stderr are appended to
// logPath, so that a restarted child keeps one log ("": discarded). When
// onLine is not nil it is called with each line of stderr, in order, from
// the goroutine that reads them: it may run after Start returns, and must
// not block.
func Start(c *exec.Cmd, name, logPath string, onLine func(line string)) (*Proc, error) {
	p := &Proc{name: name, logPath: logPath, cmd: c, done: make(chan struct{})}
	var lf *os.File
	if logPath != "" {
		var err error
		if lf, err = os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err != nil {
			return nil, err
		}
		c.Stdout = lf
	}
	var stderr io.ReadCloser
	if lf != nil || onLine != nil {
		var err error
		if stderr, err = c.StderrPipe(); err != nil {
			closeFile(lf)
			return nil, err
		}
	}
	if err := c.Start(); err != nil {
		closeFile(lf)
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	Track(c)
	go func() {
		defer close(p.done)
		defer closeFile(lf)
		if stderr != nil {
			sc := bufio.NewScanner(stderr)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				line := sc.Text()
				if lf != nil {
					lf.WriteString(line + "\n")
				}
				if onLine != nil {
					onLine(line)
				}
			}
			io.Copy(io.Discard, stderr) // a line over 1 MiB: keep the child unblocked
		}
		c.Wait()
		Untrack(c)
	}()
	return p, nil
}

func closeFile(f *os.File) {
	if f != nil {
		f.Close()
	}
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Exited reports whether the process has exited and is reaped.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Signal sends sig to the process (SIGSTOP and SIGCONT suspend and resume
// it).
func (p *Proc) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Stop ends the process gently: SIGCONT (a suspended process cannot act on
// what follows), SIGTERM, and SIGKILL if it still runs after grace. It
// returns once the process is reaped; on a nil or ended Proc it does
// nothing.
func (p *Proc) Stop(grace time.Duration) {
	if p == nil || p.Exited() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGCONT)
	p.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		p.Kill()
	}
}

// Kill SIGKILLs the process (a failure, or the end of a bench) and returns
// once it is reaped; on a nil or ended Proc it does nothing.
func (p *Proc) Kill() {
	if p == nil {
		return
	}
	p.cmd.Process.Kill()
	<-p.done
}

// Died describes an exit that nobody asked for, with the end of the log.
func (p *Proc) Died() error {
	return fmt.Errorf("%s exited%s", p.name, p.logTail())
}

// logTail is the end of the log for an error: "; its log (PATH):\nLINES".
func (p *Proc) logTail() string {
	if p.logPath == "" {
		return " (no log)"
	}
	return fmt.Sprintf("; its log (%s):\n%s", p.logPath, tail(p.logPath, tailLines))
}

// Await waits until up is closed (the caller closes it, from onLine for
// example, when the child says it is ready), and returns nil. If the child
// exits first, the error quotes its log; if timeout passes or ctx ends
// first, Await kills the child and returns why.
func (p *Proc) Await(ctx context.Context, up <-chan struct{}, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-up:
		return nil
	case <-p.done:
		return fmt.Errorf("%s exited before it was up%s", p.name, p.logTail())
	case <-t.C:
		p.Kill()
		return fmt.Errorf("%s not up within %v%s", p.name, timeout, p.logTail())
	case <-ctx.Done():
		p.Kill()
		return ctx.Err()
	}
}

// WaitTCP polls addr every 10 ms until it accepts a TCP connection: for a
// child that logs nothing when it is ready. An error when the child exits,
// timeout passes or ctx ends first; the child is left running.
func (p *Proc) WaitTCP(ctx context.Context, addr string, timeout time.Duration) error {
	end := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if p.Exited() {
			return p.Died()
		}
		if time.Now().After(end) {
			return fmt.Errorf("%s not accepting on %s within %v: %w%s", p.name, addr, timeout, err, p.logTail())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}
