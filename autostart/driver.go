// Package autostart starts machines when requests need them and stops them
// when they are idle, as Fly's proxy does: drivers that start, stop and
// suspend a machine (a local process, an orchestrator's Machines API, or
// nothing), a manager that wakes a machine once for any number of waiting
// requests and knows each machine's lifecycle state, and the autostop loop.
package autostart

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/godwit/godwit/config"
)

// Spec is what a driver needs to know about one machine. SpecFor makes one
// from the config.
type Spec struct {
	ID            string
	App           string
	Region        string
	PrimaryRegion string
	Addr          string // host:port the machine serves on; PORT is its port

	// Kind names the driver of the machine: config.DriverNone ("" too),
	// config.DriverExec or config.DriverHTTP. Drivers dispatches on it.
	Kind string

	// Exec driver.
	Command []string // argv
	Env     []string // extra KEY=value pairs, after the ones Fly apps expect

	// HTTP driver: where the machine is in a Machines API; nil for the
	// other drivers.
	API *API

	// Stopping: the signal first, then after KillTimeout, SIGKILL (exec),
	// or the API's own stop (http, which is given both).
	KillSignal  string        // a name, as in fly.toml: "SIGINT" (also for ""), "SIGTERM", ...
	KillTimeout time.Duration // 0 means 5s, as Fly's
}

// API locates a machine's app in a Fly Machines API compatible
// orchestrator.
type API struct {
	URL   string // base URL, without /v1 or a trailing slash: "https://api.machines.dev"
	App   string // the app's name in the API
	Token string // bearer token; "" sends no Authorization header
}

// String describes the API without its token.
func (a API) String() string { return a.URL + " (app " + a.App + ")" }

// Defaults of a Spec's zero values, as Fly's.
const (
	DefaultKillSignal  = "SIGINT"
	DefaultKillTimeout = 5 * time.Second
)

func (s *Spec) killSignal() string {
	if s.KillSignal == "" {
		return DefaultKillSignal
	}
	return s.KillSignal
}

func (s *Spec) killTimeout() time.Duration {
	if s.KillTimeout <= 0 {
		return DefaultKillTimeout
	}
	return s.KillTimeout
}

// Driver starts, stops and suspends machines. Its methods may be called
// concurrently for different machines; the Manager never calls them
// concurrently for one machine.
type Driver interface {
	// Start starts the machine, or resumes it if it is suspended, and
	// returns once the driver has done its part (the process runs, the
	// API says started). Readiness (listening, passing checks) is the
	// caller's to check.
	Start(ctx context.Context, s *Spec) error
	// Stop stops the machine: KillSignal, then after KillTimeout, by
	// force. It returns once the machine has stopped.
	Stop(ctx context.Context, s *Spec) error
	// Suspend suspends the machine (its memory kept, resumed by Start),
	// or returns ErrUnsupported.
	Suspend(ctx context.Context, s *Spec) error
}

// Exits is implemented by drivers that learn when a machine stops on its
// own (a process that exits): the channel receives the machine's id.
type Exits interface {
	Exits() <-chan string
}

// ErrUnsupported is returned by a driver for an operation it cannot do.
var ErrUnsupported = errors.New("autostart: not supported by this driver")

// DriverOptions configure the drivers of a Drivers.
type DriverOptions struct {
	Exec ExecOptions
	HTTP HTTPOptions
	// Getenv looks up the environment variable that holds an http
	// machine's token (driver.token_env); main passes os.Getenv. Nil finds
	// none.
	Getenv func(key string) string
}

// Drivers is the Driver of all of a node's machines: it sends each call to
// the driver its Spec.Kind names, one Exec, one HTTP and None. It reports
// the exec machines' exits (Exits). Close stops the exec machines.
type Drivers struct {
	exec   *Exec
	http   *HTTP
	getenv func(string) string
}

// NewDrivers returns the drivers of a node. They last across config
// reloads: an exec machine keeps running while its Spec is replaced.
func NewDrivers(o DriverOptions) *Drivers {
	getenv := o.Getenv
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	return &Drivers{exec: NewExec(o.Exec), http: NewHTTP(o.HTTP), getenv: getenv}
}

func (d *Drivers) driver(s *Spec) (Driver, error) {
	switch s.Kind {
	case config.DriverNone, "":
		return None{}, nil
	case config.DriverExec:
		return d.exec, nil
	case config.DriverHTTP:
		return d.http, nil
	}
	return nil, fmt.Errorf("autostart: machine %s: unknown driver kind %q", s.ID, s.Kind)
}

// Start starts or resumes the machine with its driver.
func (d *Drivers) Start(ctx context.Context, s *Spec) error {
	dr, err := d.driver(s)
	if err != nil {
		return err
	}
	return dr.Start(ctx, s)
}

// Stop stops the machine with its driver.
func (d *Drivers) Stop(ctx context.Context, s *Spec) error {
	dr, err := d.driver(s)
	if err != nil {
		return err
	}
	return dr.Stop(ctx, s)
}

// Suspend suspends the machine with its driver.
func (d *Drivers) Suspend(ctx context.Context, s *Spec) error {
	dr, err := d.driver(s)
	if err != nil {
		return err
	}
	return dr.Suspend(ctx, s)
}

// Exits reports the exec machines that exit on their own; Close closes it.
func (d *Drivers) Exits() <-chan string { return d.exec.Exits() }

// Close stops every exec machine (each within its kill timeout) and
// returns once they and the drivers' goroutines are gone. It is
// idempotent.
func (d *Drivers) Close() error {
	d.http.Close()
	return d.exec.Close()
}

// SpecFor returns the Spec of machine m of app. For the http driver it
// reads the bearer token, from driver.token_file or the environment
// variable driver.token_env (through DriverOptions.Getenv); a token that
// cannot be read, or is empty, is an error.
func (d *Drivers) SpecFor(m config.Machine, app config.App) (Spec, error) {
	s := Spec{
		ID:            m.ID,
		App:           m.App,
		Region:        m.Region,
		PrimaryRegion: app.PrimaryRegion,
		Addr:          m.Address,
		Kind:          m.Driver.Kind,
		KillSignal:    app.KillSignal,
		KillTimeout:   app.KillTimeout,
	}
	switch m.Driver.Kind {
	case config.DriverExec:
		s.Command = slices.Clone(m.Driver.Command)
		for k, v := range m.Driver.Env {
			s.Env = append(s.Env, k+"="+v)
		}
		slices.Sort(s.Env)
	case config.DriverHTTP:
		token, err := d.token(m.Driver)
		if err != nil {
			return Spec{}, fmt.Errorf("autostart: machine %s: %w", m.ID, err)
		}
		s.API = &API{URL: m.Driver.URL, App: m.Driver.App, Token: token}
	}
	return s, nil
}

func (d *Drivers) token(dr config.Driver) (string, error) {
	if dr.TokenFile != "" {
		b, err := os.ReadFile(dr.TokenFile)
		if err != nil {
			return "", fmt.Errorf("driver.token_file: %w", err)
		}
		t := strings.TrimSpace(string(b))
		if t == "" {
			return "", fmt.Errorf("driver.token_file %s is empty", dr.TokenFile)
		}
		return t, nil
	}
	t := strings.TrimSpace(d.getenv(dr.TokenEnv))
	if t == "" {
		return "", fmt.Errorf("driver.token_env: the environment variable %s is not set", dr.TokenEnv)
	}
	return t, nil
}
