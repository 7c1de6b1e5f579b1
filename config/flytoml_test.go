package config

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/godwit/godwit/replay"
)

// A fly.toml as `fly launch` writes it, plus checks and http_options.
const flyToml = `app = 'web-prod'
primary_region = 'ord'
kill_signal = 'SIGTERM'
kill_timeout = 10

[build]
  image = 'registry.fly.io/web:latest'

[env]
  PORT = '8080'

[http_service]
  internal_port = 8080
  force_https = true
  auto_stop_machines = true
  auto_start_machines = true
  min_machines_running = 1
  processes = ['app']

  [http_service.concurrency]
    type = 'requests'
    soft_limit = 100
    hard_limit = 150

  [[http_service.checks]]
    grace_period = '10s'
    interval = 30000
    method = 'get'
    path = '/up'

  [http_service.http_options]
    compress = true
    h2_backend = false
    idle_timeout = 600
    headers_read_timeout = 10
    [http_service.http_options.response]
      pristine = true
      [http_service.http_options.response.headers]
        X-Frame-Options = 'DENY'

  [[http_service.http_options.replay_cache]]
    path_prefix = '/'
    ttl_seconds = 300
    type = 'cookie'
    name = 'session_id'

  [[http_service.http_options.replay_cache]]
    path_prefix = 'api.example.com/api/*'
    ttl_seconds = 3600
    type = 'header'
    name = 'Authorization'
    allow_bypass = true

[[vm]]
  memory = '1gb'
  cpu_kind = 'shared'
  cpus = 1

[[services]]
  internal_port = 9000
  protocol = 'tcp'
`

// writeFiles writes name → contents under a new temporary directory and
// returns it.
func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, data := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestFlyTomlImport(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"etc/godwit.toml": `
[node]
region = "iad"
[[app]]
name = "web"
hosts = ["web.example.com"]
fly_toml = "../apps/web/fly.toml"
[[app]]
name = "own-region"
hosts = ["own.example.com"]
primary_region = "lhr"
kill_timeout = "2s"
fly_toml = "../apps/web/fly.toml"
[[app]]
name = "no-service"
hosts = ["bare.example.com"]
fly_toml = "../apps/bare/fly.toml"
[[app]]
name = "string-timeout"
hosts = ["slow.example.com"]
kill_signal = "SIGUSR1"
fly_toml = "../apps/slow/fly.toml"
`,
		"apps/web/fly.toml":  flyToml,
		"apps/bare/fly.toml": "app = 'bare'\n[[services]]\ninternal_port = 80\n",
		"apps/slow/fly.toml": "kill_signal = 'SIGQUIT'\nkill_timeout = '2m30s'\n[http_service]\nmin_machines_running_scope = 'region'\nautostop_max_per_pass = 3\n",
	})
	cfg, err := Load(filepath.Join(dir, "etc/godwit.toml"))
	if err != nil {
		t.Fatalf("Load: got error\n%v\nwant none", err)
	}
	wantSvc := HTTPService{
		InternalPort:            8080,
		ForceHTTPS:              true,
		AutoStopMachines:        AutoStopStop,
		AutoStartMachines:       true,
		MinMachinesRunning:      1,
		MinMachinesRunningScope: MinMachinesScopePrimary,
		AutostopMaxPerPass:      1,
		Concurrency:             Concurrency{Type: ConcurrencyRequests, SoftLimit: 100, HardLimit: 150},
		Checks: []Check{{
			GracePeriod: 10 * time.Second,
			Interval:    30 * time.Second,
			Timeout:     2 * time.Second,
			Method:      "GET",
			Path:        "/up",
			Protocol:    CheckHTTP,
		}},
		ReplayCache: []ReplayCacheRule{
			{PathPrefix: "/", TTL: 300 * time.Second, Type: ReplayCacheCookie, Name: "session_id"},
			{PathPrefix: "api.example.com/api/*", Pattern: replay.Pattern{Host: "api.example.com", Path: "/api"},
				TTL: time.Hour, Type: ReplayCacheHeader, Name: "Authorization", AllowBypass: true},
		},
	}
	defaultSvc := HTTPService{
		AutoStopMachines:        AutoStopOff,
		AutoStartMachines:       true,
		MinMachinesRunningScope: MinMachinesScopePrimary,
		AutostopMaxPerPass:      1,
		Concurrency:             Concurrency{Type: ConcurrencyConnections, SoftLimit: 20},
	}
	regionSvc := defaultSvc
	regionSvc.MinMachinesRunningScope = MinMachinesScopeRegion
	regionSvc.AutostopMaxPerPass = 3
	tests := []struct {
		app        int
		wantRegion string
		wantSignal string
		wantKill   time.Duration
		wantSvc    HTTPService
	}{
		{0, "ord", "SIGTERM", 10 * time.Second, wantSvc},    // primary_region, kill_* from the fly.toml; kill_timeout in seconds
		{1, "lhr", "SIGTERM", 2 * time.Second, wantSvc},     // the app's own primary_region and kill_timeout win
		{2, "iad", "SIGINT", 5 * time.Second, defaultSvc},   // no [http_service], no kill_*: Fly's defaults
		{3, "iad", "SIGUSR1", 150 * time.Second, regionSvc}, // a duration string; the app's own kill_signal wins
	}
	for _, tt := range tests {
		a := cfg.Apps[tt.app]
		if a.PrimaryRegion != tt.wantRegion {
			t.Errorf("app %s: primary_region: got %q, want %q", a.Name, a.PrimaryRegion, tt.wantRegion)
		}
		if a.KillSignal != tt.wantSignal || a.KillTimeout != tt.wantKill {
			t.Errorf("app %s: kill_signal, kill_timeout: got %q, %v, want %q, %v", a.Name, a.KillSignal, a.KillTimeout, tt.wantSignal, tt.wantKill)
		}
		if !reflect.DeepEqual(a.HTTPService, tt.wantSvc) {
			t.Errorf("app %s: http_service:\ngot  %+v\nwant %+v", a.Name, a.HTTPService, tt.wantSvc)
		}
	}
}

