//go:build linux

package main

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
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
	bin := buildGodwit(t)

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
	os.WriteFile(cfgPath, []byte(edgeConfig(machine.Listener.Addr().String())), 0o644)
	e := startChildEdge(t, bin, "godwit", cfgPath)
	addr := e.http

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
	if err := e.cmd.Process.Signal(syscall.SIGTERM); err != nil {
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
	case <-e.done:
		if e.waitErr != nil {
			t.Errorf("exit after SIGTERM: got %v, want status 0", e.waitErr)
		}
	case <-time.After(30 * time.Second):
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
	bin := buildGodwit(t)
	machine := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "machine of "+r.Host)
	}))
	defer machine.Close()
	cfgPath := filepath.Join(t.TempDir(), "godwit.toml")
	base := edgeConfig(machine.Listener.Addr().String())
	if err := os.WriteFile(cfgPath, []byte(base), 0o644); err != nil {
		t.Fatal(err)
	}
	e := startChildEdge(t, bin, "godwit", cfgPath)
	addr := e.http
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
	logText := e.log.String
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
	e.cmd.Process.Signal(syscall.SIGHUP)
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
	e.cmd.Process.Signal(syscall.SIGHUP)
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

// edgeConfig is the config of a lone edge on loopback ports of the
// kernel's choosing, logging JSON, with app web (host web.test) on machine
// m1 at address.
func edgeConfig(address string) string {
	return fmt.Sprintf(`
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
`, address)
}
