package config

// ownKeys says which of the keys a fly.toml may also set an app sets itself:
// the app's own win.
type ownKeys struct {
	region, killSignal, killTimeout bool
}

// importFlyToml reads the fly.toml named by an app's fly_toml key (v) and
// takes from it the [http_service] table (with its
// [[http_service.http_options.replay_cache]] rules) and, unless the app sets
// its own (own), primary_region, kill_signal and kill_timeout (an integer
// of seconds or a duration string, as flyctl reads it). Every other table of the fly.toml
// (app, build, env, mounts, vm, services, ...) is ignored. Errors in the fly.toml
// name that file and its line; a file that cannot be read is an error on
// the fly_toml key.
func (l *loader) importFlyToml(r *reader, v *value, a *App, own ownKeys) {
	if v.str == "" {
		r.errorf(v.line, "fly_toml", "must not be empty")
		return
	}
	path := l.path(v.str)
	data, err := readFile(path)
	if err != nil {
		r.errorf(v.line, "fly_toml", "%v", err)
		return
	}
	tree, errs := parseTree(data, path)
	if errs != nil {
		*l.d.errs = append(*l.d.errs, errs...)
		return
	}
	fl := &loader{
		d:   &decoder{file: path, errs: l.d.errs},
		dir: l.dir,
		def: l.def,
	}
	fr := fl.d.root(tree)
	if !own.region {
		fl.name(fr, "primary_region", &a.PrimaryRegion)
	}
	if !own.killSignal {
		fl.killSignal(fr, &a.KillSignal)
	}
	if !own.killTimeout {
		fl.killTimeout(fr, &a.KillTimeout)
	}
	fl.httpService(fr.table("http_service"), &a.HTTPService, true)
	// No fr.done(): the rest of the fly.toml is not godwit's.
}
