package config

import (
	"errors"
	"os"
	"testing"
)

// FuzzParse checks that no input makes Parse panic, and that an input is
// either a config or an Errors whose every error has a line inside the file.
func FuzzParse(f *testing.F) {
	example, err := os.ReadFile("testdata/example.toml")
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []string{
		"",
		string(example),
		fullConfig,
		minimalApp,
		"[node]\nname = \"a\"\n[listen\n",
		"[[app]]\nname = 1\nhosts = [\"a:1\", 2, {x = 1}]\n[[app.http_service.checks]]\ninterval = -1\n",
		"app = [{name = \"a\", hosts = [\"a\"], http_service = {concurrency = {hard_limit = 1, soft_limit = 2}}}]\n",
		"[[machine]]\nid = \"m\"\napp = \"x\"\ndriver = {kind = \"exec\", command = [[\"a\"]]}\n",
		"a.b.c = 1\n[a.b.d]\n[[x.y]]\n[[x.y.z]]\n[x.y.z.w]\n",
		"[proxy]\nidle_timeout = 9223372036854775807\nmax_queue = -9223372036854775808\n",
		minimalApp + "kill_signal = \"SIGSTOP\"\nkill_timeout = -9223372036854775808\n[autostart]\nstop_interval = 1\n" +
			"[[machine]]\nid = \"m\"\napp = \"web\"\naddress = \"a:1\"\ndriver = {kind = \"http\", url = \"http://[::1\", token_env = \"\", env = {A = 1}}\n",
		replayRule + "path_prefix = \"a.example/x/*\"\nttl_seconds = 10\ntype = \"header\"\nname = \"fly-x\"\n" +
			"[[app.http_service.http_options.replay_cache]]\npath_prefix = \"/x\"\nallow_bypass = 1\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data, "fuzz.toml")
		if err == nil {
			if cfg == nil {
				t.Fatal("got no config and no error")
			}
			return
		}
		if cfg != nil {
			t.Fatalf("got a config and the error %v", err)
		}
		var errs Errors
		if !errors.As(err, &errs) || len(errs) == 0 {
			t.Fatalf("got error %v (%T), want non-empty Errors", err, err)
		}
		lines := 1
		for _, c := range data {
			if c == '\n' {
				lines++
			}
		}
		for _, e := range errs {
			if e.File == "fuzz.toml" && (e.Line < 1 || e.Line > lines) {
				t.Errorf("error %q: line %d is outside the file's %d lines", e, e.Line, lines)
			}
		}
	})
}
