package config

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/godwit/godwit/replay"
)

// maxFileSize bounds a config file or an imported fly.toml.
const maxFileSize = 4 << 20

// Load reads, defaults and validates the config file at path. Relative
// paths in the file (fly_toml, tls.cert_file, tls.key_file and those of
// [[tls.certificate]], admin.token_file, gossip.secret_key_file) are
// resolved against the directory of path.
//
// A file that cannot be read gives an error wrapping the *fs.PathError. A
// file with problems gives an [Errors] with every problem found, each with
// its file and line.
func Load(path string) (*Config, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return parse(data, path, filepath.Dir(path), hostname())
}

// Parse is Load for a config already in memory, such as an embedded demo
// config. name stands for the file in error messages. Relative paths in the
// config are left as they are: relative to the working directory.
func Parse(data []byte, name string) (*Config, error) {
	cfg, err := parse(data, name, "", hostname())
	if cfg != nil {
		cfg.Path = ""
	}
	return cfg, err
}

// readFile reads a config file or an imported fly.toml.
func readFile(path string) ([]byte, error) { return ReadRegularFile(path, maxFileSize) }

// ReadRegularFile reads a regular file of at most limit bytes, for the
// files a config names (certificates, keys, tokens) as for the config
// itself. It does not open anything else: opening a FIFO would block.
func ReadRegularFile(path string, limit int) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, &os.PathError{Op: "read", Path: path, Err: errors.New("not a regular file")}
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, int64(limit)+1))
	if err != nil {
		return nil, err
	}
	if len(data) > limit {
		return nil, &os.PathError{Op: "read", Path: path, Err: fmt.Errorf("larger than %d bytes", limit)}
	}
	return data, nil
}

// parse decodes data, the contents of file; dir resolves relative paths
// ("" leaves them alone).
func parse(data []byte, file, dir, host string) (*Config, error) {
	tree, errs := parseTree(data, file)
	if errs != nil {
		return nil, errs
	}
	l := &loader{
		d:   &decoder{file: file, errs: &errs},
		dir: dir,
		def: defaults(host),
	}
	cfg := l.config(l.d.root(tree))
	if len(errs) > 0 {
		return nil, errs.sorted()
	}
	cfg.Path = file
	return cfg, nil
}

// loader decodes one config file and the fly.toml files it imports.
type loader struct {
	d   *decoder
	dir string
	def defaultSet

	listeners []listener // to find two listeners on one address
}

type listener struct {
	key, addr, network string
	line               int
}

func (l *loader) path(p string) string {
	if p == "" || l.dir == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(l.dir, p)
}

func (l *loader) config(r *reader) *Config {
	cfg := l.def.Config

	l.node(r.table("node"), &cfg.Node)
	l.def.followNode(cfg.Node)

	adminLine := l.listen(r.table("listen"), &cfg.Listen)
	l.tls(r.table("tls"), &cfg.TLS)
	l.log(r.table("log"), &cfg.Log)

	a := r.table("admin")
	if a.str("token_file", &cfg.Admin.TokenFile) != nil {
		cfg.Admin.TokenFile = l.path(cfg.Admin.TokenFile)
	}
	a.done()
	if cfg.Listen.Admin != "" && cfg.Admin.TokenFile == "" && !isLoopback(cfg.Listen.Admin) {
		l.d.errorf(adminLine, "listen.admin", "%s is not a loopback address: admin.token_file is required", cfg.Listen.Admin)
	}

	l.gossip(r.table("gossip"), &cfg.Gossip)

	l.backhaul(r.table("backhaul"), &cfg.Backhaul)
	l.regionCoords(r, &cfg)

	l.proxy(r.table("proxy"), &cfg.Proxy)
	l.autostart(r.table("autostart"), &cfg.Autostart)
	cfg.Apps = l.apps(r.tables("app"))
	cfg.Machines = l.machines(r.tables("machine"), cfg.Apps)
	r.done()
	return &cfg
}

func (l *loader) node(r *reader, n *Node) {
	l.name(r, "name", &n.Name)
	l.name(r, "region", &n.Region)
	r.done()
}

// name reads an identifier: a node name, a region, an app name, a machine
// id. These end up in headers (fly-replay, fly-region) and metric labels.
func (l *loader) name(r *reader, k string, dst *string) *value {
	var s string
	v := r.str(k, &s)
	if v == nil {
		return nil
	}
	if err := checkName(s); err != nil {
		r.errorf(v.line, k, "%v", err)
		return nil
	}
	*dst = s
	return v
}

func checkName(s string) error {
	if s == "" {
		return fmt.Errorf("must not be empty")
	}
	for i, c := range s {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			i > 0 && (c == '-' || c == '_' || c == '.')
		if !ok {
			return fmt.Errorf("%q: want letters, digits, '-', '_' and '.', starting with a letter or digit", s)
		}
	}
	return nil
}