func TestFlyTomlErrors(t *testing.T) {
	tests := []struct {
		name     string
		godwit   string
		fly      string
		wantFile string // "godwit" or "fly"
		want     []wantErr
	}{
		{
			name:     "both fly_toml and http_service",
			godwit:   "[[app]]\nname = \"web\"\nhosts = [\"w\"]\nfly_toml = \"fly.toml\"\n[app.http_service]\nforce_https = true\n",
			fly:      flyToml,
			wantFile: "godwit",
			want:     []wantErr{{5, "app[0].http_service", "both fly_toml and [http_service]"}},
		},
		{
			name:     "missing fly.toml",
			godwit:   "[[app]]\nname = \"web\"\nhosts = [\"w\"]\nfly_toml = \"nope.toml\"\n",
			wantFile: "godwit",
			want:     []wantErr{{4, "app[0].fly_toml", "no such file"}},
		},
		{
			name:     "syntax error in fly.toml",
			godwit:   "[[app]]\nname = \"web\"\nhosts = [\"w\"]\nfly_toml = \"fly.toml\"\n",
			fly:      "app = 'web'\n\n[http_service\n",
			wantFile: "fly",
			want:     []wantErr{{3, "", "expected ']'"}},
		},
		{
			name:     "bad values in fly.toml",
			godwit:   "[[app]]\nname = \"web\"\nhosts = [\"w\"]\nfly_toml = \"fly.toml\"\n",
			fly:      "primary_region = 7\n[env]\nX = 1\n[http_service]\nauto_stop_machines = 'later'\nforce_htps = true\n[http_service.concurrency]\nsoft_limit = 10\nhard_limit = 5\n[[http_service.checks]]\ninterval = '1 minute'\n",
			wantFile: "fly",
			want: []wantErr{
				{1, "primary_region", "must be a string"},
				{5, "http_service.auto_stop_machines", `unknown value "later"`},
				{6, "http_service.force_htps", `did you mean "force_https"?`},
				{9, "http_service.concurrency.hard_limit", "below soft_limit 10 (line 8)"},
				{11, "http_service.checks[0].interval", "bad duration"},
			},
		},
		{
			name:     "bad kill_* in fly.toml",
			godwit:   "[[app]]\nname = \"web\"\nhosts = [\"w\"]\nfly_toml = \"fly.toml\"\n",
			fly:      "app = 'web'\nkill_signal = 'SIGSTOP'\nkill_timeout = 301\n",
			wantFile: "fly",
			want: []wantErr{
				{2, "kill_signal", "SIGSTOP pauses a process"},
				{3, "kill_timeout", "at most 300 seconds"},
			},
		},
		{
			name:     "app's own kill_* hide the fly.toml's",
			godwit:   "[[app]]\nname = \"web\"\nhosts = [\"w\"]\nfly_toml = \"fly.toml\"\nkill_signal = \"SIGHUP\"\nkill_timeout = \"10m\"\n",
			fly:      "kill_signal = 'SIGINT'\nkill_timeout = 5\n",
			wantFile: "godwit",
			want: []wantErr{
				{5, "app[0].kill_signal", `unknown value "SIGHUP"`},
				{6, "app[0].kill_timeout", "at most 5m0s"},
			},
		},
		{
			name:   "bad replay_cache in fly.toml",
			godwit: "[[app]]\nname = \"web\"\nhosts = [\"w\"]\nfly_toml = \"fly.toml\"\n",
			fly: "[http_service]\n[http_service.http_options]\ncompres = true\n" +
				"[[http_service.http_options.replay_cache]]\npath_prefix = '/a'\nttl_seconds = 1\ntype = 'header'\nname = 'fly-id'\n" +
				"[[http_service.http_options.replay_cache]]\npath_prefix = '/a/'\n",
			wantFile: "fly",
			want: []wantErr{
				{3, "http_service.http_options.compres", `did you mean "compress"?`},
				{6, "http_service.http_options.replay_cache[0].ttl_seconds", "must be at least 10"},
				{8, "http_service.http_options.replay_cache[0].name", "removes fly- headers"},
				{9, "http_service.http_options.replay_cache[1].ttl_seconds", "needs ttl_seconds"},
				{9, "http_service.http_options.replay_cache[1].type", "needs a type"},
				{9, "http_service.http_options.replay_cache[1].name", "needs a name"},
				{10, "http_service.http_options.replay_cache[1].path_prefix", `"/a/" is the same pattern as "/a" (line 5)`},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			files := map[string]string{"godwit.toml": tt.godwit}
			if tt.fly != "" {
				files["fly.toml"] = tt.fly
			}
			dir := writeFiles(t, files)
			_, err := Load(filepath.Join(dir, "godwit.toml"))
			file := filepath.Join(dir, "godwit.toml")
			if tt.wantFile == "fly" {
				file = filepath.Join(dir, "fly.toml")
			}
			checkErrors(t, err, file, tt.want)
		})
	}
}

// TestFlyTomlErrorsWithConfigErrors checks that errors of both files are
// reported together, the config file's first.
func TestFlyTomlErrorsWithConfigErrors(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"godwit.toml": "[[app]]\nname = \"web\"\nhosts = [\"w\"]\nfly_toml = \"fly.toml\"\n[log]\nlevel = \"x\"\n",
		"fly.toml":    "[http_service]\nmin_machines_running = -1\n",
	})
	_, err := Load(filepath.Join(dir, "godwit.toml"))
	errs, ok := err.(Errors)
	if !ok || len(errs) != 2 {
		t.Fatalf("got %v, want 2 errors", err)
	}
	if got, want := errs[0].Error(), filepath.Join(dir, "godwit.toml")+":6: log.level: "; got[:len(want)] != want {
		t.Errorf("first error: got %q, want it to start %q", got, want)
	}
	if got, want := errs[1].Error(), filepath.Join(dir, "fly.toml")+":2: http_service.min_machines_running: "; got[:len(want)] != want {
		t.Errorf("second error: got %q, want it to start %q", got, want)
	}
}
