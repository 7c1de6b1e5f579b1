package config

import (
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/godwit/godwit/replay"
)

// fullConfig sets every key to a value other than its default.
const fullConfig = `
[node]
name = "edge-ams-2"
region = "ams"

[listen]
http = "0.0.0.0:80"
https = "0.0.0.0:443"
http3 = "0.0.0.0:443"
admin = "10.0.0.1:9091"

[tls]
cert_file = "/etc/godwit/cert.pem"
key_file = "key.pem"

[log]
level = "debug"
format = "text"
access = false

[admin]
token_file = "admin.token"

[gossip]
bind = "10.0.0.1:7946"
advertise = "203.0.113.1:7946"
join = ["10.0.0.2:7946", "edge-fra-1.internal:7946"]
secret_key_file = "gossip.key"

[backhaul]
listen = "10.0.0.1:4433"
protocol = "h2"
cert_file = "bh.pem"
key_file = "bh.key"
ca_file = "ca.pem"
simulated_rtt = { "nrt-iad" = "150ms", "iad-cdg" = "80ms" }

[region_coords]
xyz = "10.5, -20"

[proxy]
read_header_timeout = "3s"
idle_timeout = 60000
max_header_bytes = 65536
connect_timeout = "1500ms"
connect_retries = 0
queue_timeout = "0s"
max_queue = 10
upstream_idle_timeout = "4s"
max_idle_per_machine = 8
replay_body_limit = 2097152
replay_cache_entries = 0
drain_timeout = "1m"

[autostart]
stop_interval = "15s"
wake_timeout = 5000
max_waiters = 0
recent_stop = "0s"
drain_timeout = "2s"

[[app]]
name = "web"
hosts = ["Web.Example.COM", "www.example.com"]
org = "acme"
primary_region = "fra"
kill_signal = "SIGTERM"
kill_timeout = 30
  [app.http_service]
  internal_port = 8080
  force_https = true
  auto_stop_machines = "suspend"
  auto_start_machines = false
  min_machines_running = 2
  min_machines_running_scope = "region"
  autostop_max_per_pass = 4
    [app.http_service.concurrency]
    type = "requests"
    soft_limit = 50
    hard_limit = 60
    [[app.http_service.checks]]
    grace_period = "5s"
    interval = 10000
    timeout = "500ms"
    method = "head"
    path = "/healthz"
    protocol = "https"
    tls_server_name = "web.internal"
    tls_skip_verify = true
      [app.http_service.checks.headers]
      X-Forwarded-Proto = "https"
      Authorization = "Bearer x"
    [[app.http_service.checks]]
    path = "/ready"
    [[app.http_service.tcp_checks]]
    grace_period = 1000
    interval = "20s"
    timeout = "3s"
    [[app.http_service.http_options.replay_cache]]
    path_prefix = "/"
    ttl_seconds = 300
    type = "cookie"
    name = "session_id"
    [[app.http_service.http_options.replay_cache]]
    path_prefix = "Web.Example.com/api/*"
    ttl_seconds = 31536000
    type = "header"
    name = "X-Session"
    allow_bypass = true
    [[app.http_service.http_options.replay_cache]]
    path_prefix = "/api"
    ttl_seconds = 10
    type = "cookie"
    name = "__Host-sid"

[[app]]
name = "api"
hosts = ["api.example.com"]
kill_timeout = "1m30s"
http_service = { auto_stop_machines = true, concurrency = { hard_limit = 30 }, http_options = { replay_cache = [
  { path_prefix = "/graphql/", ttl_seconds = 60, type = "header", name = "Authorization", allow_bypass = false },
] } }

[[machine]]
id = "m-fra-1"
app = "web"
region = "fra"
address = "10.0.1.1:8080"
state = "stopped"
  [machine.driver]
  kind = "exec"
  command = ["./web", "--port", "8080"]
  env = { RAILS_ENV = "production", EMPTY = "" }

[[machine]]
id = "m-ams-1"
app = "api"
address = "[fd00::1]:8080"
  [machine.driver]
  kind = "http"
  url = "https://api.machines.dev/"
  app = "api-prod"
  token_file = "fly.token"

[[machine]]
id = "m-ams-2"
app = "api"
address = "[fd00::2]:8080"
  [machine.driver]
  kind = "http"
  url = "http://orchestrator.internal:4280/fly"
  token_env = "ORCH_TOKEN"
`