// listen reads [listen] and returns the line of listen.admin (for a later
// error about it).
func (l *loader) listen(r *reader, ls *Listen) (adminLine int) {
	fields := []struct {
		key, network string
		dst          *string
	}{
		{"http", "tcp", &ls.HTTP},
		{"https", "tcp", &ls.HTTPS},
		{"http3", "udp", &ls.HTTP3},
		{"admin", "tcp", &ls.Admin},
	}
	// A default address may clash with one that is set.
	for _, f := range fields {
		if !r.has(f.key) && *f.dst != "" {
			l.listeners = append(l.listeners, listener{r.key(f.key), *f.dst, f.network, 0})
		}
	}
	for _, f := range fields {
		v := r.str(f.key, f.dst)
		if v == nil {
			continue
		}
		if !l.listenAddr(r, v, f.key, f.network) {
			*f.dst = ""
		}
		if f.key == "admin" {
			adminLine = v.line
		}
	}
	r.done()
	return adminLine
}

// listenAddr checks an address to listen on and that no other listener of
// the same network uses it.
func (l *loader) listenAddr(r *reader, v *value, k, network string) bool {
	if v.str == "" {
		return true // off
	}
	if err := checkAddr(v.str, false); err != nil {
		r.errorf(v.line, k, "%v", err)
		return false
	}
	key := r.key(k)
	for _, o := range l.listeners {
		if o.addr == v.str && !strings.HasSuffix(o.addr, ":0") &&
			(o.network == network || o.network == "both" || network == "both") {
			if o.line == 0 {
				r.errorf(v.line, k, "%s is also the address of %s (by default)", v.str, o.key)
			} else {
				r.errorf(v.line, k, "%s is also the address of %s (line %d)", v.str, o.key, o.line)
			}
			return false
		}
	}
	l.listeners = append(l.listeners, listener{key, v.str, network, v.line})
	return true
}

// checkAddr checks a host:port with a numeric port. An address to dial
// needs a host and a port other than 0.
func checkAddr(addr string, dial bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("bad address %q: want host:port", addr)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return fmt.Errorf("bad address %q: want a port number from 0 to 65535", addr)
	}
	if strings.ContainsAny(host, " \t/") {
		return fmt.Errorf("bad address %q: bad host", addr)
	}
	if dial && host == "" {
		return fmt.Errorf("bad address %q: want a host", addr)
	}
	if dial && n == 0 {
		return fmt.Errorf("bad address %q: port 0 cannot be dialed", addr)
	}
	return nil
}

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (l *loader) tls(r *reader, t *TLS) {
	l.certPair(r, &t.CertFile, &t.KeyFile, false)
	r.duration("reload_interval", &t.ReloadInterval, false)
	type claim struct{ index, line int }
	hosts := make(map[string]claim) // host → first certificate to list it
	for i, cr := range r.tables("certificate") {
		var c TLSCertificate
		l.certPair(cr, &c.CertFile, &c.KeyFile, true)
		var raw []string
		if v := cr.strings("hosts", &raw); v != nil {
			if len(raw) == 0 {
				cr.errorf(v.line, "hosts", "want at least one host; leave hosts out to serve the certificate for its own DNS names")
			}
			for j, h := range raw {
				line, key := v.arr[j].line, fmt.Sprintf("hosts[%d]", j)
				h, err := certHost(h)
				if err != nil {
					cr.errorf(line, key, "%v", err)
					continue
				}
				if first, dup := hosts[h]; dup {
					if first.index == i {
						cr.errorf(line, key, "host %q is listed twice (line %d)", h, first.line)
					} else {
						cr.errorf(line, key, "host %q is already served by tls.certificate[%d] (line %d)", h, first.index, first.line)
					}
					continue
				}
				hosts[h] = claim{i, line}
				c.Hosts = append(c.Hosts, h)
			}
		}
		cr.done()
		t.Certificates = append(t.Certificates, c)
	}
	r.done()
}

// certPair reads the cert_file and key_file of [tls] or of a
// [[tls.certificate]] (required is true: both must be set), and resolves
// them against the config's directory.
func (l *loader) certPair(r *reader, certFile, keyFile *string, required bool) {
	cert := r.str("cert_file", certFile)
	key := r.str("key_file", keyFile)
	name := r.key // "tls.key_file"; within a [[tls.certificate]], "key_file"
	if required {
		name = func(k string) string { return k }
	}
	switch {
	case r.has("cert_file") && cert == nil, r.has("key_file") && key == nil:
		// Already reported.
	case *certFile != "" && *keyFile == "":
		r.errorf(cert.line, "cert_file", "%s is required with %s", name("key_file"), name("cert_file"))
	case *certFile == "" && *keyFile != "":
		r.errorf(key.line, "key_file", "%s is required with %s", name("cert_file"), name("key_file"))
	case *certFile == "" && required:
		line := r.line
		if cert != nil {
			line = cert.line
		} else if key != nil {
			line = key.line
		}
		r.errorf(line, "cert_file", "a [[tls.certificate]] needs cert_file and key_file")
	}
	*certFile, *keyFile = l.path(*certFile), l.path(*keyFile)
}

