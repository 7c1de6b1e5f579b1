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
reload_interval = "1m"
  [[tls.certificate]]
  cert_file = "a.pem"
  key_file = "a.key"
  hosts = ["A.example.com", "*.a.example.com"]
  [[tls.certificate]]
  cert_file = "b.pem"
  key_file = "/keys/b.key"

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
body_read_timeout = "20s"
body_write_timeout = 0
connect_timeout = "1500ms"
connect_retries = 0
queue_timeout = "0s"
max_queue = 10
upstream_idle_timeout = "4s"
max_idle_per_machine = 8
replay_body_limit = 2097152
replay_cache_entries = 0
drain_timeout = "1m"
drain_delay = "250ms"

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
		TLS: TLS{CertFile: "/etc/godwit/cert.pem", KeyFile: "/etc/godwit/key.pem", ReloadInterval: time.Minute,
			Certificates: []TLSCertificate{
				{CertFile: "/etc/godwit/a.pem", KeyFile: "/etc/godwit/a.key", Hosts: []string{"a.example.com", "*.a.example.com"}},
				{CertFile: "/etc/godwit/b.pem", KeyFile: "/keys/b.key"},
			}},
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
			BodyReadTimeout:     20 * time.Second,
			BodyWriteTimeout:    0,
			ConnectTimeout:      1500 * time.Millisecond,
			ConnectRetries:      0,
			QueueTimeout:        0,
			MaxQueue:            10,
			UpstreamIdleTimeout: 4 * time.Second,
			MaxIdlePerMachine:   8,
			ReplayBodyLimit:     2 << 20,
			ReplayCacheEntries:  0,
			DrainTimeout:        time.Minute,
			DrainDelay:          250 * time.Millisecond,
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
		TLS:      TLS{ReloadInterval: 5 * time.Second},
		Backhaul: Backhaul{Protocol: "mux"},
		Proxy: Proxy{
			ReadHeaderTimeout:   10 * time.Second,
			IdleTimeout:         120 * time.Second,
			MaxHeaderBytes:      32 << 10,
			BodyReadTimeout:     time.Minute,
			BodyWriteTimeout:    time.Minute,
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

// certA is a [[tls.certificate]] with its files, on lines 1 to 3; its
// further keys start on line 4.
const certA = "[[tls.certificate]]\ncert_file = \"a.pem\"\nkey_file = \"a.key\"\n"

// tc0 and tc1 prefix the keys of the first and second [[tls.certificate]].
const (
	tc0 = "tls.certificate[0]."
	tc1 = "tls.certificate[1]."
)

func TestTLSCertificateErrors(t *testing.T) {
	tests := []struct {
		name string
		toml string
		want []wantErr
	}{
		{"certificate without key", "[tls]\n[[tls.certificate]]\ncert_file = \"a.pem\"\n", []wantErr{{3, tc0 + "cert_file", "key_file is required with cert_file"}}},
		{"key without certificate", "[[tls.certificate]]\nkey_file = \"a.key\"\n", []wantErr{{2, tc0 + "key_file", "cert_file is required with key_file"}}},
		{"neither file", "[[tls.certificate]]\nhosts = [\"a.example.com\"]\n", []wantErr{{1, tc0 + "cert_file", "needs cert_file and key_file"}}},
		{"second certificate without key", certA + "[[tls.certificate]]\n\ncert_file = \"b.pem\"\n", []wantErr{{6, tc1 + "cert_file", "key_file is required"}}},
		{"default without key still reported", "[tls]\ncert_file = \"c.pem\"\n" + certA, []wantErr{{2, "tls.cert_file", "tls.key_file is required with tls.cert_file"}}},
		{"number for cert_file", "[[tls.certificate]]\ncert_file = 1\nkey_file = \"a.key\"\n", []wantErr{{2, tc0 + "cert_file", "must be a string"}}},
		{"bad hosts", certA + "hosts = [\n  \"a.example.com:443\",\n  \"https://a.example.com\",\n  \"10.0.0.1\",\n  \"a.*.example.com\",\n  \"*\",\n  \"a..example.com\",\n  \"[::1]\",\n  \"*.*.example.com\",\n  \"example.com.\",\n]\n",
			[]wantErr{
				{5, tc0 + "hosts[0]", "must not have a port"},
				{6, tc0 + "hosts[1]", "not a URL"},
				{7, tc0 + "hosts[2]", "never send an IP address"},
				{8, tc0 + "hosts[3]", "wildcard is a whole first label"},
				{9, tc0 + "hosts[4]", "wildcard is a whole first label"},
				{10, tc0 + "hosts[5]", "empty labels"},
				{11, tc0 + "hosts[6]", "never send an IP address"},
				{12, tc0 + "hosts[7]", "wildcard is a whole first label"},
				{13, tc0 + "hosts[8]", "empty labels"},
			}},
		{"empty hosts", certA + "hosts = []\n", []wantErr{{4, tc0 + "hosts", "at least one host"}}},
		{"string for hosts", certA + "hosts = \"a.example.com\"\n", []wantErr{{4, tc0 + "hosts", "must be an array of strings"}}},
		{"host listed twice", certA + "hosts = [\"a.example.com\", \"A.example.com\"]\n", []wantErr{{4, tc0 + "hosts[1]", `host "a.example.com" is listed twice (line 4)`}}},
		{"host in two certificates", certA + "hosts = [\"a.example.com\"]\n[[tls.certificate]]\ncert_file = \"b.pem\"\nkey_file = \"b.key\"\nhosts = [\n  \"*.example.com\",\n  \"A.example.com\",\n]\n",
			[]wantErr{{10, tc1 + "hosts[1]", `host "a.example.com" is already served by tls.certificate[0] (line 4)`}}},
		{"negative reload interval", "[tls]\n\nreload_interval = \"-1s\"\n", []wantErr{{3, "tls.reload_interval", "must not be negative"}}},
		{"bad reload interval", "[tls]\nreload_interval = \"often\"\n", []wantErr{{2, "tls.reload_interval", "bad duration"}}},
		{"unknown key in certificate", certA + "host = [\"a.example.com\"]\n", []wantErr{{4, tc0 + "host", `did you mean "hosts"?`}}},
		{"certificate as a table", "[tls.certificate]\ncert_file = \"a.pem\"\nkey_file = \"a.key\"\n", []wantErr{{1, "tls.certificate", "must be an array of tables ([[tls.certificate]])"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse([]byte(tt.toml), "t.toml", "", "test-host")
			checkErrors(t, err, "t.toml", tt.want)
		})
	}
}

func TestTLSCertificates(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "godwit.toml")
	data := `
[tls]
reload_interval = 0
[[tls.certificate]]
cert_file = "certs/a.pem"
key_file  = "certs/a.key"
hosts     = ["A.Example.com", "*.b.example.com", "localhost"]
[[tls.certificate]]
cert_file = "/etc/c.pem"
key_file  = "../c.key"
`
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(path)
	if err != nil {
		t.Fatalf("Load: got error\n%v\nwant none", err)
	}
	want := TLS{Certificates: []TLSCertificate{
		{CertFile: filepath.Join(dir, "certs/a.pem"), KeyFile: filepath.Join(dir, "certs/a.key"), Hosts: []string{"a.example.com", "*.b.example.com", "localhost"}},
		{CertFile: "/etc/c.pem", KeyFile: filepath.Join(filepath.Dir(dir), "c.key")},
	}}
	if !reflect.DeepEqual(cfg.TLS, want) {
		t.Errorf("tls:\ngot  %+v\nwant %+v", cfg.TLS, want)
	}

	// Parse leaves relative paths alone.
	pc, err := Parse([]byte(data), "embedded.toml")
	if err != nil {
		t.Fatalf("Parse: got error %v, want none", err)
	}
	if got := pc.TLS.Certificates[0].CertFile; got != "certs/a.pem" {
		t.Errorf("Parse: tls.certificate[0].cert_file: got %q, want %q", got, "certs/a.pem")
	}
}

func TestConnectionLimits(t *testing.T) {
	good := []struct {
		name         string
		toml         string
		node, perApp int
	}{
		{"defaults: derived node cap, none per app", "", 0, 0},
		{"both", "[proxy]\nmax_connections = 20000\nmax_connections_per_app = 2048\n", 20000, 2048},
		{"per app equal to node", "[proxy]\nmax_connections = 3\nmax_connections_per_app = 3\n", 3, 3},
		{"per app with a derived node cap", "[proxy]\nmax_connections_per_app = 500\n", 0, 500},
		{"explicit zeros", "[proxy]\nmax_connections = 0\nmax_connections_per_app = 0\n", 0, 0},
	}
	for _, tc := range good {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tc.toml), "c.toml")
			if err != nil {
				t.Fatalf("got error\n%v\nwant none", err)
			}
			if cfg.Proxy.MaxConnections != tc.node || cfg.Proxy.MaxConnectionsPerApp != tc.perApp {
				t.Errorf("got max_connections %d, max_connections_per_app %d; want %d, %d",
					cfg.Proxy.MaxConnections, cfg.Proxy.MaxConnectionsPerApp, tc.node, tc.perApp)
			}
		})
	}

	bad := []struct {
		name string
		toml string
		want []wantErr
	}{
		{"negative node", "[proxy]\n\nmax_connections = -1\n", []wantErr{{3, "proxy.max_connections", "must not be negative"}}},
		{"negative per app", "[proxy]\nmax_connections_per_app = -5\n", []wantErr{{2, "proxy.max_connections_per_app", "must not be negative"}}},
		{"node too large", "[proxy]\nmax_connections = 10000001\n", []wantErr{{2, "proxy.max_connections", "at most 10000000"}}},
		{"per app too large", "[proxy]\nmax_connections_per_app = 99999999999\n", []wantErr{{2, "proxy.max_connections_per_app", "at most 10000000"}}},
		{"node not an integer", "[proxy]\nmax_connections = \"many\"\n", []wantErr{{2, "proxy.max_connections", "integer"}}},
		{"per app a float", "[proxy]\nmax_connections_per_app = 1.5\n", []wantErr{{2, "proxy.max_connections_per_app", "integer"}}},
		{"per app above node", "[proxy]\nmax_connections = 100\n\nmax_connections_per_app = 101\n",
			[]wantErr{{4, "proxy.max_connections_per_app", "more than proxy.max_connections (100)"}}},
		{"per app above a bad node: only the node's error", "[proxy]\nmax_connections = -3\nmax_connections_per_app = 101\n",
			[]wantErr{{2, "proxy.max_connections", "must not be negative"}}},
		{"misspelt", "[proxy]\nmax_connection = 10\n", []wantErr{{2, "proxy.max_connection", `did you mean "max_connections"?`}}},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.toml), "c.toml")
			checkErrors(t, err, "c.toml", tc.want)
		})
	}
}
