package proxy

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/pprof"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/godwit/godwit/autostart"
)

// MachineStatus is one machine in GET /v1/machines.
type MachineStatus struct {
	ID        string `json:"id"`
	App       string `json:"app"`
	Region    string `json:"region"`
	Address   string `json:"address"`
	State     string `json:"state"`  // started, starting, stopping, stopped, suspended, failed
	Health    string `json:"health"` // "passing" or "failing"
	Band      string `json:"band"`   // below_soft, above_soft, at_hard
	Inflight  int    `json:"inflight"`
	SoftLimit int    `json:"soft_limit"`
	HardLimit int    `json:"hard_limit"` // 0: none
	Queued    int    `json:"queued"`     // requests waiting for any machine of the app
	// Owner is the edge that owns a machine of another node ("" for this
	// node's own); Reachable is false while that owner is down.
	Owner     string `json:"owner,omitempty"`
	Reachable bool   `json:"reachable"`
	// LastFailure says why this node's machine last failed to start or
	// stop, if it ever did.
	LastFailure string `json:"last_failure,omitempty"`
}

// adminHandler serves the admin API: /metrics, /healthz, /v1/machines.
func (s *Server) adminHandler(gatherer prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{EnableOpenMetrics: true}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if s.handler.draining.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("draining\n"))
			return
		}
		if stuck := s.watch.stuck(); len(stuck) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("stuck: " + strings.Join(stuck, ", ") + "\n"))
			return
		}
		w.Write([]byte("ok\n"))
	})
	// Profiles are as sensitive as the admin API itself, which binds to
	// loopback unless a token protects it; with a token they need it.
	mux.HandleFunc("GET /debug/pprof/", s.authorized(pprof.Index))
	mux.HandleFunc("GET /debug/pprof/profile", s.authorized(pprof.Profile))
	mux.HandleFunc("GET /debug/pprof/trace", s.authorized(pprof.Trace))
	mux.HandleFunc("GET /v1/machines", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, s.Machines())
	})
	mux.HandleFunc("GET /v1/members", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, s.Members())
	})
	mux.HandleFunc("POST /v1/apps/{app}/machines/{id}/{op}", s.authorized(s.adminMachineOp))
	mux.HandleFunc("POST /v1/reload", s.authorized(s.adminReload))
	return mux
}

// Machines lists every machine the node routes to, its own and (with
// Owner set) those of other edges, with their live state, sorted by app and
// id. For another edge's machine, Inflight counts this node's requests and
// Band is the higher of the owner's report and this node's own load.
func (s *Server) Machines() []MachineStatus {
	var out []MachineStatus
	failures := map[string]string{}
	var states []autostart.MachineState
	if s.handler.wakes != nil {
		states = s.handler.wakes.States()
	}
	for _, ms := range states {
		if !ms.LastFailure.IsZero() {
			failures[ms.ID] = ms.LastFailure.UTC().Format(time.RFC3339) + ": " + ms.LastFailureReason
		}
	}
	for _, a := range s.table.Apps() {
		for _, m := range a.Machines() {
			st := MachineStatus{
				ID: m.ID, App: a.Name, Region: m.Region, Address: m.Addr,
				State: m.State().String(), Health: "failing", Band: m.Band().String(),
				Inflight: m.Inflight(), SoftLimit: m.SoftLimit(), HardLimit: m.HardLimit(),
				Queued: a.QueueLen(), Owner: m.Owner, Reachable: m.Reachable(),
			}
			if f, ok := failures[m.ID]; ok && !m.Remote() {
				st.LastFailure = f
			}
			if m.Healthy() {
				st.Health = "passing"
			}
			out = append(out, st)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].App != out[j].App {
			return out[i].App < out[j].App
		}
		return out[i].ID < out[j].ID
	})
	return out
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// MemberStatus is one node of the fleet in /v1/members.
type MemberStatus struct {
	Name     string `json:"name"`
	Region   string `json:"region"`
	Addr     string `json:"addr"`     // gossip address
	Backhaul string `json:"backhaul"` // backhaul address
	State    string `json:"state"`    // alive, dead, left
	Self     bool   `json:"self"`
	// RTTMs is the estimated round trip from this node (network
	// coordinates), absent until measured.
	RTTMs *float64 `json:"rtt_ms,omitempty"`
}