func TestParseEveryKey(t *testing.T) {
	got, err := parse([]byte(fullConfig), "full.toml", "/etc/godwit", "test-host")
	if err != nil {
		t.Fatalf("parse: got error\n%v\nwant none", err)
	}
	want := &Config{
		Path:   "full.toml",
		Node:   Node{Name: "edge-ams-2", Region: "ams"},
		Listen: Listen{HTTP: "0.0.0.0:80", HTTPS: "0.0.0.0:443", HTTP3: "0.0.0.0:443", Admin: "10.0.0.1:9091"},
		TLS:    TLS{CertFile: "/etc/godwit/cert.pem", KeyFile: "/etc/godwit/key.pem"},
		Log:    Log{Level: slog.LevelDebug, Format: "text", Access: false},
		Admin:  Admin{TokenFile: "/etc/godwit/admin.token"},
		Gossip: Gossip{Bind: "10.0.0.1:7946", Advertise: "203.0.113.1:7946", Join: []string{"10.0.0.2:7946", "edge-fra-1.internal:7946"}, SecretKeyFile: "/etc/godwit/gossip.key"},
		Backhaul: Backhaul{Listen: "10.0.0.1:4433", Protocol: "h2", CertFile: "/etc/godwit/bh.pem", KeyFile: "/etc/godwit/bh.key",
			CAFile: "/etc/godwit/ca.pem", SimulatedRTT: map[string]time.Duration{"iad-nrt": 150 * time.Millisecond, "cdg-iad": 80 * time.Millisecond}},
		RegionCoords: map[string][2]float64{"xyz": {10.5, -20}},
		Proxy: Proxy{
			ReadHeaderTimeout:   3 * time.Second,
			IdleTimeout:         time.Minute,
			MaxHeaderBytes:      65536,
			ConnectTimeout:      1500 * time.Millisecond,
			ConnectRetries:      0,
			QueueTimeout:        0,
			MaxQueue:            10,
			UpstreamIdleTimeout: 4 * time.Second,
			MaxIdlePerMachine:   8,
			ReplayBodyLimit:     2 << 20,
			ReplayCacheEntries:  0,
			DrainTimeout:        time.Minute,
		},
		Autostart: Autostart{StopInterval: 15 * time.Second, WakeTimeout: 5 * time.Second, MaxWaiters: 0, RecentStop: 0, DrainTimeout: 2 * time.Second},
		Apps: []App{
			{
				Name:          "web",
				Hosts:         []string{"web.example.com", "www.example.com"},
				Org:           "acme",
				PrimaryRegion: "fra",
				KillSignal:    "SIGTERM",
				KillTimeout:   30 * time.Second,
				HTTPService: HTTPService{
					InternalPort:            8080,
					ForceHTTPS:              true,
					AutoStopMachines:        AutoStopSuspend,
					AutoStartMachines:       false,
					MinMachinesRunning:      2,
					MinMachinesRunningScope: MinMachinesScopeRegion,
					AutostopMaxPerPass:      4,
					Concurrency:             Concurrency{Type: ConcurrencyRequests, SoftLimit: 50, HardLimit: 60},
					Checks: []Check{
						{
							GracePeriod:   5 * time.Second,
							Interval:      10 * time.Second,
							Timeout:       500 * time.Millisecond,
							Method:        "HEAD",
							Path:          "/healthz",
							Protocol:      CheckHTTPS,
							TLSServerName: "web.internal",
							TLSSkipVerify: true,
							Headers:       map[string]string{"X-Forwarded-Proto": "https", "Authorization": "Bearer x"},
						},
						{Interval: 15 * time.Second, Timeout: 2 * time.Second, Method: "GET", Path: "/ready", Protocol: CheckHTTP},
					},
					TCPChecks: []Check{{GracePeriod: time.Second, Interval: 20 * time.Second, Timeout: 3 * time.Second}},
					ReplayCache: []ReplayCacheRule{
						{PathPrefix: "/", Pattern: replay.Pattern{}, TTL: 5 * time.Minute, Type: ReplayCacheCookie, Name: "session_id"},
						{PathPrefix: "Web.Example.com/api/*", Pattern: replay.Pattern{Host: "web.example.com", Path: "/api"},
							TTL: 365 * 24 * time.Hour, Type: ReplayCacheHeader, Name: "X-Session", AllowBypass: true},
						{PathPrefix: "/api", Pattern: replay.Pattern{Path: "/api"}, TTL: 10 * time.Second, Type: ReplayCacheCookie, Name: "__Host-sid"},
					},
				},
			},
			{
				Name:          "api",
				Hosts:         []string{"api.example.com"},
				Org:           "personal",
				PrimaryRegion: "ams",
				KillSignal:    "SIGINT",
				KillTimeout:   90 * time.Second,
				HTTPService: HTTPService{
					AutoStopMachines:        AutoStopStop,
					AutoStartMachines:       true,
					MinMachinesRunningScope: MinMachinesScopePrimary,
					AutostopMaxPerPass:      1,
					Concurrency:             Concurrency{Type: ConcurrencyConnections, SoftLimit: 20, HardLimit: 30},
					ReplayCache: []ReplayCacheRule{
						{PathPrefix: "/graphql/", Pattern: replay.Pattern{Path: "/graphql"}, TTL: time.Minute, Type: ReplayCacheHeader, Name: "Authorization"},
					},
				},
			},
		},
		Machines: []Machine{
			{ID: "m-fra-1", App: "web", Region: "fra", Address: "10.0.1.1:8080", State: StateStopped,
				Driver: Driver{Kind: DriverExec, Command: []string{"./web", "--port", "8080"}, Env: map[string]string{"RAILS_ENV": "production", "EMPTY": ""}}},
			{ID: "m-ams-1", App: "api", Region: "ams", Address: "[fd00::1]:8080", State: StateStarted,
				Driver: Driver{Kind: DriverHTTP, URL: "https://api.machines.dev", App: "api-prod", TokenFile: "/etc/godwit/fly.token"}},
			{ID: "m-ams-2", App: "api", Region: "ams", Address: "[fd00::2]:8080", State: StateStarted,
				Driver: Driver{Kind: DriverHTTP, URL: "http://orchestrator.internal:4280/fly", App: "api", TokenEnv: "ORCH_TOKEN"}},
		},
	}
	compareConfig(t, got, want)
}