// certHost checks and lower-cases a host of a [[tls.certificate]]: a DNS
// name that a client may send as its server name (SNI), or "*." and one,
// which covers one label more.
func certHost(h string) (string, error) {
	h = strings.ToLower(h)
	name := strings.TrimPrefix(h, "*.")
	switch {
	case strings.Contains(name, "*"):
		return "", fmt.Errorf("%q: a wildcard is a whole first label, as in \"*.example.com\"", h)
	case net.ParseIP(name) != nil || strings.HasPrefix(name, "["):
		return "", fmt.Errorf("%q: clients never send an IP address as server name (SNI); they get the default certificate", h)
	}
	if _, err := normalizeHost(name); err != nil {
		return "", err
	}
	if slices.Contains(strings.Split(name, "."), "") {
		return "", fmt.Errorf("%q: want a host name without empty labels (no leading, trailing or double dot)", h)
	}
	return h, nil
}

func (l *loader) log(r *reader, lg *Log) {
	var level string
	if r.enum("level", &level, "debug", "info", "warn", "error") != nil {
		_ = lg.Level.UnmarshalText([]byte(level)) // cannot fail for these four
	}
	r.enum("format", &lg.Format, LogJSON, LogText)
	r.boolean("access", &lg.Access)
	r.done()
}

func (l *loader) gossip(r *reader, g *Gossip) {
	bindV := r.str("bind", &g.Bind)
	if bindV != nil && !l.listenAddr(r, bindV, "bind", "both") { // memberlist uses TCP and UDP
		g.Bind = ""
	}
	var needsBind []*value
	if v := r.str("advertise", &g.Advertise); v != nil && v.str != "" {
		needsBind = append(needsBind, v)
		if err := checkAddr(v.str, true); err != nil {
			r.errorf(v.line, "advertise", "%v", err)
		}
	}
	if v := r.strings("join", &g.Join); v != nil {
		for i, e := range v.arr {
			if err := checkAddr(e.str, true); err != nil {
				r.errorf(e.line, fmt.Sprintf("join[%d]", i), "%v", err)
			}
		}
		if len(g.Join) > 0 {
			needsBind = append(needsBind, v)
		}
	}
	if v := r.str("secret_key_file", &g.SecretKeyFile); v != nil {
		g.SecretKeyFile = l.path(g.SecretKeyFile)
	}
	if !r.has("bind") || bindV != nil && bindV.str == "" {
		for _, v := range needsBind {
			k := "advertise"
			if v.kind == kindArray {
				k = "join"
			}
			r.errorf(v.line, k, "gossip.bind is required with gossip.%s", k)
		}
	}
	r.done()
}

func (l *loader) proxy(r *reader, p *Proxy) {
	r.duration("read_header_timeout", &p.ReadHeaderTimeout, true)
	r.duration("idle_timeout", &p.IdleTimeout, true)
	r.integer("max_header_bytes", &p.MaxHeaderBytes, 1024, 64<<20)
	r.duration("body_read_timeout", &p.BodyReadTimeout, false)
	r.duration("body_write_timeout", &p.BodyWriteTimeout, false)
	r.duration("connect_timeout", &p.ConnectTimeout, true)
	r.integer("connect_retries", &p.ConnectRetries, 0, 100)
	r.duration("queue_timeout", &p.QueueTimeout, false)
	r.integer("max_queue", &p.MaxQueue, 0, 1<<30)
	r.duration("upstream_idle_timeout", &p.UpstreamIdleTimeout, true)
	r.integer("max_idle_per_machine", &p.MaxIdlePerMachine, 0, 1<<20)
	r.integer("replay_body_limit", &p.ReplayBodyLimit, 0, 1<<30)
	r.integer("replay_cache_entries", &p.ReplayCacheEntries, 0, 10_000_000)
	r.duration("drain_timeout", &p.DrainTimeout, false)
	r.duration("drain_delay", &p.DrainDelay, false)
	r.integer("max_connections", &p.MaxConnections, 0, maxConnections)
	if v := r.integer("max_connections_per_app", &p.MaxConnectionsPerApp, 0, maxConnections); v != nil &&
		p.MaxConnections > 0 && p.MaxConnectionsPerApp > p.MaxConnections {
		r.errorf(v.line, "max_connections_per_app", "%d is more than proxy.max_connections (%d): it would never apply; leave it 0 for no cap per app",
			p.MaxConnectionsPerApp, p.MaxConnections)
	}
	r.done()
}

