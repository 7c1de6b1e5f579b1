package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/godwit/godwit/bench/internal/child"
)

// target is one proxy under test: its process and the address it serves
// HTTPS (TCP) and HTTP/3 (UDP) on.
type target struct {
	name string // "godwit" or "caddy"
	p    *child.Proc
	addr string
	cfg  string // its config, for the temp dir and -keep-tmp
}

// label is how the report names a target.
func label(name string) string {
	if name == "caddy" {
		return "Caddy"
	}
	return name
}

// godwitConfig is godwit's config: HTTPS and HTTP/3 on addr with the
// bench's certificate, one app for benchHost with one machine (the
// backend, started, driver none), no plain HTTP listener, no access log,
// and limits that never hold a request back.
func godwitConfig(addr, backend string, cert *benchCert, idle int) string {
	return fmt.Sprintf(`# written by bench/tls
[node]
name   = "tls-bench"
region = "iad"

[listen]
http  = ""
https = %q
http3 = %q
admin = "127.0.0.1:0"

[tls]
cert_file = %q
key_file  = %q

[log]
level  = "info"   # for the "godwit edge running" line; nothing per request
format = "json"
access = false

[proxy]
max_idle_per_machine = %d

[[app]]
name  = "bench"
hosts = [%q]

  [app.http_service.concurrency]
  type       = "requests"
  soft_limit = 100000
  # no hard_limit: none

[[machine]]
id      = "b1"
app     = "bench"
address = %q
state   = "started"
  [machine.driver]
  kind = "none"
`, addr, addr, cert.certFile, cert.keyFile, idle, benchHost, backend)
}

