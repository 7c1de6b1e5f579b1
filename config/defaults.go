package config

import (
	"log/slog"
	"os"
	"time"
)

// defaultSet is the value of every key the file leaves out: the top-level
// tables, and one template for each kind of table that repeats.
type defaultSet struct {
	Config   Config  // every top-level table; Apps and Machines empty
	App      App     // an [[app]], with its [app.http_service]
	Check    Check   // an [[app.http_service.checks]]
	TCPCheck Check   // an [[app.http_service.tcp_checks]]
	Machine  Machine // a [[machine]]

	ReplayCache ReplayCacheRule // an [[app.http_service.http_options.replay_cache]]
}

// defaults returns every default of the file format; no other code chooses
// one. hostname is the default node name. App.PrimaryRegion and
// Machine.Region are empty here: they follow node.region (see followNode).
func defaults(hostname string) defaultSet {
	return defaultSet{
		Config: Config{
			Node: Node{
				Name:   hostname,
				Region: "local",
			},
			Listen: Listen{
				HTTP:  "127.0.0.1:8080",
				HTTPS: "", // off
				HTTP3: "", // off
				Admin: "127.0.0.1:9090",
			},
			TLS:      TLS{ReloadInterval: 5 * time.Second},
			Backhaul: Backhaul{Protocol: BackhaulMux},
			Log: Log{
				Level:  slog.LevelInfo,
				Format: LogJSON,
				Access: true,
			},
			Proxy: Proxy{
				ReadHeaderTimeout:   10 * time.Second,
				IdleTimeout:         120 * time.Second,
				MaxHeaderBytes:      32 << 10,
				BodyReadTimeout:     60 * time.Second,
				BodyWriteTimeout:    60 * time.Second,
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
				RecentStop:   5 * time.Minute, // Fly's PM11 window
				DrainTimeout: 10 * time.Second,
			},
		},
		App: App{
			Org:         "personal",
			KillSignal:  "SIGINT",        // Fly's
			KillTimeout: 5 * time.Second, // Fly's
			HTTPService: HTTPService{ // Fly's defaults for [http_service]
				AutoStopMachines:        AutoStopOff,
				AutoStartMachines:       true,
				MinMachinesRunning:      0,
				MinMachinesRunningScope: MinMachinesScopePrimary, // Fly's rule
				AutostopMaxPerPass:      1,                       // Fly's rule
				Concurrency: Concurrency{
					Type:      ConcurrencyConnections,
					SoftLimit: 20,
					HardLimit: 0, // none
				},
			},
		},
		Check: Check{
			GracePeriod: 0,
			Interval:    15 * time.Second,
			Timeout:     2 * time.Second,
			Method:      "GET",
			Path:        "/",
			Protocol:    CheckHTTP,
		},
		TCPCheck: Check{
			GracePeriod: 0,
			Interval:    15 * time.Second,
			Timeout:     2 * time.Second,
		},
		Machine: Machine{
			State:  StateStarted,
			Driver: Driver{Kind: DriverNone},
			// For the http driver, App follows the machine's app and
			// TokenEnv is DefaultTokenEnv unless token_file is set (see
			// loader.driver).
		},
		ReplayCache: ReplayCacheRule{
			AllowBypass: false, // every other key is required
		},
	}
}

// hostname is the default node name: the host name, or "godwit" if the
// system has none.
func hostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "godwit"
	}
	return h
}

// followNode sets the defaults that are the node's own values: an app's
// primary_region and a machine's region default to node.region.
func (d *defaultSet) followNode(n Node) {
	d.App.PrimaryRegion = n.Region
	d.Machine.Region = n.Region
}