// maxConnections bounds proxy.max_connections and
// proxy.max_connections_per_app: far more than the sockets of one host.
const maxConnections = 10_000_000

func (l *loader) autostart(r *reader, a *Autostart) {
	r.duration("stop_interval", &a.StopInterval, true)
	r.duration("wake_timeout", &a.WakeTimeout, true)
	r.integer("max_waiters", &a.MaxWaiters, 0, 1<<30)
	r.duration("recent_stop", &a.RecentStop, false)
	r.duration("drain_timeout", &a.DrainTimeout, false)
	r.done()
}

// apps reads the [[app]] tables and checks that names and hosts are unique.
func (l *loader) apps(rs []*reader) []App {
	type claim struct {
		app   string
		index int
		line  int
	}
	names := make(map[string]int)   // app name → line
	hosts := make(map[string]claim) // host → first app to claim it
	var apps []App
	for ai, r := range rs {
		a := l.def.App
		nameV := l.name(r, "name", &a.Name)
		if nameV == nil && !r.has("name") {
			r.errorf(r.line, "name", "an app needs a name")
		}
		if nameV != nil {
			if first, dup := names[a.Name]; dup {
				r.errorf(nameV.line, "name", "app %q is already defined on line %d", a.Name, first)
			} else {
				names[a.Name] = nameV.line
			}
		}

		var raw []string
		if v := r.strings("hosts", &raw); v != nil {
			if len(raw) == 0 {
				r.errorf(v.line, "hosts", "an app needs at least one host")
			}
			for i, h := range raw {
				line, key := v.arr[i].line, fmt.Sprintf("hosts[%d]", i)
				h, err := normalizeHost(h)
				if err != nil {
					r.errorf(line, key, "%v", err)
					continue
				}
				if c, dup := hosts[h]; dup {
					if c.index == ai {
						r.errorf(line, key, "host %q is listed twice (line %d)", h, c.line)
					} else {
						r.errorf(line, key, "host %q is already claimed by app %q (line %d)", h, c.app, c.line)
					}
					continue
				}
				hosts[h] = claim{a.Name, ai, line}
				a.Hosts = append(a.Hosts, h)
			}
		} else if !r.has("hosts") {
			r.errorf(r.line, "hosts", "an app needs at least one host")
		}

		l.name(r, "org", &a.Org)
		own := ownKeys{
			region:      l.name(r, "primary_region", &a.PrimaryRegion) != nil,
			killSignal:  l.killSignal(r, &a.KillSignal) != nil,
			killTimeout: l.killTimeout(r, &a.KillTimeout) != nil,
		}

		var flyToml string
		flyV := r.str("fly_toml", &flyToml)
		svc := r.table("http_service")
		switch {
		case flyV != nil && svc.present():
			r.errorf(svc.line, "http_service", "app has both fly_toml and [http_service]: keep one")
		case flyV != nil:
			l.importFlyToml(r, flyV, &a, own)
		default:
			l.httpService(svc, &a.HTTPService, false)
		}
		r.done()
		apps = append(apps, a)
	}
	return apps
}