// compareConfig reports each part of the config that differs.
func compareConfig(t *testing.T, got, want *Config) {
	t.Helper()
	gv, wv := reflect.ValueOf(*got), reflect.ValueOf(*want)
	for i := range gv.NumField() {
		name := gv.Type().Field(i).Name
		g, w := gv.Field(i).Interface(), wv.Field(i).Interface()
		if name == "Apps" || name == "Machines" {
			gs, ws := gv.Field(i), wv.Field(i)
			if gs.Len() != ws.Len() {
				t.Errorf("%s: got %d, want %d", name, gs.Len(), ws.Len())
				continue
			}
			for j := range gs.Len() {
				if g, w := gs.Index(j).Interface(), ws.Index(j).Interface(); !reflect.DeepEqual(g, w) {
					t.Errorf("%s[%d]:\ngot  %+v\nwant %+v", name, j, g, w)
				}
			}
			continue
		}
		if !reflect.DeepEqual(g, w) {
			t.Errorf("%s:\ngot  %+v\nwant %+v", name, g, w)
		}
	}
}

func TestDefaults(t *testing.T) {
	appCheck := Check{Interval: 15 * time.Second, Timeout: 2 * time.Second, Method: "GET", Path: "/", Protocol: "http"}
	tcpCheck := Check{Interval: 15 * time.Second, Timeout: 2 * time.Second}
	flyService := HTTPService{
		AutoStopMachines:        "off",
		AutoStartMachines:       true,
		MinMachinesRunningScope: "primary",
		AutostopMaxPerPass:      1,
		Concurrency:             Concurrency{Type: "connections", SoftLimit: 20, HardLimit: 0},
	}
	base := Config{
		Path:     "d.toml",
		Node:     Node{Name: "test-host", Region: "local"},
		Listen:   Listen{HTTP: "127.0.0.1:8080", Admin: "127.0.0.1:9090"},
		Log:      Log{Level: slog.LevelInfo, Format: "json", Access: true},
		Backhaul: Backhaul{Protocol: "mux"},
		Proxy: Proxy{
			ReadHeaderTimeout:   10 * time.Second,
			IdleTimeout:         120 * time.Second,
			MaxHeaderBytes:      32 << 10,
			ConnectTimeout:      5 * time.Second,
			ConnectRetries:      2,
			QueueTimeout:        10 * time.Second,
			MaxQueue:            1024,
			UpstreamIdleTimeout: 30 * time.Second,
			MaxIdlePerMachine:   64,
			ReplayBodyLimit:     1 << 20,
			ReplayCacheEntries:  10000,
			DrainTimeout:        30 * time.Second,
		},
		Autostart: Autostart{
			StopInterval: 60 * time.Second,
			WakeTimeout:  30 * time.Second,
			MaxWaiters:   1024,
			RecentStop:   5 * time.Minute,
			DrainTimeout: 10 * time.Second,
		},
	}
	app := func(name, host, region string, svc HTTPService) App {
		return App{Name: name, Hosts: []string{host}, Org: "personal", PrimaryRegion: region,
			KillSignal: "SIGINT", KillTimeout: 5 * time.Second, HTTPService: svc}
	}
	with := func(f func(c *Config)) *Config {
		c := base
		f(&c)
		return &c
	}
	tests := []struct {
		name string
		toml string
		want *Config
	}{
		{"empty file", "", &base},
		{"comments only", "# nothing\n\n", &base},
		{"empty tables", "[node]\n[listen]\n[tls]\n[log]\n[admin]\n[gossip]\n[backhaul]\n[proxy]\n[autostart]\n", &base},
		{
			"app and machine follow node region",
			`
[node]
region = "iad"
[[app]]
name = "web"
hosts = ["web.example.com"]
[[machine]]
id = "m1"
app = "web"
address = "127.0.0.1:3000"
`,
			with(func(c *Config) {
				c.Node.Region = "iad"
				c.Apps = []App{app("web", "web.example.com", "iad", flyService)}
				c.Machines = []Machine{{ID: "m1", App: "web", Region: "iad", Address: "127.0.0.1:3000", State: "started", Driver: Driver{Kind: "none"}}}
			}),
		},
		{
			"empty check tables",
			`
[[app]]
name = "web"
hosts = ["web.example.com"]
[[app.http_service.checks]]
[[app.http_service.tcp_checks]]
[app.http_service.concurrency]
[app.http_service.http_options]
`,
			with(func(c *Config) {
				svc := flyService
				svc.Checks = []Check{appCheck}
				svc.TCPChecks = []Check{tcpCheck}
				c.Apps = []App{app("web", "web.example.com", "local", svc)}
			}),
		},
		{
			"replay cache off, rule with defaults",
			"[proxy]\nreplay_cache_entries = 0\n[[app]]\nname = \"a\"\nhosts = [\"a\"]\n" +
				"[[app.http_service.http_options.replay_cache]]\npath_prefix = \"a.example/\"\nttl_seconds = 10\ntype = \"header\"\nname = \"x-sid\"\n",
			with(func(c *Config) {
				c.Proxy.ReplayCacheEntries = 0
				svc := flyService
				svc.ReplayCache = []ReplayCacheRule{{PathPrefix: "a.example/", Pattern: replay.Pattern{Host: "a.example"}, TTL: 10 * time.Second, Type: "header", Name: "x-sid"}}
				c.Apps = []App{app("a", "a", "local", svc)}
			}),
		},
		{
			"listeners turned off",
			"[listen]\nhttp = \"\"\nadmin = \"\"\n",
			with(func(c *Config) { c.Listen = Listen{} }),
		},
		{
			"hard limit zero means none",
			"[[app]]\nname = \"a\"\nhosts = [\"a\"]\n[app.http_service.concurrency]\nsoft_limit = 100\nhard_limit = 0\n",
			with(func(c *Config) {
				svc := flyService
				svc.Concurrency.SoftLimit = 100
				c.Apps = []App{app("a", "a", "local", svc)}
			}),
		},
		{
			"http driver follows the machine's app and FLY_API_TOKEN",
			"[[app]]\nname = \"a\"\nhosts = [\"a\"]\n[[machine]]\nid = \"m1\"\napp = \"a\"\naddress = \"127.0.0.1:1\"\n" +
				"driver = { kind = \"http\", url = \"https://api.machines.dev\" }\n",
			with(func(c *Config) {
				c.Apps = []App{app("a", "a", "local", flyService)}
				c.Machines = []Machine{{ID: "m1", App: "a", Region: "local", Address: "127.0.0.1:1", State: "started",
					Driver: Driver{Kind: "http", URL: "https://api.machines.dev", App: "a", TokenEnv: "FLY_API_TOKEN"}}}
			}),
		},
		{
			"http driver with a token file has no token env",
			"[[app]]\nname = \"a\"\nhosts = [\"a\"]\n[[machine]]\nid = \"m1\"\napp = \"a\"\naddress = \"127.0.0.1:1\"\n" +
				"driver = { kind = \"http\", url = \"https://api.machines.dev\", token_file = \"/run/token\" }\n",
			with(func(c *Config) {
				c.Apps = []App{app("a", "a", "local", flyService)}
				c.Machines = []Machine{{ID: "m1", App: "a", Region: "local", Address: "127.0.0.1:1", State: "started",
					Driver: Driver{Kind: "http", URL: "https://api.machines.dev", App: "a", TokenFile: "/run/token"}}}
			}),
		},
		{
			"auto_stop_machines false",
			"[[app]]\nname = \"a\"\nhosts = [\"a\"]\n[app.http_service]\nauto_stop_machines = false\n",
			with(func(c *Config) {
				c.Apps = []App{app("a", "a", "local", flyService)}
			}),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parse([]byte(tt.toml), "d.toml", "", "test-host")
			if err != nil {
				t.Fatalf("got error\n%v\nwant none", err)
			}
			compareConfig(t, got, tt.want)
		})
	}
}

