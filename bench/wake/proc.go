package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/godwit/godwit/bench/internal/child"
)

// app is one test app started by the bench itself (the baseline).
type app struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once reaped
}

// startApp execs the test app with PORT set; the caller times from just
// before this call.
func startApp(argv []string, cpu int, port int) (*app, error) {
	c := child.Command(cpu, argv...)
	c.Env = append(os.Environ(), "PORT="+strconv.Itoa(port), "FLY_MACHINE_ID=baseline")
	if err := c.Start(); err != nil {
		return nil, fmt.Errorf("start test app: %w", err)
	}
	child.Track(c)
	a := &app{cmd: c, done: make(chan struct{})}
	go func() {
		c.Wait()
		child.Untrack(c)
		close(a.done)
	}()
	return a, nil
}

// stop ends the app: SIGINT (it exits at once), SIGKILL after 5 s.
func (a *app) stop() {
	a.cmd.Process.Signal(syscall.SIGCONT)
	a.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-a.done:
	case <-time.After(5 * time.Second):
		a.cmd.Process.Kill()
		<-a.done
	}
}

// waitState polls /proc until process pid is in state st ('T': stopped),
// for at most timeout.
func waitState(pid int, st byte, timeout time.Duration) error {
	end := time.Now().Add(timeout)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return err
		}
		if i := strings.LastIndexByte(string(b), ')'); i >= 0 && i+2 < len(b) && b[i+2] == st {
			return nil
		}
		if time.Now().After(end) {
			return fmt.Errorf("process %d not in state %c within %v", pid, st, timeout)
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// edge is the `godwit run` child. Its JSON log goes to logPath; the bound
// addresses are read from its "godwit edge running" line.
type edge struct {
	cmd         *exec.Cmd
	logPath     string
	done        chan struct{} // closed once reaped
	http, admin string
}

func startEdge(bin, cfgPath, logPath string, cpu int) (*edge, error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	e := &edge{logPath: logPath, done: make(chan struct{})}
	e.cmd = child.Command(cpu, bin, "run", "--config", cfgPath)
	e.cmd.Stdout = lf
	stderr, err := e.cmd.StderrPipe()
	if err != nil {
		lf.Close()
		return nil, err
	}
	if err := e.cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start godwit: %w", err)
	}
	child.Track(e.cmd)
	type addrs struct{ http, admin string }
	running := make(chan addrs, 1)
	go func() {
		defer close(e.done)
		defer lf.Close()
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Bytes()
			lf.Write(append(line, '\n'))
			if !strings.Contains(string(line), `"msg":"godwit edge running"`) {
				continue
			}
			var rec map[string]any
			if json.Unmarshal(line, &rec) == nil {
				running <- addrs{fmt.Sprint(rec["http"]), fmt.Sprint(rec["admin"])}
			}
		}
		io.Copy(io.Discard, stderr)
		e.cmd.Wait()
		child.Untrack(e.cmd)
	}()
	select {
	case a := <-running:
		e.http, e.admin = a.http, a.admin
		return e, nil
	case <-e.done:
		return nil, fmt.Errorf("godwit exited before it was up; its log (%s):\n%s", logPath, child.Tail(logPath, 15))
	case <-time.After(30 * time.Second):
		e.cmd.Process.Kill()
		<-e.done
		return nil, fmt.Errorf("godwit not up within 30s; its log (%s):\n%s", logPath, child.Tail(logPath, 15))
	}
}

// stop ends godwit: SIGTERM (it drains and stops its machines), SIGKILL
// after 15 s.
func (e *edge) stop() {
	select {
	case <-e.done:
		return
	default:
	}
	e.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-e.done:
	case <-time.After(15 * time.Second):
		e.cmd.Process.Kill()
		<-e.done
	}
}

// killStray SIGKILLs every pid in pids that still runs exe (machines that
// godwit started and did not stop, if it died first).
func killStray(pids map[int]bool, exe string) {
	for pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || !strings.Contains(string(b), exe) {
			continue
		}
		syscall.Kill(pid, syscall.SIGCONT)
		syscall.Kill(pid, syscall.SIGKILL)
	}
}