// killSignals are the values of kill_signal: the signals Fly accepts but
// SIGSTOP, which pauses a process instead of stopping it.
var killSignals = []string{"SIGINT", "SIGTERM", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGKILL"}

// killSignal reads an app's (or a fly.toml's) kill_signal.
func (l *loader) killSignal(r *reader, dst *string) *value {
	var s string
	v := r.str("kill_signal", &s)
	switch {
	case v == nil:
		return nil
	case slices.Contains(killSignals, s):
		*dst = s
		return v
	case s == "SIGSTOP":
		r.errorf(v.line, "kill_signal", "SIGSTOP pauses a process instead of stopping it: want %s", oneOf(killSignals))
	default:
		r.errorf(v.line, "kill_signal", "unknown value %q, want %s", s, oneOf(killSignals))
	}
	return nil
}

// killTimeout reads an app's (or a fly.toml's) kill_timeout. As in
// fly.toml, and unlike godwit's other durations, an integer is a number of
// seconds (kill_timeout = 5); a string is a duration ("5s", "1m30s").
func (l *loader) killTimeout(r *reader, dst *time.Duration) *value {
	const k = "kill_timeout"
	v := r.lookup(k)
	if v == nil {
		return nil
	}
	var d time.Duration
	switch v.kind {
	case kindString:
		var err error
		if d, err = time.ParseDuration(v.str); err != nil {
			r.errorf(v.line, k, "bad duration %q: want a number with a unit (\"5s\", \"1m\") or an integer of seconds", v.str)
			return nil
		}
	case kindInteger:
		if v.num < 0 {
			r.errorf(v.line, k, "must not be negative, got %d", v.num)
			return nil
		}
		if v.num > int64(MaxKillTimeout/time.Second) {
			r.errorf(v.line, k, "must be at most %d seconds (Fly's maximum), got %d", int64(MaxKillTimeout/time.Second), v.num)
			return nil
		}
		d = time.Duration(v.num) * time.Second
	default:
		r.wrongType(v, k, "a duration (an integer of seconds or a string such as \"30s\")")
		return nil
	}
	switch {
	case d < 0:
		r.errorf(v.line, k, "must not be negative, got %s", d)
	case d == 0:
		r.errorf(v.line, k, "must be more than zero")
	case d > MaxKillTimeout:
		r.errorf(v.line, k, "must be at most %s (Fly's maximum), got %s", MaxKillTimeout, d)
	default:
		*dst = d
		return v
	}
	return nil
}

// normalizeHost lower-cases a host name and rejects ports, URLs and
// characters that cannot be in a Host header.
func normalizeHost(h string) (string, error) {
	h = strings.ToLower(h)
	switch {
	case h == "":
		return "", fmt.Errorf("empty host")
	case strings.Contains(h, "://") || strings.Contains(h, "/"):
		return "", fmt.Errorf("%q: want a host name, not a URL", h)
	case strings.HasPrefix(h, "["):
		if strings.HasSuffix(h, "]") {
			if ip := net.ParseIP(h[1 : len(h)-1]); ip != nil && ip.To4() == nil {
				return h, nil
			}
			return "", fmt.Errorf("%q: bad IPv6 address", h)
		}
		return "", fmt.Errorf("%q: a host must not have a port", h)
	case strings.Contains(h, ":"):
		if net.ParseIP(h) != nil {
			return "", fmt.Errorf("%q: write an IPv6 address in brackets, as in a Host header", h)
		}
		return "", fmt.Errorf("%q: a host must not have a port", h)
	}
	for _, c := range h {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return "", fmt.Errorf("%q: want a host name of letters, digits, '-' and '.'", h)
		}
	}
	return h, nil
}

// httpService reads an [http_service] table of the config or of a fly.toml
// (fly is true), into dst which holds the defaults.
func (l *loader) httpService(r *reader, s *HTTPService, fly bool) {
	r.integer("internal_port", &s.InternalPort, 0, 65535)
	r.boolean("force_https", &s.ForceHTTPS)
	if v := r.lookup("auto_stop_machines"); v != nil {
		modes := []string{AutoStopOff, AutoStopStop, AutoStopSuspend}
		switch {
		case v.kind == kindBool && v.b: // legacy fly.toml
			s.AutoStopMachines = AutoStopStop
		case v.kind == kindBool:
			s.AutoStopMachines = AutoStopOff
		case v.kind == kindString && slices.Contains(modes, v.str):
			s.AutoStopMachines = v.str
		case v.kind == kindString:
			r.errorf(v.line, "auto_stop_machines", "unknown value %q, want %s, or a boolean", v.str, oneOf(modes))
		default:
			r.wrongType(v, "auto_stop_machines", `"off", "stop", "suspend" or a boolean`)
		}
	}
	r.boolean("auto_start_machines", &s.AutoStartMachines)
	r.integer("min_machines_running", &s.MinMachinesRunning, 0, 1<<20)
	r.enum("min_machines_running_scope", &s.MinMachinesRunningScope, MinMachinesScopePrimary, MinMachinesScopeRegion)
	r.integer("autostop_max_per_pass", &s.AutostopMaxPerPass, 1, 1<<20)

	c := r.table("concurrency")
	c.enum("type", &s.Concurrency.Type, ConcurrencyConnections, ConcurrencyRequests)
	softV := c.integer("soft_limit", &s.Concurrency.SoftLimit, 0, 1<<30)
	hardV := c.integer("hard_limit", &s.Concurrency.HardLimit, 0, 1<<30)
	switch {
	case hardV == nil || s.Concurrency.HardLimit == 0 || s.Concurrency.HardLimit >= s.Concurrency.SoftLimit:
	case softV != nil:
		c.errorf(hardV.line, "hard_limit", "%d is below soft_limit %d (line %d)",
			s.Concurrency.HardLimit, s.Concurrency.SoftLimit, softV.line)
	case !c.has("soft_limit"):
		c.errorf(hardV.line, "hard_limit", "%d is below the default soft_limit %d: set soft_limit too",
			s.Concurrency.HardLimit, s.Concurrency.SoftLimit)
	}
	c.done()

	for _, cr := range r.tables("checks") {
		s.Checks = append(s.Checks, l.check(cr, l.def.Check, false))
	}
	for _, cr := range r.tables("tcp_checks") {
		s.TCPChecks = append(s.TCPChecks, l.check(cr, l.def.TCPCheck, true))
	}

	o := r.table("http_options")
	s.ReplayCache = l.replayCache(o.tables("replay_cache"))
	if fly {
		// Keys of fly.toml's [http_service] and [http_service.http_options]
		// that godwit has no use for.
		r.ignore("processes", "tls_options", "proxy_proto_options")
		o.ignore("compress", "response", "h2_backend", "idle_timeout", "headers_read_timeout")
	}
	o.done()
	r.done()
}