// TestReplayCacheAccepts checks rules that are valid although they may look
// wrong: a cookie may be named fly-..., hosts make patterns differ, and two
// apps may use the same pattern.
func TestReplayCacheAccepts(t *testing.T) {
	const data = `
[[app]]
name = "web"
hosts = ["web.example.com"]
  [[app.http_service.http_options.replay_cache]]
  path_prefix = "/api"
  ttl_seconds = 60
  type = "cookie"
  name = "fly-sid"
  [[app.http_service.http_options.replay_cache]]
  path_prefix = "web.example.com/api"
  ttl_seconds = 60
  type = "header"
  name = "Authorization"
[[app]]
name = "api"
hosts = ["api.example.com"]
  [[app.http_service.http_options.replay_cache]]
  path_prefix = "/api/*"
  ttl_seconds = 60
  type = "cookie"
  name = "sid"
`
	cfg, err := Parse([]byte(data), "r.toml")
	if err != nil {
		t.Fatalf("got error\n%v\nwant none", err)
	}
	var got []replay.Pattern
	for _, a := range cfg.Apps {
		for _, r := range a.HTTPService.ReplayCache {
			got = append(got, r.Pattern)
		}
	}
	want := []replay.Pattern{{Path: "/api"}, {Host: "web.example.com", Path: "/api"}, {Path: "/api"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("patterns: got %+v, want %+v", got, want)
	}
}

func TestParseUsesHostName(t *testing.T) {
	host, err := os.Hostname()
	if err != nil || host == "" {
		t.Skip("no host name")
	}
	cfg, err := Parse(nil, "embedded")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Node.Name != host {
		t.Errorf("node name: got %q, want the host name %q", cfg.Node.Name, host)
	}
	if cfg.Path != "" {
		t.Errorf("path: got %q, want \"\" for a parsed config", cfg.Path)
	}
}

func TestDurations(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
	}{
		{`"10s"`, 10 * time.Second},
		{`"800ms"`, 800 * time.Millisecond},
		{`"1m30s"`, 90 * time.Second},
		{`"0s"`, 0},
		{`0`, 0},
		{`1500`, 1500 * time.Millisecond},
		{`1_000`, time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			cfg, err := Parse([]byte("[proxy]\ndrain_timeout = "+tt.in+"\n"), "t.toml")
			if err != nil {
				t.Fatalf("got error %v, want none", err)
			}
			if got := cfg.Proxy.DrainTimeout; got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestLoadResolvesPaths(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "godwit.toml")
	data := `
[tls]
cert_file = "certs/cert.pem"
key_file = "/abs/key.pem"
[admin]
token_file = "admin.token"
[gossip]
bind = "127.0.0.1:7946"
secret_key_file = "../gossip.key"
`
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(path)
	if err != nil {
		t.Fatalf("Load: got error %v, want none", err)
	}
	for _, c := range []struct{ name, got, want string }{
		{"path", cfg.Path, path},
		{"tls.cert_file", cfg.TLS.CertFile, filepath.Join(dir, "certs/cert.pem")},
		{"tls.key_file", cfg.TLS.KeyFile, "/abs/key.pem"},
		{"admin.token_file", cfg.Admin.TokenFile, filepath.Join(dir, "admin.token")},
		{"gossip.secret_key_file", cfg.Gossip.SecretKeyFile, filepath.Join(filepath.Dir(dir), "gossip.key")},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, c.got, c.want)
		}
	}

	// Parse leaves relative paths alone.
	pc, err := Parse([]byte(data), "embedded.toml")
	if err != nil {
		t.Fatalf("Parse: got error %v, want none", err)
	}
	if pc.TLS.CertFile != "certs/cert.pem" {
		t.Errorf("Parse: tls.cert_file: got %q, want %q", pc.TLS.CertFile, "certs/cert.pem")
	}
}

