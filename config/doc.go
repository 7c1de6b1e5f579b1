// Package config reads godwit's TOML configuration file, fills in every
// default and validates it, once, at start and on reload.
//
// It owns the file format: key names, defaults, units (durations are Go
// duration strings or, as in fly.toml, integers of milliseconds; an
// integer kill_timeout is seconds, as in fly.toml) and the import of an
// app's [http_service], primary_region, kill_signal and kill_timeout from
// an existing fly.toml. Every error
// names its file and line, and all of them are reported together.
//
// It does not open listeners, read certificates or key files, start
// machines or watch the file for changes: other packages receive the typed,
// validated [Config] and never read TOML, flags or the environment.
package config