// startGodwit runs `godwit run --config` pinned to cpu and returns once
// its "godwit edge running" log line says HTTPS is bound. HTTP/3 is not in
// that line; the checks before measuring find whether it answers.
func startGodwit(ctx context.Context, bin, dir, addr, backend string, cert *benchCert, cpu, idle int) (*target, error) {
	cfg := godwitConfig(addr, backend, cert, idle)
	cfgPath := filepath.Join(dir, "godwit.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	running := make(chan struct{})
	var once bool
	p, err := child.Start(child.Command(cpu, bin, "run", "--config", cfgPath), "godwit", filepath.Join(dir, "godwit.log"), func(line string) {
		if !once && strings.Contains(line, `"msg":"godwit edge running"`) {
			once = true
			close(running)
		}
	})
	if err != nil {
		return nil, err
	}
	if err := p.Await(ctx, running, 30*time.Second); err != nil {
		return nil, err
	}
	return &target{name: "godwit", p: p, addr: addr, cfg: cfg}, nil
}

// caddyConfig is Caddy's JSON config: one server on addr with HTTP/1.1,
// HTTP/2 and HTTP/3, TLS with the bench's certificate (automatic HTTPS
// off: no ACME, no redirect listener on :80), a route for benchHost to
// reverse_proxy the backend with as many idle upstream connections as
// godwit keeps, admin API off, no config persisted, logs at WARN and no
// access log (Caddy logs requests only when a server asks for it).
func caddyConfig(addr, backend string, cert *benchCert, dataDir string, idle int) string {
	type m = map[string]any
	c := m{
		"admin":   m{"disabled": true, "config": m{"persist": false}},
		"logging": m{"logs": m{"default": m{"level": "WARN"}}},
		"storage": m{"module": "file_system", "root": dataDir},
		"apps": m{
			"http": m{"servers": m{"bench": m{
				"listen":                  []string{addr},
				"protocols":               []string{"h1", "h2", "h3"},
				"automatic_https":         m{"disable": true},
				"tls_connection_policies": []m{{}},
				"routes": []m{{
					"match": []m{{"host": []string{benchHost}}},
					"handle": []m{{
						"handler":   "reverse_proxy",
						"upstreams": []m{{"dial": backend}},
						"transport": m{
							"protocol":   "http",
							"keep_alive": m{"max_idle_conns_per_host": idle},
						},
					}},
					"terminal": true,
				}},
			}}},
			"tls": m{"certificates": m{"load_files": []m{{"certificate": cert.certFile, "key": cert.keyFile}}}},
		},
	}
	b, _ := json.MarshalIndent(c, "", "  ")
	return string(b) + "\n"
}

// startCaddy runs `caddy run --config` pinned to cpu, with its config and
// data dirs in dir (nothing under $HOME), and returns once it accepts TCP
// connections on addr.
func startCaddy(ctx context.Context, bin, dir, addr, backend string, cert *benchCert, cpu, idle int) (*target, error) {
	data := filepath.Join(dir, "caddy-data")
	cfg := caddyConfig(addr, backend, cert, data, idle)
	cfgPath := filepath.Join(dir, "caddy.json")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	c := child.Command(cpu, bin, "run", "--config", cfgPath)
	c.Env = append(os.Environ(), "XDG_CONFIG_HOME="+filepath.Join(dir, "caddy-config"), "XDG_DATA_HOME="+data)
	p, err := child.Start(c, "caddy", filepath.Join(dir, "caddy.log"), nil)
	if err != nil {
		return nil, err
	}
	if err := p.WaitTCP(ctx, addr, 30*time.Second); err != nil {
		p.Stop(stopGrace)
		return nil, err
	}
	return &target{name: "caddy", p: p, addr: addr, cfg: cfg}, nil
}

// caddyBinary returns a Caddy binary of version: the one in the cache dir
// (os.UserCacheDir()/godwit-bench/caddy-VERSION/caddy) when present, else
// installed there with `go install …/cmd/caddy@VERSION` from the module
// proxy. Never inside the repository.
func caddyBinary(version string) (string, error) {
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no cache dir for Caddy: %w", err)
	}
	dir := filepath.Join(cache, "godwit-bench", "caddy-"+version)
	bin := filepath.Join(dir, "caddy")
	if fi, err := os.Stat(bin); err == nil && fi.Mode().IsRegular() {
		logf("Caddy %s: reusing %s", version, bin)
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	pkg := "github.com/caddyserver/caddy/v2/cmd/caddy@" + version
	logf("go install %s (GOBIN=%s); the first time this downloads and builds Caddy, a minute or more", pkg, dir)
	c := exec.Command("go", "install", pkg)
	c.Dir = dir // outside the module: its go.mod plays no part
	c.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=-buildvcs=false")
	out, err := c.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go install %s: %w: %s", pkg, err, lastLines(string(out), 4))
	}
	return bin, nil
}

// caddyVersion is the Caddy binary's version (`caddy version`'s first
// word, or its module's version from its build info when Caddy says
// "unknown", as a go-installed Caddy does), and the quic-go version it was
// built with.
func caddyVersion(bin string) (version, quic string) {
	out, err := exec.Command(bin, "version").Output()
	version = "unknown"
	if f := strings.Fields(string(out)); err == nil && len(f) > 0 {
		version = f[0]
	}
	if version == "unknown" {
		version = moduleVersion(bin, "github.com/caddyserver/caddy/v2")
	}
	return version, moduleVersion(bin, "github.com/quic-go/quic-go")
}

// moduleVersion is the version of module mod in binary bin (go version
// -m: the main module or a dependency, after replacements), "?" when
// unknown.
func moduleVersion(bin, mod string) string {
	out, err := exec.Command("go", "version", "-m", bin).Output()
	if err != nil {
		return "?"
	}
	v, prev := "?", false
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) >= 3 && (f[0] == "mod" || f[0] == "dep") && f[1] == mod:
			v, prev = f[2], true
		case len(f) >= 3 && f[0] == "=>" && prev && strings.HasPrefix(f[2], "v"):
			v, prev = f[2]+" (replacement "+f[1]+")", false
		default:
			prev = false
		}
	}
	return v
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
