package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/godwit/godwit/bench/internal/child"
)

// proc is one child process of the bench (the backend, godwit, Caddy):
// its output goes to logPath; done is closed once it is reaped.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
}

// startProc starts argv pinned to cpu (-1: not pinned) with env added to
// the bench's environment, its stdout and stderr in logPath. When
// onLine is not nil it sees every line of stderr (and may be called after
// startProc returns).
func startProc(name string, cpu int, env []string, logPath string, onLine func(string), argv ...string) (*proc, error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	p := &proc{name: name, logPath: logPath, done: make(chan struct{})}
	p.cmd = child.Command(cpu, argv...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout = lf
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		lf.Close()
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	child.Track(p.cmd)
	go func() {
		defer close(p.done)
		defer lf.Close()
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			lf.WriteString(line + "\n")
			if onLine != nil {
				onLine(line)
			}
		}
		io.Copy(io.Discard, stderr)
		p.cmd.Wait()
		child.Untrack(p.cmd)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop ends the process: SIGTERM, SIGKILL after 10 s; it returns once
// the process is reaped.
func (p *proc) stop() {
	if p == nil || p.exited() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// died describes an unexpected exit, with the end of the log.
func (p *proc) died() error {
	return fmt.Errorf("%s exited; its log (%s):\n%s", p.name, p.logPath, child.Tail(p.logPath, 15))
}

// waitTCP polls addr until it accepts a TCP connection, the process exits,
// or timeout passes.
func (p *proc) waitTCP(addr string, timeout time.Duration) error {
	end := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if p.exited() {
			return p.died()
		}
		if time.Now().After(end) {
			return fmt.Errorf("%s not accepting on %s within %v: %w; its log (%s):\n%s", p.name, addr, timeout, err, p.logPath, child.Tail(p.logPath, 15))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// freePort returns a loopback port that was free a moment ago for both TCP
// and UDP: a proxy serves HTTPS on it over TCP and HTTP/3 over UDP, as on
// port 443.
func freePort() (int, error) {
	for range 50 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(port))
		ln.Close()
		if err != nil {
			continue
		}
		pc.Close()
		return port, nil
	}
	return 0, errors.New("no loopback port free for both TCP and UDP")
}

// pinSelf moves every thread of this process to cpu (taskset -a -p);
// threads made later inherit it. The caller runs it after the builds,
// which use every core, and sets GOMAXPROCS to 1: the load generator gets
// one core, as each proxy does.
func pinSelf(cpu int) error {
	out, err := exec.Command(child.TasksetPath, "-a", "-p", "-c", strconv.Itoa(cpu), strconv.Itoa(os.Getpid())).CombinedOutput()
	if err != nil {
		return fmt.Errorf("taskset -a -p -c %d %d: %w: %s", cpu, os.Getpid(), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// clkTck is the kernel's clock tick rate for /proc/PID/stat times.
var clkTck = func() float64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if v, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64); err == nil && v > 0 {
			return v
		}
	}
	return 100
}()

// cpuTicks returns utime+stime of a process (all its threads) in clock
// ticks; -1 when it cannot be read (the process is gone).
func cpuTicks(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return -1
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime is field 14, stime field 15.
	if len(f) < 13 {
		return -1
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st
}

// coreTicks returns busy and total ticks of one CPU from /proc/stat.
func coreTicks(cpu int) (busy, total int64) {
	if cpu < 0 {
		return 0, 0
	}
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	want := "cpu" + strconv.Itoa(cpu)
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 9 || f[0] != want {
			continue
		}
		var v [8]int64
		for i := range v {
			v[i], _ = strconv.ParseInt(f[i+1], 10, 64)
		}
		// user nice system idle iowait irq softirq steal
		busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
		return busy, busy + v[3] + v[4]
	}
	return 0, 0
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
