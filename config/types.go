package config

import (
	"log/slog"
	"time"

	"github.com/godwit/godwit/replay"
)

// Config is one node's validated configuration. Every other package receives
// these typed values; none of them reads TOML, flags or the environment.
// Zero values never reach callers: Load fills in every default.
type Config struct {
	// Path is the file the config was read from ("" for an embedded one).
	Path string

	Node     Node
	Listen   Listen
	TLS      TLS
	Log      Log
	Admin    Admin
	Gossip   Gossip
	Backhaul Backhaul
	// RegionCoords adds or overrides the static (latitude, longitude) of
	// region codes, which order regions until gossip has measured RTTs.
	RegionCoords map[string][2]float64
	Proxy        Proxy
	Autostart    Autostart
	Apps         []App
	Machines     []Machine
}

// Node names this edge and the region it serves.
type Node struct {
	Name   string // default: the host name
	Region string // default: "local"
}

// Listen holds listener addresses ("host:port"); an empty address means the
// listener is off. Defaults: http 127.0.0.1:8080, admin 127.0.0.1:9090.
type Listen struct {
	HTTP  string // HTTP/1.1 and h2c
	HTTPS string // TLS with HTTP/1.1 and HTTP/2 (ALPN)
	HTTP3 string // QUIC; later issue
	Admin string // /metrics, /healthz, /v1/...
}

// TLS names the certificates of listen.https and listen.http3. CertFile and
// KeyFile are the default certificate, served to clients whose server name
// (SNI) no entry of Certificates covers and to clients that send none; both
// or neither. Without them the first of Certificates is the default. With
// no certificate at all, a self-signed one is generated (with a warning in
// the log). Relative paths in the file are resolved against the config
// file's directory, as are admin.token_file and gossip.secret_key_file.
type TLS struct {
	CertFile string
	KeyFile  string
	// Certificates are served by SNI, from [[tls.certificate]] tables, in
	// file order.
	Certificates []TLSCertificate
	// ReloadInterval is how often the certificate files are read again to
	// pick up renewed ones; 0 means only on an explicit reload (SIGHUP,
	// POST /v1/reload). Default 5s.
	ReloadInterval time.Duration
}

// TLSCertificate is one [[tls.certificate]]: a certificate chain and its
// key, both PEM, and the server names it is served for.
type TLSCertificate struct {
	CertFile string
	KeyFile  string
	// Hosts are lower-case DNS names; "*.example.com" covers exactly one
	// label before example.com. Empty means the DNS names (SANs) of the
	// certificate itself, read again on every reload. No host is in two
	// entries.
	Hosts []string
}

// Log formats.
const (
	LogJSON = "json"
	LogText = "text"
)

// Log configures structured logging.
type Log struct {
	Level  slog.Level // default info
	Format string     // LogJSON (default) or LogText
	Access bool       // one line per request; default true
}

// Admin protects the admin API. TokenFile is required when listen.admin is
// not a loopback address.
type Admin struct {
	TokenFile string
}

// Gossip configures fleet membership (used from the fleet issue on). All
// empty (the default) means no gossip.
type Gossip struct {
	Bind          string   // host:port to listen on (TCP and UDP)
	Advertise     string   // host:port peers dial, when not Bind's
	Join          []string // host:port of peers, retried until one answers
	SecretKeyFile string   // base64 of a 16, 24 or 32 byte key
}

// Backhaul configures QUIC between edges (used from the fleet issue on).
type Backhaul struct {
	Listen   string // host:port (UDP for quic, TCP for h2); empty (the default) means off
	Protocol string // BackhaulMux (default), BackhaulH2 or BackhaulQUIC
	// CertFile and KeyFile name the node's backhaul certificate (both or
	// neither); without them a self-signed one is made at start. Either
	// way peers pin its fingerprint through gossip.
	CertFile, KeyFile string
	// CAFile, if set, names an operator CA: peers are verified against it
	// instead of by pinned fingerprints.
	CAFile string
	// SimulatedRTT adds a delay to every backhaul request between two
	// regions ("iad-nrt", either order), so one machine behaves like a
	// fleet spread over the world. For tests and the demo only.
	SimulatedRTT map[string]time.Duration
}

// Backhaul protocols.
const (
	BackhaulQUIC = "quic" // HTTP/3 over QUIC
	BackhaulH2   = "h2"   // HTTP/2 over TLS over TCP
	BackhaulMux  = "mux"  // godwit's own streams over TLS over TCP: the default, measured fastest here (README)
)

// RegionPair is the SimulatedRTT key of two regions, in either order.
func RegionPair(a, b string) string {
	if a > b {
		a, b = b, a
	}
	return a + "-" + b
}