func TestLoadExample(t *testing.T) {
	cfg, err := Load("testdata/example.toml")
	if err != nil {
		t.Fatalf("Load: got error\n%v\nwant none", err)
	}
	if got, want := len(cfg.Apps), 2; got != want {
		t.Errorf("apps: got %d, want %d", got, want)
	}
	if got, want := len(cfg.Machines), 4; got != want {
		t.Errorf("machines: got %d, want %d", got, want)
	}
	if got, want := cfg.Node.Region, "iad"; got != want {
		t.Errorf("node.region: got %q, want %q", got, want)
	}
	if got, want := cfg.Proxy.ReplayCacheEntries, 10000; got != want {
		t.Errorf("proxy.replay_cache_entries: got %d, want %d", got, want)
	}
	wantRules := []ReplayCacheRule{{PathPrefix: "/", TTL: 300 * time.Second, Type: ReplayCacheCookie, Name: "session_id"}}
	if len(cfg.Apps) > 0 && !reflect.DeepEqual(cfg.Apps[0].HTTPService.ReplayCache, wantRules) {
		t.Errorf("app web: replay_cache:\ngot  %+v\nwant %+v", cfg.Apps[0].HTTPService.ReplayCache, wantRules)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.toml"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("got %v, want an error wrapping fs.ErrNotExist", err)
	}
	var errs Errors
	if errors.As(err, &errs) {
		t.Errorf("got Errors %v, want a read error", errs)
	}
}

func TestLoadNotRegular(t *testing.T) {
	_, err := Load(t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("got %v, want a \"not a regular file\" error", err)
	}
}

func TestErrorString(t *testing.T) {
	tests := []struct {
		err  Error
		want string
	}{
		{Error{File: "g.toml", Line: 3, Key: "node.name", Msg: "must be a string"}, "g.toml:3: node.name: must be a string"},
		{Error{File: "g.toml", Line: 3, Msg: "bad"}, "g.toml:3: bad"},
		{Error{File: "g.toml", Key: "k", Msg: "bad"}, "g.toml: k: bad"},
		{Error{Msg: "bad"}, "bad"},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("got %q, want %q", got, tt.want)
		}
	}
	errs := Errors{tests[0].err, tests[1].err}
	if got, want := errs.Error(), "g.toml:3: node.name: must be a string\ng.toml:3: bad"; got != want {
		t.Errorf("Errors: got %q, want %q", got, want)
	}
	var e Error
	if !errors.As(error(errs), &e) || e != tests[0].err {
		t.Errorf("errors.As: got %v, want the first Error", e)
	}
}