func (l *loader) check(r *reader, c Check, tcp bool) Check {
	r.duration("grace_period", &c.GracePeriod, false)
	r.duration("interval", &c.Interval, true)
	r.duration("timeout", &c.Timeout, true)
	if !tcp {
		if v := r.str("method", &c.Method); v != nil {
			c.Method = strings.ToUpper(c.Method)
			if c.Method == "" || strings.IndexFunc(c.Method, func(c rune) bool { return c < 'A' || c > 'Z' }) >= 0 {
				r.errorf(v.line, "method", "bad method %q", v.str)
			}
		}
		if v := r.str("path", &c.Path); v != nil && !strings.HasPrefix(c.Path, "/") {
			r.errorf(v.line, "path", "%q: want a path starting with /", c.Path)
		}
		r.enum("protocol", &c.Protocol, CheckHTTP, CheckHTTPS)
		r.str("tls_server_name", &c.TLSServerName)
		r.boolean("tls_skip_verify", &c.TLSSkipVerify)
		r.stringMap("headers", &c.Headers)
	}
	r.done()
	return c
}

// replayCache reads the replay_cache rules of one app. Two rules with the
// same pattern would claim the same requests, one of them in vain, so they
// are an error.
func (l *loader) replayCache(rs []*reader) []ReplayCacheRule {
	patterns := make(map[replay.Pattern]*value) // pattern → its path_prefix
	var rules []ReplayCacheRule
	for _, r := range rs {
		c := l.def.ReplayCache
		if v := r.str("path_prefix", &c.PathPrefix); v != nil {
			p, err := replay.ParsePattern("path_prefix", c.PathPrefix)
			var re *replay.Error
			switch {
			case c.PathPrefix == "":
				r.errorf(v.line, "path_prefix", "must not be empty")
			case errors.As(err, &re):
				r.errorf(v.line, "path_prefix", "bad pattern %q: %s", c.PathPrefix, re.Msg)
			case err != nil:
				r.errorf(v.line, "path_prefix", "bad pattern %q: %v", c.PathPrefix, err)
			case patterns[p] != nil:
				first := patterns[p]
				r.errorf(v.line, "path_prefix", "%q is the same pattern as %q (line %d)", c.PathPrefix, first.str, first.line)
			default:
				c.Pattern = p
				patterns[p] = v
			}
		} else if !r.has("path_prefix") {
			r.errorf(r.line, "path_prefix", "a replay_cache rule needs a path_prefix")
		}

		var ttl int
		minTTL, maxTTL := int(replay.MinCacheTTL/time.Second), int(replay.MaxCacheTTL/time.Second)
		if r.integer("ttl_seconds", &ttl, minTTL, maxTTL) != nil {
			c.TTL = time.Duration(ttl) * time.Second
		} else if !r.has("ttl_seconds") {
			r.errorf(r.line, "ttl_seconds", "a replay_cache rule needs ttl_seconds")
		}

		if r.enum("type", &c.Type, ReplayCacheCookie, ReplayCacheHeader) == nil && !r.has("type") {
			r.errorf(r.line, "type", "a replay_cache rule needs a type")
		}
		if v := r.str("name", &c.Name); v != nil {
			what := c.Type + " name" // c.Type is "" when type is missing or wrong
			if c.Type == "" {
				what = "cookie or header name"
			}
			switch {
			case c.Name == "":
				r.errorf(v.line, "name", "must not be empty")
			case !isToken(c.Name):
				r.errorf(v.line, "name", "%q is not a valid %s: want letters, digits and !#$%%&'*+-.^_`|~", c.Name, what)
			case c.Type == ReplayCacheHeader && strings.HasPrefix(strings.ToLower(c.Name), "fly-"):
				r.errorf(v.line, "name", "%q: the proxy removes fly- headers from client requests, so this rule would never match", c.Name)
			}
		} else if !r.has("name") {
			r.errorf(r.line, "name", "a replay_cache rule needs a name")
		}

		r.boolean("allow_bypass", &c.AllowBypass)
		r.done()
		rules = append(rules, c)
	}
	return rules
}