// Proxy holds the request-path limits and timeouts of the [proxy] table.
// Each default is documented in README.md.
type Proxy struct {
	ReadHeaderTimeout time.Duration // client must send all headers within this; default 10s
	IdleTimeout       time.Duration // idle client keep-alive connections close after this; default 120s
	MaxHeaderBytes    int           // request line plus headers; default 32 KiB, larger gets 431
	// BodyReadTimeout is how long a request body may go without a byte
	// arriving (each read renews it): a slower client's request ends,
	// with 408 PL07 if its response has not started. It bounds slow
	// uploads, not long ones. 0 means none; default 60s.
	BodyReadTimeout time.Duration
	// BodyWriteTimeout is how long one write to a client (at most 32 KiB
	// of a response) may take: a client that stops reading is cut and
	// the machine's connection released. 0 means none; default 60s.
	BodyWriteTimeout    time.Duration
	ConnectTimeout      time.Duration // dialing a machine; default 5s
	ConnectRetries      int           // other machines tried after a connect failure; default 2
	QueueTimeout        time.Duration // wait for a slot when every machine is at hard limit; default 10s
	MaxQueue            int           // waiters per app before 503 at once; default 1024
	UpstreamIdleTimeout time.Duration // pooled idle upstream connections close after this; default 30s
	MaxIdlePerMachine   int           // idle upstream connections kept per machine; default 64
	ReplayBodyLimit     int           // bytes of a request body kept so fly-replay can resend it; default 1 MiB (Fly's)
	ReplayCacheEntries  int           // replay-cache entries kept, bounding its memory (the oldest makes room); 0 turns it off; default 10000
	DrainTimeout        time.Duration // in-flight requests get this long on shutdown; default 30s
	// DrainDelay is how long a node shutting down keeps accepting
	// connections after it left gossip and /healthz began to answer 503,
	// so that a load balancer in front stops sending it new ones before
	// its listeners close (a connection still in the listen backlog when
	// they close is reset). Default 0: close at once.
	DrainDelay time.Duration
	// MaxConnections caps the node's client connections, over its http,
	// https and http3 listeners together (not admin, not the backhaul);
	// one more is answered 503 PL05 and closed. 0 (the default) derives
	// the cap from the open-file limit (RLIMIT_NOFILE), which the proxy
	// reads at start.
	MaxConnections int
	// MaxConnectionsPerApp caps the client connections serving one app at
	// once: a connection serves an app from its first request for it
	// until it closes. A request that would open one more gets 503 PL06.
	// 0 (the default) means no cap but MaxConnections.
	MaxConnectionsPerApp int
}

// Autostart holds the [autostart] table: how machines are woken for
// requests and stopped when idle. Each default is documented in README.md.
type Autostart struct {
	StopInterval time.Duration // how often the autostop loop runs; default 60s (Fly: "every few minutes")
	WakeTimeout  time.Duration // how long a request waits for a machine to wake; default 30s
	MaxWaiters   int           // requests per app waiting for wakes before 503 at once; 0: none waits; default 1024
	// RecentStop is Fly's PM11 window: a machine stopped this recently is
	// not woken from another edge's stale view while another candidate
	// exists. Default 5m; 0 turns the rule off.
	RecentStop time.Duration
	// DrainTimeout is how long the in-flight requests of a cordoned
	// machine get before it is stopped anyway; default 10s.
	DrainTimeout time.Duration
}

// MaxKillTimeout is the longest kill_timeout, as Fly's (shared CPUs).
const MaxKillTimeout = 300 * time.Second

// App is one application, selected by the Host header.
type App struct {
	Name          string   // unique
	Hosts         []string // at least one; lower-case, without port; each claimed by one app
	Org           string   // default "personal"
	PrimaryRegion string   // default node.region
	// KillSignal stops the app's machines: "SIGINT" (default, as Fly's),
	// "SIGTERM", "SIGQUIT", "SIGUSR1", "SIGUSR2" or "SIGKILL", the names
	// Fly accepts but SIGSTOP, which pauses a process instead of stopping it.
	KillSignal string
	// KillTimeout is how long a machine gets after KillSignal before it
	// is killed (SIGKILL); default 5s, at most MaxKillTimeout, as Fly's.
	KillTimeout time.Duration
	HTTPService HTTPService
}

// Values of HTTPService.AutoStopMachines. The file may also say false (off)
// or true (stop), as older fly.toml files do.
const (
	AutoStopOff     = "off"
	AutoStopStop    = "stop"
	AutoStopSuspend = "suspend"
)

// HTTPService mirrors fly.toml's [http_service] with Fly's defaults.
type HTTPService struct {
	InternalPort       int    // informational (from fly.toml); machines carry their address
	ForceHTTPS         bool   // answer plain HTTP with 301 to https
	AutoStopMachines   string // AutoStopOff (default), AutoStopStop, AutoStopSuspend
	AutoStartMachines  bool   // default true
	MinMachinesRunning int    // default 0
	// MinMachinesRunningScope says where MinMachinesRunning holds:
	// MinMachinesScopePrimary (default, Fly's rule) or
	// MinMachinesScopeRegion (godwit's opt-in).
	MinMachinesRunningScope string
	// AutostopMaxPerPass is how many machines of one region a pass of the
	// autostop loop may stop; default 1, Fly's rule. A larger value stops
	// up to that many when the excess is that large.
	AutostopMaxPerPass int
	Concurrency        Concurrency
	Checks             []Check // HTTP checks ([[app.http_service.checks]])
	TCPChecks          []Check // TCP checks ([[app.http_service.tcp_checks]])

	// ReplayCache holds the session rules of fly.toml's
	// [[http_service.http_options.replay_cache]]
	// ([[app.http_service.http_options.replay_cache]] here), in file order.
	ReplayCache []ReplayCacheRule
}

