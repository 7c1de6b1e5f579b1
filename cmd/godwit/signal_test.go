package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestSIGTERMDrains runs the real binary as a child process: SIGTERM while a
// request is in flight lets that request finish, then the process exits 0.
func TestSIGTERMDrains(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "godwit")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	machine := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
		io.WriteString(w, "finished after SIGTERM")
	}))
	defer machine.Close()
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()

	cfgPath := filepath.Join(t.TempDir(), "godwit.toml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(`
[listen]
http  = "127.0.0.1:0"
admin = "127.0.0.1:0"
[log]
format = "json"
[[app]]
name  = "web"
hosts = ["web.test"]
[[machine]]
id      = "m1"
app     = "web"
address = %q
`, machine.Listener.Addr().String())), 0o644)

	cmd := exec.Command(bin, "run", "--config", cfgPath)
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	// The log's first line names the bound addresses; the rest is drained
	// so the child never blocks on a full pipe.
	addrs := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec["msg"] == "godwit edge running" {
				addrs <- fmt.Sprint(rec["http"])
			}
		}
		exited <- cmd.Wait()
	}()
	var addr string
	select {
	case addr = <-addrs:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatal("no 'godwit edge running' log line within 30s")
	}

	type result struct {
		status int
		body   string
		err    error
	}
	got := make(chan result, 1)
	go func() {
		req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
		req.Host = "web.test"
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			got <- result{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- result{resp.StatusCode, string(b), err}
	}()
	select {
	case <-arrived:
	case <-time.After(30 * time.Second):
		t.Fatal("request did not reach the machine within 30s")
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// New connections are refused once the drain began; poll until so.
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := (&http.Client{Timeout: time.Second}).Get("http://" + addr + "/")
		if err != nil {
			break
		}
		c.Body.Close()
		if time.Now().After(deadline) {
			t.Fatal("the listener still accepted 10s after SIGTERM")
		}
	}
	close(release)

	select {
	case r := <-got:
		if r.err != nil || r.status != 200 || r.body != "finished after SIGTERM" {
			t.Errorf("in-flight request across SIGTERM: got %d %q (err %v), want 200 \"finished after SIGTERM\"", r.status, r.body, r.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("in-flight request did not finish within 30s")
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("exit after SIGTERM: got %v, want status 0", err)
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatal("process did not exit within 30s of SIGTERM")
	}
}

// TestSIGHUPReloads runs the real binary: SIGHUP after the config file
// gained an app makes it served; SIGHUP after a typo leaves the running
// config in place and logs the error with its line.
func TestSIGHUPReloads(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "godwit")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	machine := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "machine of "+r.Host)
	}))
	defer machine.Close()
	cfgPath := filepath.Join(t.TempDir(), "godwit.toml")
	base := fmt.Sprintf(`
[listen]
http  = "127.0.0.1:0"
admin = "127.0.0.1:0"
[log]
format = "json"
[[app]]
name  = "web"
hosts = ["web.test"]
[[machine]]
id      = "m1"
app     = "web"
address = %q
`, machine.Listener.Addr().String())
	if err := os.WriteFile(cfgPath, []byte(base), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", "--config", cfgPath)
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	addrs := make(chan string, 1)
	var logMu sync.Mutex
	var log strings.Builder
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logMu.Lock()
			log.WriteString(sc.Text() + "\n")
			logMu.Unlock()
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec["msg"] == "godwit edge running" {
				addrs <- fmt.Sprint(rec["http"])
			}
		}
	}()
	var addr string
	select {
	case addr = <-addrs:
	case <-time.After(30 * time.Second):
		t.Fatal("no 'godwit edge running' log line within 30s")
	}
	get := func(host string) (int, string) {
		req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
		req.Host = host
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	logText := func() string {
		logMu.Lock()
		defer logMu.Unlock()
		return log.String()
	}
	logged := func(s string) bool { return strings.Contains(logText(), s) }
	if code, _ := get("api.test"); code != http.StatusNotFound {
		t.Fatalf("api.test before the reload: %d, want 404 (no such app yet)", code)
	}

	withAPI := base + `
[[app]]
name  = "api"
hosts = ["api.test"]
[[machine]]
id      = "m2"
app     = "api"
address = "` + machine.Listener.Addr().String() + `"
`
	os.WriteFile(cfgPath, []byte(withAPI), 0o644)
	cmd.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := get("api.test")
		if code == 200 && body == "machine of api.test" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("api.test 10s after SIGHUP: %d %q, want the machine's answer", code, body)
		}
		time.Sleep(20 * time.Millisecond) // poll interval
	}

	typo := withAPI + "\n[proxy]\nconect_timeout = \"1s\"\n"
	os.WriteFile(cfgPath, []byte(typo), 0o644)
	line := strings.Count(typo, "\n")
	cmd.Process.Signal(syscall.SIGHUP)
	deadline = time.Now().Add(10 * time.Second)
	for !logged("reload refused") {
		if time.Now().After(deadline) {
			t.Fatal("no 'reload refused' log line 10s after SIGHUP with a typo")
		}
		time.Sleep(20 * time.Millisecond) // poll interval
	}
	if !logged(fmt.Sprintf(":%d", line)) || !logged("conect_timeout") {
		t.Errorf("the refusal does not name the key and its line %d:\n%s", line, logText())
	}
	if code, body := get("api.test"); code != 200 || body != "machine of api.test" {
		t.Errorf("after the refused reload: %d %q, want the running config still serving api.test", code, body)
	}
}