// isToken reports whether s is an HTTP token (RFC 9110), the syntax of
// header names and, by RFC 6265, of cookie names.
func isToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
		if !ok {
			return false
		}
	}
	return s != ""
}

// machines reads the [[machine]] tables; apps are the apps already read.
func (l *loader) machines(rs []*reader, apps []App) []Machine {
	ids := make(map[string]int) // machine id → line
	var ms []Machine
	for _, r := range rs {
		m := l.def.Machine
		if v := l.name(r, "id", &m.ID); v != nil {
			if first, dup := ids[m.ID]; dup {
				r.errorf(v.line, "id", "machine %q is already defined on line %d", m.ID, first)
			} else {
				ids[m.ID] = v.line
			}
		} else if !r.has("id") {
			r.errorf(r.line, "id", "a machine needs an id")
		}

		if v := r.str("app", &m.App); v != nil {
			if !hasApp(apps, m.App) {
				r.errorf(v.line, "app", "no [[app]] is named %q", m.App)
			}
		} else if !r.has("app") {
			r.errorf(r.line, "app", "a machine needs an app")
		}

		l.name(r, "region", &m.Region)
		if v := r.str("address", &m.Address); v != nil {
			if err := checkAddr(m.Address, true); err != nil {
				r.errorf(v.line, "address", "%v", err)
			}
		} else if !r.has("address") {
			r.errorf(r.line, "address", "a machine needs an address")
		}
		r.enum("state", &m.State, StateStarted, StateStopped)

		l.driver(r.table("driver"), &m)
		r.done()
		ms = append(ms, m)
	}
	return ms
}

// driver reads a machine's [machine.driver] table. A key of one kind set
// for another kind is an error; with a kind that is itself wrong, only the
// values are checked.
func (l *loader) driver(d *reader, m *Machine) {
	dr := &m.Driver
	kindV := d.enum("kind", &dr.Kind, DriverNone, DriverExec, DriverHTTP)
	kindOK := kindV != nil || !d.has("kind")
	// misplaced reports v, set for a kind other than its own.
	misplaced := func(v *value, k, kind, what string) bool {
		if v == nil || !kindOK || dr.Kind == kind {
			return false
		}
		d.errorf(v.line, k, "only the %s driver %s, and driver.kind is %q", kind, what, dr.Kind)
		return true
	}

	// exec
	cmdV := d.strings("command", &dr.Command)
	switch {
	case !kindOK, d.has("command") && cmdV == nil, misplaced(cmdV, "command", DriverExec, "runs a command"):
		// Already reported.
	case dr.Kind == DriverExec && cmdV == nil:
		d.errorf(kindV.line, "command", "the exec driver needs a command")
	case dr.Kind == DriverExec && (len(dr.Command) == 0 || dr.Command[0] == ""):
		d.errorf(cmdV.line, "command", "must name a program to run")
	}
	if envV := d.stringMap("env", &dr.Env); envV != nil && !misplaced(envV, "env", DriverExec, "takes env") {
		for _, k := range envV.tab.keys {
			line := envV.tab.get(k).line
			if err := checkEnvName(k); err != nil {
				d.errorf(line, "env."+k, "%v", err)
			} else if strings.IndexByte(dr.Env[k], 0) >= 0 {
				d.errorf(line, "env."+k, "must not contain a NUL byte")
			}
		}
	}

	// http
	urlV := d.str("url", &dr.URL)
	switch {
	case misplaced(urlV, "url", DriverHTTP, "takes a url"):
	case urlV != nil:
		u, err := checkAPIURL(dr.URL)
		if err != nil {
			d.errorf(urlV.line, "url", "%v", err)
		}
		dr.URL = u
	case kindOK && dr.Kind == DriverHTTP && !d.has("url"):
		d.errorf(kindV.line, "url", "the http driver needs a url: the Machines API's, such as \"https://api.machines.dev\"")
	}
	appV := l.name(d, "app", &dr.App)
	misplaced(appV, "app", DriverHTTP, "takes an app")
	fileV := d.str("token_file", &dr.TokenFile)
	if !misplaced(fileV, "token_file", DriverHTTP, "takes a token_file") && fileV != nil {
		if dr.TokenFile == "" {
			d.errorf(fileV.line, "token_file", "must not be empty")
		}
		dr.TokenFile = l.path(dr.TokenFile)
	}
	envNameV := d.str("token_env", &dr.TokenEnv)
	if !misplaced(envNameV, "token_env", DriverHTTP, "takes a token_env") && envNameV != nil {
		if err := checkEnvName(dr.TokenEnv); err != nil {
			d.errorf(envNameV.line, "token_env", "%v", err)
		}
		if fileV != nil {
			d.errorf(envNameV.line, "token_env", "set token_file (line %d) or token_env, not both", fileV.line)
		}
	}
	if dr.Kind == DriverHTTP {
		if dr.App == "" {
			dr.App = m.App
		}
		if dr.TokenFile == "" && dr.TokenEnv == "" {
			dr.TokenEnv = DefaultTokenEnv
		}
	}
	d.done()
}