// Values of HTTPService.MinMachinesRunningScope.
const (
	MinMachinesScopePrimary = "primary" // in the app's primary region only (Fly's rule)
	MinMachinesScopeRegion  = "region"  // in every region that has machines of the app
)

// Concurrency types.
const (
	ConcurrencyConnections = "connections"
	ConcurrencyRequests    = "requests"
)

// Concurrency is a machine's load limits. HardLimit 0 means none (Fly's
// default since 2024); SoftLimit defaults to 20.
type Concurrency struct {
	Type      string // ConcurrencyConnections (default) or ConcurrencyRequests
	SoftLimit int
	HardLimit int
}

// Check protocols.
const (
	CheckHTTP  = "http"
	CheckHTTPS = "https"
)

// Check is one active health check. For TCP checks only GracePeriod,
// Interval and Timeout apply.
type Check struct {
	GracePeriod   time.Duration     // default 0: check at once after start
	Interval      time.Duration     // default 15s
	Timeout       time.Duration     // default 2s
	Method        string            // default GET; upper-cased
	Path          string            // default "/"
	Protocol      string            // CheckHTTP (default) or CheckHTTPS
	TLSServerName string            // for https
	TLSSkipVerify bool              // for https
	Headers       map[string]string // sent with each check
}

// Values of ReplayCacheRule.Type: what identifies a session.
const (
	ReplayCacheCookie = "cookie"
	ReplayCacheHeader = "header"
)

// ReplayCacheRule is one session-based replay-cache rule, Fly's
// replay_cache. When a machine answers a request under Pattern with
// fly-replay, the proxy remembers where the replay went for that request's
// session (the value of the cookie or header Name), so the session's next
// requests under Pattern go straight there for TTL instead of visiting the
// first machine again. Every key but allow_bypass is required.
type ReplayCacheRule struct {
	PathPrefix  string         // as written: "/api", "/api/*" or "api.example.com/api"
	Pattern     replay.Pattern // PathPrefix parsed; the rules of one app have distinct patterns
	TTL         time.Duration  // whole seconds, 10s to 365 days (Fly's bounds)
	Type        string         // ReplayCacheCookie or ReplayCacheHeader
	Name        string         // the cookie or header, as written; a token, and no fly- header
	AllowBypass bool           // clients may skip the cache (fly-replay-cache-control: skip); default false
}

// SessionRules returns the replay_cache rules as the replay cache matches
// them (replay.MatchRule), in file order; nil when there are none.
func (s HTTPService) SessionRules() []replay.SessionRule {
	if len(s.ReplayCache) == 0 {
		return nil
	}
	out := make([]replay.SessionRule, len(s.ReplayCache))
	for i, r := range s.ReplayCache {
		out[i] = replay.SessionRule{Pattern: r.Pattern, TTL: r.TTL, Header: r.Type == ReplayCacheHeader, Name: r.Name, AllowBypass: r.AllowBypass}
	}
	return out
}

// Machine states at start.
const (
	StateStarted = "started"
	StateStopped = "stopped"
)

// Machine is one app machine this edge owns.
type Machine struct {
	ID      string // unique
	App     string // the Name of one of Config.Apps
	Region  string // default node.region
	Address string // host:port the machine serves HTTP on
	State   string // StateStarted (default) or StateStopped
	Driver  Driver
}

// Driver kinds.
const (
	DriverNone = "none" // the machine is managed elsewhere; godwit only routes to it
	DriverExec = "exec" // a local process
	DriverHTTP = "http" // the Machines API
)

// DefaultTokenEnv is the environment variable the http driver takes its
// bearer token from when the machine names neither token_file nor
// token_env, as flyctl does.
const DefaultTokenEnv = "FLY_API_TOKEN"

// Driver says how the machine is started and stopped (autostart issue).
// The keys of one kind are errors with another.
type Driver struct {
	Kind string // DriverNone (default), DriverExec, DriverHTTP

	// exec
	Command []string          // argv; required
	Env     map[string]string // extra environment variables; nil when none

	// http: a Fly Machines API compatible orchestrator.
	URL       string // base URL, such as "https://api.machines.dev"; required
	App       string // the app's name in the API; default the machine's app
	TokenFile string // bearer token in this file (trimmed), or
	TokenEnv  string // in this environment variable; default DefaultTokenEnv unless TokenFile is set
}
