//go:build unix

package autostart

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Exec is the driver of machines that are local processes (driver.kind
// "exec"). A machine runs Spec.Command in a process group of its own, so a
// shell wrapper's children go with it, with godwit's environment plus
// FLY_REGION, FLY_MACHINE_ID, FLY_APP_NAME, PRIMARY_REGION, PORT (the port
// of Spec.Addr) and Spec.Env. Its output goes to ExecOptions.Output.
//
// Stop sends Spec.KillSignal to the group and, if the machine is still
// there after Spec.KillTimeout, SIGKILL; Suspend sends SIGSTOP and Start
// then SIGCONT. A machine is gone when its process has exited and nothing
// of its group holds its output any more. A process that exits on its own
// takes the rest of its group with it (SIGKILL) and is reported on Exits.
//
// Exec owns the processes and the goroutines that wait for them; Close
// stops every machine and returns once all are gone.
type Exec struct {
	out   io.Writer
	outMu sync.Mutex // one line at a time
	log   *slog.Logger
	exits chan string
	quit  chan struct{} // closed by Close: exits nobody reads are dropped
	wg    sync.WaitGroup

	mu        sync.Mutex
	procs     map[string]*proc // by machine id, from start until gone
	closed    bool
	closeDone chan struct{}
}

// proc is one machine's process.
type proc struct {
	id      string
	spec    Spec // as started: Close stops the machine with it
	cmd     *exec.Cmd
	pgid    int
	out     *os.File      // the read end of the machine's stdout and stderr
	exited  chan struct{} // closed once the process is reaped
	drained chan struct{} // closed at the end of its output: every holder exited, or out was closed
	gone    chan struct{} // closed after both, once it is no longer in procs

	// Guarded by Exec.mu.
	suspended bool
	stopping  bool // asked to stop: its exit is not reported
}

// NewExec returns an Exec driver with no machines running.
func NewExec(o ExecOptions) *Exec {
	o = o.withDefaults()
	return &Exec{
		out:       o.Output,
		log:       o.Log,
		exits:     make(chan string, 64),
		quit:      make(chan struct{}),
		procs:     make(map[string]*proc),
		closeDone: make(chan struct{}),
	}
}

// Exits receives the id of each machine whose process exits without being
// asked to stop. Close closes it.
func (e *Exec) Exits() <-chan string { return e.exits }

// Start starts the machine's process and returns once it runs. A
// suspended machine is resumed (SIGCONT); a running one is left alone. A
// machine whose process is exiting is started again once it is gone.
func (e *Exec) Start(ctx context.Context, s *Spec) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("autostart: start machine %s: %w", s.ID, err)
	}
	e.mu.Lock()
	p := e.procs[s.ID]
	e.mu.Unlock()
	if p != nil {
		select {
		case <-p.exited:
			select {
			case <-p.gone:
			case <-ctx.Done():
				return fmt.Errorf("autostart: start machine %s: its last process is still exiting: %w", s.ID, ctx.Err())
			}
		default:
			e.mu.Lock()
			if p.suspended {
				p.suspended = false
				e.signal(p, syscall.SIGCONT)
			}
			e.mu.Unlock()
			return nil
		}
	}
	return e.spawn(s)
}

func (e *Exec) spawn(s *Spec) error {
	if len(s.Command) == 0 || s.Command[0] == "" {
		return fmt.Errorf("autostart: start machine %s: no command", s.ID)
	}
	env, err := execEnv(s)
	if err != nil {
		return fmt.Errorf("autostart: start machine %s: %w", s.ID, err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("autostart: start machine %s: %w", s.ID, err)
	}
	cmd := exec.Command(s.Command[0], s.Command[1:]...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = w, w // an *os.File: the child writes to it directly
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}

	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		r.Close()
		w.Close()
		return fmt.Errorf("autostart: start machine %s: %w", s.ID, ErrDriverClosed)
	}
	err = cmd.Start()
	w.Close() // the child has its copy
	if err != nil {
		r.Close()
		return fmt.Errorf("autostart: start machine %s: %w", s.ID, err)
	}
	p := &proc{
		id:      s.ID,
		spec:    *s,
		cmd:     cmd,
		pgid:    cmd.Process.Pid,
		out:     r,
		exited:  make(chan struct{}),
		drained: make(chan struct{}),
		gone:    make(chan struct{}),
	}
	e.procs[s.ID] = p
	e.wg.Add(2)
	go e.copyOutput(p)
	go e.reap(p)
	e.log.Info("machine process started", "machine", s.ID, "pid", p.pgid)
	return nil
}

// Stop stops the machine: its KillSignal to the group (and SIGCONT if it
// is suspended, so it can act on the signal), then SIGKILL if anything of
// it is still there after its KillTimeout or when ctx ends. It returns
// once the machine is gone; a machine that does not run is stopped
// already.
func (e *Exec) Stop(ctx context.Context, s *Spec) error {
	e.mu.Lock()
	p := e.procs[s.ID]
	if p == nil {
		e.mu.Unlock()
		return nil
	}
	p.stopping = true
	suspended := p.suspended
	p.suspended = false
	e.mu.Unlock()
	return e.stop(ctx, p, s, suspended)
}