// checkEnvName checks the name of an environment variable.
func checkEnvName(s string) error {
	if s == "" {
		return fmt.Errorf("an environment variable needs a name")
	}
	if strings.ContainsAny(s, "=\x00") {
		return fmt.Errorf("%q: an environment variable's name has no '=' or NUL", s)
	}
	return nil
}

// checkAPIURL checks the base URL of a Machines API and returns it without
// a trailing slash.
func checkAPIURL(s string) (string, error) {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return s, fmt.Errorf("bad URL %q", s)
	case u.Scheme != "http" && u.Scheme != "https":
		return s, fmt.Errorf("%q: want an http:// or https:// URL, such as \"https://api.machines.dev\"", s)
	case u.Host == "":
		return s, fmt.Errorf("%q: want a host", s)
	case u.User != nil:
		return s, fmt.Errorf("%q: put the token in token_file or token_env, not in the URL", u.Redacted())
	case u.RawQuery != "" || u.Fragment != "" || u.ForceQuery:
		return s, fmt.Errorf("%q: want a base URL, without a query or fragment", s)
	case strings.HasSuffix(strings.TrimRight(u.Path, "/"), "/v1"):
		return s, fmt.Errorf("%q: want the base URL, without /v1 (godwit adds /v1/apps/...)", s)
	}
	return strings.TrimRight(s, "/"), nil
}

func hasApp(apps []App, name string) bool {
	return slices.ContainsFunc(apps, func(a App) bool { return a.Name == name })
}

func (l *loader) backhaul(b *reader, bh *Backhaul) {
	b.enum("protocol", &bh.Protocol, BackhaulMux, BackhaulH2, BackhaulQUIC)
	if v := b.str("listen", &bh.Listen); v != nil {
		network := "tcp"
		if bh.Protocol == BackhaulQUIC {
			network = "udp"
		}
		l.listenAddr(b, v, "listen", network)
	}
	certV := b.str("cert_file", &bh.CertFile)
	keyV := b.str("key_file", &bh.KeyFile)
	switch {
	case certV != nil && keyV == nil:
		b.errorf(certV.line, "cert_file", "backhaul.key_file is required with backhaul.cert_file")
	case keyV != nil && certV == nil:
		b.errorf(keyV.line, "key_file", "backhaul.cert_file is required with backhaul.key_file")
	}
	if certV != nil {
		bh.CertFile = l.path(bh.CertFile)
	}
	if keyV != nil {
		bh.KeyFile = l.path(bh.KeyFile)
	}
	if b.str("ca_file", &bh.CAFile) != nil {
		bh.CAFile = l.path(bh.CAFile)
	}
	var raw map[string]string
	if v := b.stringMap("simulated_rtt", &raw); v != nil {
		bh.SimulatedRTT = make(map[string]time.Duration, len(raw))
		for k, val := range raw {
			line := v.tab.get(k).line
			a, c, ok := strings.Cut(k, "-")
			if !ok || a == "" || c == "" || a == c {
				b.errorf(line, "simulated_rtt."+k, `want two different regions joined by "-", like "iad-nrt"`)
				continue
			}
			d, err := time.ParseDuration(val)
			if err != nil || d < 0 || d > time.Minute {
				b.errorf(line, "simulated_rtt."+k, "want a duration from 0 to 1m, like \"80ms\"")
				continue
			}
			bh.SimulatedRTT[RegionPair(a, c)] = d
		}
	}
	b.done()
}

// regionCoords reads [region_coords]: region code = "latitude,longitude".
func (l *loader) regionCoords(r *reader, cfg *Config) {
	var raw map[string]string
	v := r.stringMap("region_coords", &raw)
	if v == nil {
		return
	}
	cfg.RegionCoords = make(map[string][2]float64, len(raw))
	for k, val := range raw {
		line := v.tab.get(k).line
		lat, lon, ok := strings.Cut(val, ",")
		la, err1 := strconv.ParseFloat(strings.TrimSpace(lat), 64)
		lo, err2 := strconv.ParseFloat(strings.TrimSpace(lon), 64)
		if !ok || err1 != nil || err2 != nil || la < -90 || la > 90 || lo < -180 || lo > 180 {
			r.errorf(line, "region_coords."+k, `want "latitude,longitude" in degrees, like "35.77,140.39"`)
			continue
		}
		cfg.RegionCoords[k] = [2]float64{la, lo}
	}
}