// Members lists the fleet's nodes, this one included, sorted by region and
// name; just this node when gossip is off.
func (s *Server) Members() []MemberStatus {
	s.mu.Lock()
	f := s.fleet
	s.mu.Unlock()
	if f == nil {
		return []MemberStatus{{Name: s.cfg.Node.Name, Region: s.cfg.Node.Region, State: "alive", Self: true}}
	}
	var out []MemberStatus
	for _, m := range f.node.Members() {
		st := MemberStatus{Name: m.Name, Region: m.Region, Addr: m.Addr, Backhaul: m.BackhaulAddr, State: m.State, Self: m.Name == s.cfg.Node.Name}
		if m.HasRTT {
			ms := float64(m.RTT.Microseconds()) / 1000
			st.RTTMs = &ms
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Region != out[j].Region {
			return out[i].Region < out[j].Region
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// adminMachineOp starts, stops or suspends one of this node's machines:
// POST /v1/apps/{app}/machines/{id}/start|stop|suspend, answering with the
// machine's status once the operation is done (a start waits until the
// machine is ready, bounded by autostart.wake_timeout).
func (s *Server) adminMachineOp(w http.ResponseWriter, r *http.Request) {
	app, id, op := r.PathValue("app"), r.PathValue("id"), r.PathValue("op")
	m := s.table.Machine(id)
	switch {
	case s.handler.wakes == nil:
		adminError(w, http.StatusServiceUnavailable, "the node is not running")
		return
	case m == nil || m.App != app:
		adminError(w, http.StatusNotFound, fmt.Sprintf("app %q has no machine %q", app, id))
		return
	case m.Remote():
		adminError(w, http.StatusConflict, fmt.Sprintf("machine %q is owned by edge %s: ask it", id, m.Owner))
		return
	}
	var err error
	switch op {
	case "start":
		err = s.handler.wakes.Start(r.Context(), id)
	case "stop":
		err = s.handler.wakes.Stop(r.Context(), id, autostart.ModeStop)
	case "suspend":
		err = s.handler.wakes.Stop(r.Context(), id, autostart.ModeSuspend)
	default:
		adminError(w, http.StatusNotFound, fmt.Sprintf("unknown operation %q (want start, stop or suspend)", op))
		return
	}
	if err != nil {
		adminError(w, http.StatusBadGateway, fmt.Sprintf("%s machine %s: %v", op, id, err))
		return
	}
	for _, st := range s.Machines() {
		if st.ID == id {
			writeJSON(w, st)
			return
		}
	}
}

func adminError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// authorized guards a mutating (or sensitive) admin endpoint: with
// admin.token_file set it needs "Authorization: Bearer <token>", compared
// in constant time; without one (the admin API then listens on loopback
// only: config refuses otherwise) it is open.
func (s *Server) authorized(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		want := *s.adminToken.Load()
		if want == "" {
			h(w, r)
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(want)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="godwit admin"`)
			adminError(w, http.StatusUnauthorized, "this admin call needs the bearer token of admin.token_file: Authorization: Bearer <token>")
			return
		}
		h(w, r)
	}
}

// adminReload is POST /v1/reload: the config file is read again and
// applied (Server.Reload). 200 with the report; 400 with the errors, lines
// included, when the new config is refused (the old one keeps running).
func (s *Server) adminReload(w http.ResponseWriter, r *http.Request) {
	rep, err := s.ReloadSource()
	switch {
	case errors.Is(err, ErrNotRunning):
		adminError(w, http.StatusServiceUnavailable, err.Error())
	case err != nil:
		adminError(w, http.StatusBadRequest, err.Error())
	default:
		writeJSON(w, rep)
	}
}
