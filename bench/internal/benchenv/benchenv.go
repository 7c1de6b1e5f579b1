// Package benchenv reads what the benchmarks need to know about where they
// run: the source tree (its module root, its commit, builds of its
// packages) and the machine (CPU, kernel, Go, load average, the CPU time of
// a process or a core, free loopback ports). The benchmarks put these facts
// in their reports' headers, so that a figure can be told apart from a
// noisy machine or another tree.
//
// It starts no long-lived process and keeps no state; it does not format a
// report (each command words its own header) nor run the children that are
// measured (see package child).
package benchenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
)

// ModuleRoot returns the directory of the go.mod of the current directory's
// module: the benchmarks run from inside the repository (`go run ./bench/…`)
// and build and write relative to its root.
func ModuleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside a Go module: run from the repository root")
	}
	return filepath.Dir(mod), nil
}

// Build runs `go build -o out pkg` in root (pkg is relative to it, such as
// "./cmd/godwit"). It blocks until the build ends, or ctx does (the go
// command is killed: an interrupt need not wait for a build); the
// compiler's output is in the error when it fails.
func Build(ctx context.Context, root, out, pkg string) error {
	c := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	c.Dir = root
	if b, err := c.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return nil
}

// Godwit returns the godwit binary to measure: prebuilt, made absolute and
// checked to exist, when it is not ""; else ./cmd/godwit of the tree at
// root, built into dir as "godwit" (which takes a while: the caller says
// so first).
func Godwit(ctx context.Context, root, prebuilt, dir string) (string, error) {
	if prebuilt != "" {
		bin, err := filepath.Abs(prebuilt)
		if err != nil {
			return "", err
		}
		if _, err := os.Stat(bin); err != nil {
			return "", err
		}
		return bin, nil
	}
	bin := filepath.Join(dir, "godwit")
	if err := Build(ctx, root, bin, "./cmd/godwit"); err != nil {
		return "", err
	}
	return bin, nil
}

// Commit describes the tree at root for a report: the short commit hash,
// with " (+ uncommitted changes)" when tracked files differ from it, so a
// figure measured on a modified tree is not taken for the commit's. "?"
// when git cannot tell (no git, not a checkout).
func Commit(root string) string {
	hash, err := git(root, "rev-parse", "--short", "HEAD")
	if err != nil || hash == "" {
		return "?"
	}
	if st, err := git(root, "status", "--porcelain", "--untracked-files=no"); err == nil && st != "" {
		hash += " (+ uncommitted changes)"
	}
	return hash
}

func git(dir string, args ...string) (string, error) {
	c := exec.Command("git", args...)
	c.Dir = dir
	out, err := c.Output()
	return strings.TrimSpace(string(out)), err
}

// CPUModel is the CPU's model name from /proc/cpuinfo, or the architecture
// (GOARCH) where it names none (most arm64 kernels).
func CPUModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}

// CPUCount is the machine's CPU count (`nproc --all`). It differs from
// runtime.NumCPU, which counts the CPUs this process may run on: a bench
// pinned to one core still reports the machine.
func CPUCount() int {
	if out, err := exec.Command("nproc", "--all").Output(); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(out))); err == nil && n > 0 {
			return n
		}
	}
	return runtime.NumCPU()
}

// Kernel is the kernel's release, as `uname -r` prints it; "?" when
// unknown.
func Kernel() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

// GoVersion is what `go version` prints, such as "go version go1.26.8
// linux/amd64": the toolchain that builds godwit, which may not be the one
// that built the bench. The bench's own version when the go command fails.
func GoVersion() string {
	if out, err := exec.Command("go", "version").Output(); err == nil {
		return strings.TrimSpace(string(out))
	}
	return "go version " + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH
}

// LoadAvg is the 1, 5 and 15 minute load averages ("0.52 0.61 0.70"), "?"
// when unknown. The machine is shared: the reports print it before and
// after the runs, so that a run disturbed by other work shows.
func LoadAvg() string {
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

// FreePorts returns n distinct loopback ports that were free a moment ago
// for both TCP and UDP (a proxy may serve HTTPS over TCP and HTTP/3 over
// UDP on one port, as on 443). It holds them all until it returns, so they
// differ; another process may still take one before the caller binds it.
func FreePorts(n int) ([]int, error) {
	var held []interface{ Close() error }
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	var ports []int
	for tries := 0; len(ports) < n; tries++ {
		if tries == 50+n {
			return nil, errors.New("no loopback port free for both TCP and UDP")
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		held = append(held, ln)
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			continue
		}
		held = append(held, pc)
		ports = append(ports, port)
	}
	return ports, nil
}