func (e *Exec) stop(ctx context.Context, p *proc, s *Spec, suspended bool) error {
	sig, ok := signalNamed(s.killSignal())
	if !ok {
		e.log.Warn("unknown kill signal: sending SIGKILL", "machine", p.id, "signal", s.KillSignal)
		sig = syscall.SIGKILL
	}
	timeout := time.NewTimer(s.killTimeout())
	defer timeout.Stop()
	e.signal(p, sig)
	if suspended {
		e.signal(p, syscall.SIGCONT)
	}
	select {
	case <-p.gone:
		return nil
	case <-timeout.C:
		e.log.Warn("machine still running after its kill timeout: killing it", "machine", p.id,
			"signal", s.killSignal(), "kill_timeout", s.killTimeout())
	case <-ctx.Done():
		e.log.Warn("machine stop canceled: killing it", "machine", p.id, "err", ctx.Err())
	}
	e.signal(p, syscall.SIGKILL)
	grace := time.NewTimer(killGrace)
	defer grace.Stop()
	select {
	case <-p.gone:
		return nil
	case <-grace.C:
	}
	// A process outside the group still holds the output, or the machine's
	// process is stuck in the kernel: stop reading its output.
	p.out.Close()
	grace.Reset(killGrace)
	select {
	case <-p.gone:
		return nil
	case <-grace.C:
		return fmt.Errorf("autostart: stop machine %s: process %d still there %v after SIGKILL", p.id, p.pgid, 2*killGrace)
	}
}

// Suspend stops the machine's processes where they are (SIGSTOP): their
// memory stays, and Start resumes them. It returns once the machine's
// process has stopped (on Linux; elsewhere once it is signalled), so it
// answers no request after. A machine that does not run is ErrNotRunning.
func (e *Exec) Suspend(ctx context.Context, s *Spec) error {
	e.mu.Lock()
	p := e.procs[s.ID]
	if p == nil || p.stopping || isClosed(p.exited) {
		e.mu.Unlock()
		return fmt.Errorf("autostart: suspend machine %s: %w", s.ID, ErrNotRunning)
	}
	if !p.suspended {
		p.suspended = true
		e.signal(p, syscall.SIGSTOP)
	}
	e.mu.Unlock()
	if err := waitStopped(ctx, p.pgid, suspendWait); err != nil {
		return fmt.Errorf("autostart: suspend machine %s: %w", s.ID, err)
	}
	return nil
}

// Close stops every machine, each within its kill timeout (plus the wait
// after a SIGKILL), closes Exits and returns once every process and
// goroutine of the driver is gone. Start fails after it. It is idempotent.
func (e *Exec) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		<-e.closeDone
		return nil
	}
	e.closed = true
	type stopping struct {
		p         *proc
		suspended bool
	}
	var ps []stopping
	for _, p := range e.procs {
		ps = append(ps, stopping{p, p.suspended})
		p.stopping, p.suspended = true, false
	}
	e.mu.Unlock()

	errs := make([]error, len(ps))
	var wg sync.WaitGroup
	for i, st := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = e.stop(context.Background(), st.p, &st.p.spec, st.suspended)
		}()
	}
	wg.Wait()
	close(e.quit)
	e.wg.Wait()
	close(e.exits)
	close(e.closeDone)
	return errors.Join(errs...)
}

// reap waits for the machine's process, then for the rest of its group:
// after an exit on its own it kills the group and reports the exit; after
// a stop, Stop sees to the group.
func (e *Exec) reap(p *proc) {
	defer e.wg.Done()
	err := p.cmd.Wait()
	close(p.exited)
	e.mu.Lock()
	stopping := p.stopping
	e.mu.Unlock()
	if !stopping {
		e.signal(p, syscall.SIGKILL) // whatever it started dies with it
		t := time.NewTimer(killGrace)
		select {
		case <-p.drained:
		case <-t.C:
			p.out.Close()
			<-p.drained
		}
		t.Stop()
	} else {
		<-p.drained // Stop closes the output if the group outlives its grace
	}

	e.mu.Lock()
	if e.procs[p.id] == p {
		delete(e.procs, p.id)
	}
	stopping = p.stopping
	e.mu.Unlock()
	close(p.gone)
	if stopping {
		e.log.Info("machine process stopped", "machine", p.id, "status", exitStatus(err))
		return
	}
	e.log.Warn("machine process exited on its own", "machine", p.id, "status", exitStatus(err))
	select {
	case e.exits <- p.id:
	case <-e.quit:
	}
}

// copyOutput copies the machine's output to the Output, a line at a time
// with the machine's prefix, until every process holding it has exited or
// it is closed.
func (e *Exec) copyOutput(p *proc) {
	defer e.wg.Done()
	defer close(p.drained)
	defer p.out.Close()
	prefix := "[" + p.id + "] "
	br := bufio.NewReaderSize(p.out, 4096)
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if len(chunk) > 0 {
			line = append(append(line[:0], prefix...), chunk...)
			if line[len(line)-1] != '\n' { // a long line's part, or the last one without a newline
				line = append(line, '\n')
			}
			e.outMu.Lock()
			_, _ = e.out.Write(line)
			e.outMu.Unlock()
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return
		}
	}
}

// signal sends sig to the machine's process group. A group that is gone
// already is not an error.
func (e *Exec) signal(p *proc, sig syscall.Signal) {
	if err := syscall.Kill(-p.pgid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		e.log.Warn("signal to machine failed", "machine", p.id, "signal", sig.String(), "err", err)
	}
}

// signalNamed maps a kill_signal name to its signal.
func signalNamed(name string) (syscall.Signal, bool) {
	switch name {
	case "SIGINT":
		return syscall.SIGINT, true
	case "SIGTERM":
		return syscall.SIGTERM, true
	case "SIGQUIT":
		return syscall.SIGQUIT, true
	case "SIGUSR1":
		return syscall.SIGUSR1, true
	case "SIGUSR2":
		return syscall.SIGUSR2, true
	case "SIGKILL":
		return syscall.SIGKILL, true
	case "SIGHUP":
		return syscall.SIGHUP, true
	}
	return 0, false
}

func exitStatus(err error) string {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return "exit status 0"
	case errors.As(err, &ee):
		return ee.ProcessState.String()
	}
	return err.Error()
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
