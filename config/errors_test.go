package config

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// wantErr is one expected error: its exact line and key, and a part of its
// message.
type wantErr struct {
	line int
	key  string
	msg  string
}

// checkErrors asserts that err is an Errors holding exactly want, in order.
func checkErrors(t *testing.T, err error, file string, want []wantErr) {
	t.Helper()
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("got error %v (%T), want Errors", err, err)
	}
	var b strings.Builder
	for _, e := range errs {
		fmt.Fprintf(&b, "\n\t%v", e)
	}
	if len(errs) != len(want) {
		t.Fatalf("got %d errors:%s\nwant %d: %v", len(errs), b.String(), len(want), want)
	}
	for i, w := range want {
		e := errs[i]
		if e.File != file || e.Line != w.line || e.Key != w.key || !strings.Contains(e.Msg, w.msg) {
			t.Errorf("error %d: got %s:%d: %s: %s\nwant %s:%d: %s: ...%s...", i, e.File, e.Line, e.Key, e.Msg, file, w.line, w.key, w.msg)
		}
	}
}

const minimalApp = "[[app]]\nname = \"web\"\nhosts = [\"web.example.com\"]\n"

// replayRule is minimalApp with a replay_cache rule's header on line 4.
const replayRule = minimalApp + "[[app.http_service.http_options.replay_cache]]\n"

// rule is replayRule with its four required keys set to the given TOML
// values: path_prefix on line 5, ttl_seconds 6, type 7, name 8.
func rule(pathPrefix, ttl, typ, name string) string {
	return replayRule + "path_prefix = " + pathPrefix + "\nttl_seconds = " + ttl + "\ntype = " + typ + "\nname = " + name + "\n"
}

// machineDriver is minimalApp with a machine whose [machine.driver] header
// is on line 8: its keys start on line 9.
const machineDriver = minimalApp + "[[machine]]\nid = \"m1\"\napp = \"web\"\naddress = \"127.0.0.1:1\"\n[machine.driver]\n"

// rk is the key of the first replay_cache rule's k.
func rk(k string) string { return "app[0].http_service.http_options.replay_cache[0]." + k }

func TestErrors(t *testing.T) {
	tests := []struct {
		name string
		toml string
		want []wantErr
	}{
		// TOML itself.
		{"syntax: unclosed table", "[node]\nname = \"a\"\n[listen\n", []wantErr{{3, "", "expected ']'"}}},
		{"syntax: unterminated string", "\n[node]\nname = \"a\n", []wantErr{{3, "", "new lines"}}},
		{"syntax: duplicate key", "[node]\nname = \"a\"\nname = \"b\"\n", []wantErr{{3, "", "key name is already defined"}}},
		{"syntax: duplicate table", "[node]\n[log]\n[node]\n", []wantErr{{3, "", "table node already exists"}}},
		{"syntax: leading zero", "[proxy]\nmax_queue = 010\n", []wantErr{{2, "", "leading zero"}}},

		// The fleet's keys.
		{"backhaul protocol", "[backhaul]\nprotocol = \"tcp\"\n", []wantErr{{2, "backhaul.protocol", `"quic"`}}},
		{"backhaul cert without key", "[backhaul]\n\ncert_file = \"c.pem\"\n", []wantErr{{3, "backhaul.cert_file", "key_file is required"}}},
		{"simulated rtt pair", "[backhaul.simulated_rtt]\niad = \"10ms\"\n", []wantErr{{2, "backhaul.simulated_rtt.iad", "two different regions"}}},
		{"simulated rtt duration", "[backhaul.simulated_rtt]\n\"iad-nrt\" = \"fast\"\n", []wantErr{{2, "backhaul.simulated_rtt.iad-nrt", "duration"}}},
		{"region coords", "[region_coords]\nxyz = \"95,10\"\n", []wantErr{{2, "region_coords.xyz", "latitude,longitude"}}},

		// Unknown keys.
		{"unknown table", "\n[nodes]\nname = \"a\"\n", []wantErr{{2, "nodes", `unknown key "nodes" (did you mean "node"?)`}}},
		{"unknown key", "[node]\n\nnaem = \"a\"\n", []wantErr{{3, "node.naem", `(did you mean "name"?)`}}},
		{"unknown top-level key", "verbose = true\n", []wantErr{{1, "verbose", `unknown key "verbose"`}}},
		{"unknown dotted key", "node.zone = \"a\"\n", []wantErr{{1, "node.zone", `unknown key "zone"`}}},
		{"unknown key in proxy", "[proxy]\nmax_queues = 3\n", []wantErr{{2, "proxy.max_queues", `did you mean "max_queue"?`}}},
		{"unknown key in app", minimalApp + "hostz = []\n", []wantErr{{4, "app[0].hostz", `did you mean "hosts"?`}}},
		{"unknown key in http_service", minimalApp + "[app.http_service]\nprocesses = [\"app\"]\n", []wantErr{{5, "app[0].http_service.processes", "unknown key"}}},
		{"unknown key in concurrency", minimalApp + "[app.http_service.concurrency]\nsoft = 1\n", []wantErr{{5, "app[0].http_service.concurrency.soft", "unknown key"}}},
		{"unknown key in check", minimalApp + "[[app.http_service.checks]]\nport = 80\n", []wantErr{{5, "app[0].http_service.checks[0].port", "unknown key"}}},
		{"http key in tcp check", minimalApp + "[[app.http_service.tcp_checks]]\npath = \"/\"\n", []wantErr{{5, "app[0].http_service.tcp_checks[0].path", "unknown key"}}},
		{"unknown key in machine", minimalApp + "[[machine]]\nid = \"m\"\napp = \"web\"\naddress = \"127.0.0.1:1\"\nport = 1\n", []wantErr{{8, "machine[0].port", "unknown key"}}},
		{"unknown key in driver", minimalApp + "[[machine]]\nid = \"m\"\napp = \"web\"\naddress = \"127.0.0.1:1\"\n[machine.driver]\nargs = []\n", []wantErr{{9, "machine[0].driver.args", "unknown key"}}},

		// Types.
		{"string for int", "[proxy]\nmax_queue = \"10\"\n", []wantErr{{2, "proxy.max_queue", "must be an integer, not a string"}}},
		{"int for string", "[node]\nregion = 5\n", []wantErr{{2, "node.region", "must be a string, not an integer"}}},
		{"string for bool", "[log]\naccess = \"yes\"\n", []wantErr{{2, "log.access", "must be a boolean, not a string"}}},
		{"float for duration", "[proxy]\nidle_timeout = 1.5\n", []wantErr{{2, "proxy.idle_timeout", "must be a duration"}}},
		{"value for table", "node = \"a\"\n", []wantErr{{1, "node", "must be a table, not a string"}}},
		{"table for array of tables", "[app]\nname = \"a\"\n", []wantErr{{1, "app", "must be an array of tables ([[app]])"}}},
		{"array of tables for table", "[[node]]\n", []wantErr{{1, "node", "must be a table, not an array of tables"}}},
		{"string for hosts", "[[app]]\nname = \"a\"\nhosts = \"a.example\"\n", []wantErr{{3, "app[0].hosts", "must be an array of strings"}}},
		{"int in hosts", "[[app]]\nname = \"a\"\nhosts = [\n  \"a.example\",\n  7,\n]\n", []wantErr{{5, "app[0].hosts[1]", "must be a string, not an integer"}}},
		{"int in header", minimalApp + "[[app.http_service.checks]]\nheaders = { X-A = 1 }\n", []wantErr{{5, "app[0].http_service.checks[0].headers.X-A", "must be a string"}}},
		{"date for auto_stop", minimalApp + "[app.http_service]\nauto_stop_machines = 2024-01-01\n", []wantErr{{5, "app[0].http_service.auto_stop_machines", "not a date-time"}}},
		{"string in app array", "app = [\"web\"]\n", []wantErr{{1, "app[0]", "must be a table, not a string"}}},

		// Limits.
		{"hard below soft", minimalApp + "[app.http_service.concurrency]\nsoft_limit = 30\nhard_limit = 25\n", []wantErr{{6, "app[0].http_service.concurrency.hard_limit", "25 is below soft_limit 30 (line 5)"}}},
		{"hard below default soft", minimalApp + "[app.http_service.concurrency]\nhard_limit = 10\n", []wantErr{{5, "app[0].http_service.concurrency.hard_limit", "below the default soft_limit 20"}}},
		{"negative soft limit", minimalApp + "[app.http_service.concurrency]\nsoft_limit = -1\n", []wantErr{{5, "app[0].http_service.concurrency.soft_limit", "must not be negative"}}},
		{"negative hard limit", minimalApp + "[app.http_service.concurrency]\nhard_limit = -5\n", []wantErr{{5, "app[0].http_service.concurrency.hard_limit", "must not be negative"}}},
		{"negative min machines", minimalApp + "[app.http_service]\nmin_machines_running = -1\n", []wantErr{{5, "app[0].http_service.min_machines_running", "must not be negative"}}},
		{"negative max_queue", "[proxy]\nmax_queue = -1\n", []wantErr{{2, "proxy.max_queue", "must not be negative"}}},
		{"small max_header_bytes", "[proxy]\nmax_header_bytes = 10\n", []wantErr{{2, "proxy.max_header_bytes", "must be at least 1024"}}},
		{"internal_port too big", minimalApp + "[app.http_service]\ninternal_port = 70000\n", []wantErr{{5, "app[0].http_service.internal_port", "at most 65535"}}},

		// Uniqueness and references.
		{"duplicate machine id", minimalApp + "[[machine]]\nid = \"m1\"\napp = \"web\"\naddress = \"127.0.0.1:1\"\n[[machine]]\nid = \"m1\"\napp = \"web\"\naddress = \"127.0.0.1:2\"\n",
			[]wantErr{{9, "machine[1].id", `machine "m1" is already defined on line 5`}}},
		{"machine of unknown app", minimalApp + "[[machine]]\nid = \"m1\"\napp = \"wbe\"\naddress = \"127.0.0.1:1\"\n", []wantErr{{6, "machine[0].app", `no [[app]] is named "wbe"`}}},
		{"duplicate app name", minimalApp + "[[app]]\nname = \"web\"\nhosts = [\"other.example.com\"]\n", []wantErr{{5, "app[1].name", `app "web" is already defined on line 2`}}},
		{"host claimed twice", minimalApp + "[[app]]\nname = \"api\"\nhosts = [\"api.example.com\", \"WEB.example.com\"]\n",
			[]wantErr{{6, "app[1].hosts[1]", `host "web.example.com" is already claimed by app "web" (line 3)`}}},
		{"host listed twice", "[[app]]\nname = \"a\"\nhosts = [\"a.example\", \"A.example\"]\n", []wantErr{{3, "app[0].hosts[1]", "listed twice"}}},
		{"host with port", "[[app]]\nname = \"a\"\nhosts = [\"a.example:8080\"]\n", []wantErr{{3, "app[0].hosts[0]", "must not have a port"}}},
		{"host as URL", "[[app]]\nname = \"a\"\nhosts = [\"https://a.example\"]\n", []wantErr{{3, "app[0].hosts[0]", "not a URL"}}},
		{"app without hosts", "[[app]]\nname = \"a\"\n", []wantErr{{1, "app[0].hosts", "at least one host"}}},
		{"app with empty hosts", "[[app]]\nname = \"a\"\nhosts = []\n", []wantErr{{3, "app[0].hosts", "at least one host"}}},
		{"inline app without hosts", "app = [\n  { name = \"a\" },\n]\n", []wantErr{{2, "app[0].hosts", "at least one host"}}},
		{"app without name", "[[app]]\nhosts = [\"a\"]\n", []wantErr{{1, "app[0].name", "needs a name"}}},
		{"machine without id, app, address", minimalApp + "\n[[machine]]\n", []wantErr{
			{5, "machine[0].id", "needs an id"}, {5, "machine[0].app", "needs an app"}, {5, "machine[0].address", "needs an address"}}},
		{"bad region", "[node]\nregion = \"i a d\"\n", []wantErr{{2, "node.region", "want letters"}}},

		// Addresses.
		{"listen without port", "[listen]\nhttp = \"localhost\"\n", []wantErr{{2, "listen.http", `bad address "localhost"`}}},
		{"listen port too big", "[listen]\nhttps = \"127.0.0.1:65536\"\n", []wantErr{{2, "listen.https", "port number from 0 to 65535"}}},
		{"listen named port", "[listen]\nhttp3 = \"127.0.0.1:https\"\n", []wantErr{{2, "listen.http3", "port number"}}},
		{"two listeners on one address", "[listen]\nhttp = \"127.0.0.1:8000\"\nhttps = \"127.0.0.1:8000\"\n", []wantErr{{3, "listen.https", "also the address of listen.http (line 2)"}}},
		{"listener on a default address", "[listen]\nhttps = \"127.0.0.1:9090\"\n", []wantErr{{2, "listen.https", "also the address of listen.admin (by default)"}}},
		{"admin not loopback", "[listen]\nadmin = \"0.0.0.0:9090\"\n", []wantErr{{2, "listen.admin", "admin.token_file is required"}}},
		{"machine address", minimalApp + "[[machine]]\nid = \"m1\"\napp = \"web\"\naddress = \"127.0.0.1\"\n", []wantErr{{7, "machine[0].address", "want host:port"}}},
		{"machine address port 0", minimalApp + "[[machine]]\nid = \"m1\"\napp = \"web\"\naddress = \"127.0.0.1:0\"\n", []wantErr{{7, "machine[0].address", "port 0"}}},
		{"machine address without host", minimalApp + "[[machine]]\nid = \"m1\"\napp = \"web\"\naddress = \":80\"\n", []wantErr{{7, "machine[0].address", "want a host"}}},
		{"gossip bind", "[gossip]\nbind = \"127.0.0.1:x\"\n", []wantErr{{2, "gossip.bind", "port number"}}},
		{"gossip join", "[gossip]\nbind = \"127.0.0.1:7946\"\njoin = [\n  \"127.0.0.1:7947\",\n  \"peer\",\n]\n", []wantErr{{5, "gossip.join[1]", `bad address "peer"`}}},
		{"gossip join without bind", "[gossip]\njoin = [\"127.0.0.1:7947\"]\n", []wantErr{{2, "gossip.join", "gossip.bind is required"}}},
		{"gossip and backhaul clash", "[gossip]\nbind = \"127.0.0.1:7000\"\n[backhaul]\nlisten = \"127.0.0.1:7000\"\n", []wantErr{{4, "backhaul.listen", "also the address of gossip.bind (line 2)"}}},
		{"backhaul", "[backhaul]\nlisten = \"127.0.0.1:99999\"\n", []wantErr{{2, "backhaul.listen", "port number"}}},

		// Durations.
		{"duration without unit", "[proxy]\nidle_timeout = \"30\"\n", []wantErr{{2, "proxy.idle_timeout", `bad duration "30"`}}},
		{"duration garbage", minimalApp + "[[app.http_service.checks]]\ninterval = \"soon\"\n", []wantErr{{5, "app[0].http_service.checks[0].interval", `bad duration "soon"`}}},
		{"negative duration", "[proxy]\nconnect_timeout = \"-1s\"\n", []wantErr{{2, "proxy.connect_timeout", "must not be negative"}}},
		{"negative ms", "[proxy]\ndrain_timeout = -5\n", []wantErr{{2, "proxy.drain_timeout", "must not be negative"}}},
		{"negative drain_delay", "[proxy]\ndrain_delay = \"-1s\"\n", []wantErr{{2, "proxy.drain_delay", "must not be negative"}}},
		{"negative body_read_timeout", "[proxy]\nmax_queue = 5\n\nbody_read_timeout = \"-1s\"\n", []wantErr{{4, "proxy.body_read_timeout", "must not be negative"}}},
		{"body_write_timeout garbage", "[proxy]\nbody_write_timeout = \"1 minute\"\n", []wantErr{{2, "proxy.body_write_timeout", `bad duration "1 minute"`}}},
		{"body_write_timeout wrong type", "[proxy]\nbody_write_timeout = true\n", []wantErr{{2, "proxy.body_write_timeout", "duration"}}},
		{"zero timeout", "[proxy]\nread_header_timeout = 0\n", []wantErr{{2, "proxy.read_header_timeout", "more than zero"}}},
		{"zero check interval", minimalApp + "[[app.http_service.tcp_checks]]\ninterval = \"0s\"\n", []wantErr{{5, "app[0].http_service.tcp_checks[0].interval", "more than zero"}}},
		{"huge ms", "[proxy]\ndrain_timeout = 9223372036854775807\n", []wantErr{{2, "proxy.drain_timeout", "too long"}}},

		// Enums.
		{"log level", "[log]\nlevel = \"verbose\"\n", []wantErr{{2, "log.level", `unknown value "verbose", want "debug", "info", "warn" or "error"`}}},
		{"log level case", "[log]\nlevel = \"INFO\"\n", []wantErr{{2, "log.level", "unknown value"}}},
		{"log format", "[log]\nformat = \"xml\"\n", []wantErr{{2, "log.format", `want "json" or "text"`}}},
		{"concurrency type", minimalApp + "[app.http_service.concurrency]\ntype = \"reqs\"\n", []wantErr{{5, "app[0].http_service.concurrency.type", `want "connections" or "requests"`}}},
		{"auto_stop_machines", minimalApp + "[app.http_service]\nauto_stop_machines = \"pause\"\n", []wantErr{{5, "app[0].http_service.auto_stop_machines", `unknown value "pause"`}}},
		{"check protocol", minimalApp + "[[app.http_service.checks]]\nprotocol = \"tcp\"\n", []wantErr{{5, "app[0].http_service.checks[0].protocol", `want "http" or "https"`}}},
		{"check path", minimalApp + "[[app.http_service.checks]]\npath = \"healthz\"\n", []wantErr{{5, "app[0].http_service.checks[0].path", "starting with /"}}},
		{"check method", minimalApp + "[[app.http_service.checks]]\nmethod = \"GET /\"\n", []wantErr{{5, "app[0].http_service.checks[0].method", "bad method"}}},
		{"machine state", minimalApp + "[[machine]]\nid = \"m1\"\napp = \"web\"\naddress = \"127.0.0.1:1\"\nstate = \"running\"\n", []wantErr{{8, "machine[0].state", `want "started" or "stopped"`}}},
		{"driver kind", minimalApp + "[[machine]]\nid = \"m1\"\napp = \"web\"\naddress = \"127.0.0.1:1\"\ndriver = { kind = \"docker\" }\n", []wantErr{{8, "machine[0].driver.kind", `want "none", "exec" or "http"`}}},

		// Drivers.
		{"exec without command", minimalApp + "[[machine]]\nid = \"m1\"\napp = \"web\"\naddress = \"127.0.0.1:1\"\n[machine.driver]\nkind = \"exec\"\n", []wantErr{{9, "machine[0].driver.command", "needs a command"}}},
		{"exec with empty command", minimalApp + "[[machine]]\nid = \"m1\"\napp = \"web\"\naddress = \"127.0.0.1:1\"\n[machine.driver]\nkind = \"exec\"\ncommand = []\n", []wantErr{{10, "machine[0].driver.command", "must name a program"}}},
		{"command without exec", minimalApp + "[[machine]]\nid = \"m1\"\napp = \"web\"\naddress = \"127.0.0.1:1\"\n[machine.driver]\ncommand = [\"./app\"]\n", []wantErr{{9, "machine[0].driver.command", `driver.kind is "none"`}}},

		{"http without url", machineDriver + "kind = \"http\"\n", []wantErr{{9, "machine[0].driver.url", "the http driver needs a url"}}},
		{"url not http", machineDriver + "kind = \"http\"\nurl = \"ftp://api.example\"\n", []wantErr{{10, "machine[0].driver.url", "want an http:// or https:// URL"}}},
		{"url without host", machineDriver + "kind = \"http\"\nurl = \"https:///v1\"\n", []wantErr{{10, "machine[0].driver.url", "want a host"}}},
		{"url with query", machineDriver + "kind = \"http\"\nurl = \"https://api.example/?app=x\"\n", []wantErr{{10, "machine[0].driver.url", "without a query"}}},
		{"url with /v1", machineDriver + "kind = \"http\"\nurl = \"https://api.machines.dev/v1/\"\n", []wantErr{{10, "machine[0].driver.url", "without /v1"}}},
		{"url with credentials", machineDriver + "kind = \"http\"\nurl = \"https://me:secret@api.example\"\n", []wantErr{{10, "machine[0].driver.url", `"https://me:xxxxx@api.example": put the token in token_file`}}},
		{"url unparsable", machineDriver + "kind = \"http\"\nurl = \"http://[::1\"\n", []wantErr{{10, "machine[0].driver.url", "bad URL"}}},
		{"url not a string", machineDriver + "kind = \"http\"\nurl = 80\n", []wantErr{{10, "machine[0].driver.url", "must be a string"}}},
		{"bad api app", machineDriver + "kind = \"http\"\nurl = \"https://api.example\"\napp = \"my app\"\n", []wantErr{{11, "machine[0].driver.app", "want letters"}}},
		{"token_file and token_env", machineDriver + "kind = \"http\"\nurl = \"https://api.example\"\ntoken_file = \"t\"\ntoken_env = \"T\"\n",
			[]wantErr{{12, "machine[0].driver.token_env", "set token_file (line 11) or token_env, not both"}}},
		{"empty token_file", machineDriver + "kind = \"http\"\nurl = \"https://api.example\"\ntoken_file = \"\"\n", []wantErr{{11, "machine[0].driver.token_file", "must not be empty"}}},
		{"bad token_env", machineDriver + "kind = \"http\"\nurl = \"https://api.example\"\ntoken_env = \"A=B\"\n", []wantErr{{11, "machine[0].driver.token_env", "no '='"}}},
		{"http keys on exec", machineDriver + "kind = \"exec\"\ncommand = [\"./app\"]\nurl = \"https://api.example\"\napp = \"web\"\ntoken_env = \"T\"\n", []wantErr{
			{11, "machine[0].driver.url", `only the http driver takes a url, and driver.kind is "exec"`},
			{12, "machine[0].driver.app", "only the http driver takes an app"},
			{13, "machine[0].driver.token_env", "only the http driver takes a token_env"}}},
		{"token_file without kind", machineDriver + "token_file = \"t\"\n", []wantErr{{9, "machine[0].driver.token_file", `only the http driver takes a token_file, and driver.kind is "none"`}}},
		{"env on http", machineDriver + "kind = \"http\"\nurl = \"https://api.example\"\nenv = { A = \"1\" }\n", []wantErr{{11, "machine[0].driver.env", `only the exec driver takes env, and driver.kind is "http"`}}},
		{"env name with =", machineDriver + "kind = \"exec\"\ncommand = [\"./app\"]\n[machine.driver.env]\nOK = \"1\"\n\"A=B\" = \"2\"\n", []wantErr{{13, "machine[0].driver.env.A=B", "no '='"}}},
		{"env value not a string", machineDriver + "kind = \"exec\"\ncommand = [\"./app\"]\nenv = { PORT = 8080 }\n", []wantErr{{11, "machine[0].driver.env.PORT", "must be a string, not an integer"}}},
		{"env value with NUL", machineDriver + "kind = \"exec\"\ncommand = [\"./app\"]\nenv = { A = \"x\\u0000y\" }\n", []wantErr{{11, "machine[0].driver.env.A", "NUL"}}},
		{"bad kind hides misplaced keys", machineDriver + "kind = \"docker\"\nurl = \"https://api.example\"\ncommand = [\"x\"]\n", []wantErr{{9, "machine[0].driver.kind", "unknown value"}}},
		{"unknown driver key", machineDriver + "kind = \"http\"\nurl = \"https://api.example\"\ntoken = \"secret\"\n", []wantErr{{11, "machine[0].driver.token", `unknown key "token"`}}},

		// Autostart.
		{"zero stop_interval", "[autostart]\nstop_interval = 0\n", []wantErr{{2, "autostart.stop_interval", "more than zero"}}},
		{"zero wake_timeout", "[autostart]\nwake_timeout = \"0s\"\n", []wantErr{{2, "autostart.wake_timeout", "more than zero"}}},
		{"negative max_waiters", "[autostart]\nmax_waiters = -1\n", []wantErr{{2, "autostart.max_waiters", "must not be negative"}}},
		{"bad recent_stop", "[autostart]\nrecent_stop = \"5 minutes\"\n", []wantErr{{2, "autostart.recent_stop", "bad duration"}}},
		{"negative drain_timeout", "[autostart]\n\ndrain_timeout = \"-1s\"\n", []wantErr{{3, "autostart.drain_timeout", "must not be negative"}}},
		{"unknown autostart key", "[autostart]\nstop_intervall = \"1m\"\n", []wantErr{{2, "autostart.stop_intervall", `did you mean "stop_interval"?`}}},
		{"autostart not a table", "autostart = true\n", []wantErr{{1, "autostart", "must be a table"}}},
		{"min scope", minimalApp + "[app.http_service]\nmin_machines_running_scope = \"global\"\n", []wantErr{{5, "app[0].http_service.min_machines_running_scope", `unknown value "global", want "primary" or "region"`}}},
		{"zero per pass", minimalApp + "[app.http_service]\nautostop_max_per_pass = 0\n", []wantErr{{5, "app[0].http_service.autostop_max_per_pass", "must be at least 1, got 0"}}},

		// Kill signal and timeout.
		{"SIGSTOP", minimalApp + "kill_signal = \"SIGSTOP\"\n", []wantErr{{4, "app[0].kill_signal", `SIGSTOP pauses a process instead of stopping it: want "SIGINT", "SIGTERM", "SIGQUIT", "SIGUSR1", "SIGUSR2" or "SIGKILL"`}}},
		{"lower-case signal", minimalApp + "kill_signal = \"sigterm\"\n", []wantErr{{4, "app[0].kill_signal", `unknown value "sigterm"`}}},
		{"signal number", minimalApp + "kill_signal = 15\n", []wantErr{{4, "app[0].kill_signal", "must be a string, not an integer"}}},
		{"zero kill_timeout", minimalApp + "kill_timeout = 0\n", []wantErr{{4, "app[0].kill_timeout", "must be more than zero"}}},
		{"negative kill_timeout", minimalApp + "kill_timeout = -5\n", []wantErr{{4, "app[0].kill_timeout", "must not be negative, got -5"}}},
		{"most negative kill_timeout", minimalApp + "kill_timeout = -9223372036854775808\n", []wantErr{{4, "app[0].kill_timeout", "must not be negative"}}},
		{"negative kill_timeout string", minimalApp + "kill_timeout = \"-1s\"\n", []wantErr{{4, "app[0].kill_timeout", "must not be negative, got -1s"}}},
		{"kill_timeout over 300", minimalApp + "kill_timeout = 301\n", []wantErr{{4, "app[0].kill_timeout", "at most 300 seconds (Fly's maximum), got 301"}}},
		{"huge kill_timeout", minimalApp + "kill_timeout = 9223372036854775807\n", []wantErr{{4, "app[0].kill_timeout", "at most 300 seconds"}}},
		{"kill_timeout string over 5m", minimalApp + "kill_timeout = \"5m1s\"\n", []wantErr{{4, "app[0].kill_timeout", "at most 5m0s"}}},
		{"kill_timeout without unit", minimalApp + "kill_timeout = \"30\"\n", []wantErr{{4, "app[0].kill_timeout", "or an integer of seconds"}}},
		{"kill_timeout float", minimalApp + "kill_timeout = 1.5\n", []wantErr{{4, "app[0].kill_timeout", "must be a duration (an integer of seconds"}}},

		// Replay cache.
		{"negative replay_cache_entries", "[proxy]\nreplay_cache_entries = -1\n", []wantErr{{2, "proxy.replay_cache_entries", "must not be negative"}}},
		{"huge replay_cache_entries", "[proxy]\nreplay_cache_entries = 10_000_001\n", []wantErr{{2, "proxy.replay_cache_entries", "must be at most 10000000"}}},
		{"string replay_cache_entries", "[proxy]\nreplay_cache_entries = \"10k\"\n", []wantErr{{2, "proxy.replay_cache_entries", "must be an integer, not a string"}}},
		{"rule without keys", replayRule, []wantErr{
			{4, rk("path_prefix"), "needs a path_prefix"}, {4, rk("ttl_seconds"), "needs ttl_seconds"},
			{4, rk("type"), "needs a type"}, {4, rk("name"), "needs a name"}}},
		{"empty path_prefix", rule(`""`, "300", `"cookie"`, `"sid"`), []wantErr{{5, rk("path_prefix"), "must not be empty"}}},
		{"path_prefix with space", rule(`"/a b"`, "300", `"cookie"`, `"sid"`), []wantErr{{5, rk("path_prefix"), `bad pattern "/a b": only visible ASCII`}}},
		{"path_prefix with port", rule(`"api.example.com:8443/api"`, "300", `"cookie"`, `"sid"`), []wantErr{{5, rk("path_prefix"), "host must be a name without a port"}}},
		{"path_prefix inner star", rule(`"/a/*/b"`, "300", `"cookie"`, `"sid"`), []wantErr{{5, rk("path_prefix"), "'*' may only end the pattern"}}},
		{"path_prefix not a string", rule("7", "300", `"cookie"`, `"sid"`), []wantErr{{5, rk("path_prefix"), "must be a string, not an integer"}}},
		{"ttl too short", rule(`"/"`, "5", `"cookie"`, `"sid"`), []wantErr{{6, rk("ttl_seconds"), "must be at least 10, got 5"}}},
		{"ttl too long", rule(`"/"`, "31536001", `"cookie"`, `"sid"`), []wantErr{{6, rk("ttl_seconds"), "must be at most 31536000"}}},
		{"ttl as duration", rule(`"/"`, `"5m"`, `"cookie"`, `"sid"`), []wantErr{{6, rk("ttl_seconds"), "must be an integer, not a string"}}},
		{"ttl fraction", rule(`"/"`, "10.5", `"cookie"`, `"sid"`), []wantErr{{6, rk("ttl_seconds"), "must be an integer, not a float"}}},
		{"unknown type", rule(`"/"`, "300", `"query"`, `"sid"`), []wantErr{{7, rk("type"), `unknown value "query", want "cookie" or "header"`}}},
		{"empty name", rule(`"/"`, "300", `"cookie"`, `""`), []wantErr{{8, rk("name"), "must not be empty"}}},
		{"bad cookie name", rule(`"/"`, "300", `"cookie"`, `"session id"`), []wantErr{{8, rk("name"), `"session id" is not a valid cookie name`}}},
		{"cookie name with =", rule(`"/"`, "300", `"cookie"`, `"sid="`), []wantErr{{8, rk("name"), "not a valid cookie name"}}},
		{"bad header name", rule(`"/"`, "300", `"header"`, `"X-Session:"`), []wantErr{{8, rk("name"), `"X-Session:" is not a valid header name`}}},
		{"fly- header", rule(`"/"`, "300", `"header"`, `"Fly-Session"`), []wantErr{{8, rk("name"), "removes fly- headers"}}},
		{"fly- header lower case", rule(`"/"`, "300", `"header"`, `"fly-client-ip"`), []wantErr{{8, rk("name"), "removes fly- headers"}}},
		{"bad name and type", rule(`"/"`, "300", `"query"`, `"a b"`), []wantErr{
			{7, rk("type"), "unknown value"}, {8, rk("name"), "not a valid cookie or header name"}}},
		{"allow_bypass not bool", rule(`"/"`, "300", `"cookie"`, `"sid"`) + "allow_bypass = \"yes\"\n", []wantErr{{9, rk("allow_bypass"), "must be a boolean, not a string"}}},
		{"unknown key in rule", rule(`"/"`, "300", `"cookie"`, `"sid"`) + "nmae = \"x\"\n", []wantErr{{9, rk("nmae"), `did you mean "name"?`}}},
		{"unknown key in http_options", minimalApp + "[app.http_service.http_options]\ncompress = true\n", []wantErr{{5, "app[0].http_service.http_options.compress", "unknown key"}}},
		{"replay_cache as table", minimalApp + "[app.http_service.http_options.replay_cache]\n", []wantErr{{4, "app[0].http_service.http_options.replay_cache", "must be an array of tables"}}},
		{"same pattern twice", rule(`"/api"`, "300", `"cookie"`, `"sid"`) +
			"[[app.http_service.http_options.replay_cache]]\npath_prefix = \"/api/*\"\nttl_seconds = 60\ntype = \"header\"\nname = \"x-sid\"\n",
			[]wantErr{{10, "app[0].http_service.http_options.replay_cache[1].path_prefix", `"/api/*" is the same pattern as "/api" (line 5)`}}},
		{"same host pattern twice", rule(`"A.example/x"`, "300", `"cookie"`, `"sid"`) +
			"[[app.http_service.http_options.replay_cache]]\npath_prefix = \"a.example/x/\"\nttl_seconds = 60\ntype = \"cookie\"\nname = \"sid\"\n",
			[]wantErr{{10, "app[0].http_service.http_options.replay_cache[1].path_prefix", `"a.example/x/" is the same pattern as "A.example/x" (line 5)`}}},

		// TLS.
		{"cert without key", "[tls]\ncert_file = \"c.pem\"\n", []wantErr{{2, "tls.cert_file", "tls.key_file is required"}}},
		{"key without cert", "[tls]\n\nkey_file = \"k.pem\"\n", []wantErr{{3, "tls.key_file", "tls.cert_file is required"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parse([]byte(tt.toml), "g.toml", "", "test-host")
			if cfg != nil {
				t.Errorf("got a config, want nil with errors")
			}
			checkErrors(t, err, "g.toml", tt.want)
		})
	}
}

// TestManyErrors checks that one file with many problems gets all of them,
// sorted by line.
func TestManyErrors(t *testing.T) {
	const data = `[node]
naem = "edge"
[listen]
http = "localhost"
[log]
level = "loud"
[proxy]
idle_timeout = "5 s"
max_queue = -1
[[app]]
name = "web"
hosts = ["Web.Example.com:80"]
  [app.http_service.concurrency]
  soft_limit = 30
  hard_limit = 25
[[app]]
name = "web"
hosts = []
[[machine]]
id = "m1"
app = "nope"
address = "x"
state = "running"
[[machine]]
id = "m1"
app = "web"
address = "127.0.0.1:80"
  [machine.driver]
  kind = "exec"
[extra]
`
	_, err := Parse([]byte(data), "many.toml")
	checkErrors(t, err, "many.toml", []wantErr{
		{2, "node.naem", "unknown key"},
		{4, "listen.http", "bad address"},
		{6, "log.level", "unknown value"},
		{8, "proxy.idle_timeout", "bad duration"},
		{9, "proxy.max_queue", "must not be negative"},
		{12, "app[0].hosts[0]", "must not have a port"},
		{15, "app[0].http_service.concurrency.hard_limit", "below soft_limit"},
		{17, "app[1].name", "already defined on line 11"},
		{18, "app[1].hosts", "at least one host"},
		{21, "machine[0].app", "no [[app]]"},
		{22, "machine[0].address", "bad address"},
		{23, "machine[0].state", "unknown value"},
		{25, "machine[1].id", "already defined on line 20"},
		{29, "machine[1].driver.command", "needs a command"},
		{30, "extra", "unknown key"},
	})
	if n := strings.Count(err.Error(), "\n") + 1; n != 15 {
		t.Errorf("Error(): got %d lines, want 15, one per error", n)
	}
}
