package autostart

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// HTTPOptions configure an HTTP driver.
type HTTPOptions struct {
	// Client sends the API calls. Nil means a client of the driver's own:
	// connect timeout 5s, TLS handshake 10s, no proxy; a call's overall
	// bound is its context.
	Client *http.Client
	// Log receives the driver's own events. Nil means slog.Default().
	Log *slog.Logger
}

// HTTP is the driver of machines run by a Fly Machines API compatible
// orchestrator (driver.kind "http"), such as Fly's own
// (https://api.machines.dev). Each operation is one call and a wait:
//
//	POST {url}/v1/apps/{app}/machines/{id}/start    then GET .../wait?state=started
//	POST {url}/v1/apps/{app}/machines/{id}/stop     then GET .../wait?state=stopped
//	POST {url}/v1/apps/{app}/machines/{id}/suspend  then GET .../wait?state=suspended
//
// where stop carries {"signal": KillSignal, "timeout": KillTimeout} and
// each wait a timeout query parameter in seconds (1 to 60, as Fly's API
// accepts; the wait is asked again while ctx lasts). The URL, app and
// bearer token are the Spec's API. An answer other than 2xx is an
// *APIError. The driver does not retry: its caller backs off.
type HTTP struct {
	client *http.Client
	own    bool // client is the driver's: Close closes its idle connections
	log    *slog.Logger
}

// NewHTTP returns an HTTP driver.
func NewHTTP(o HTTPOptions) *HTTP {
	h := &HTTP{client: o.Client, log: o.Log}
	if h.log == nil {
		h.log = slog.Default()
	}
	if h.client == nil {
		h.own = true
		h.client = &http.Client{Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout: 10 * time.Second,
			ForceAttemptHTTP2:   true,
			MaxIdleConnsPerHost: 16,
			IdleConnTimeout:     90 * time.Second,
		}}
	}
	return h
}

// APIError is an answer of the Machines API other than 2xx.
type APIError struct {
	Op      string // "start", "stop", "suspend" or "wait for started" (stopped, suspended)
	Machine string // "{app}/{id}" as the API knows it
	Status  int    // the HTTP status
	Message string // the "error" of the API's JSON answer, or the start of its body
}

func (e *APIError) Error() string {
	msg := fmt.Sprintf("autostart: machines api: %s %s: %d %s", e.Op, e.Machine, e.Status, http.StatusText(e.Status))
	if e.Message != "" {
		msg += ": " + e.Message
	}
	return msg
}

// maxWait is the longest wait the Machines API accepts in one call.
const maxWait = 60 * time.Second

// Start starts the machine (or resumes it, if suspended) and waits until
// the API says it is started.
func (h *HTTP) Start(ctx context.Context, s *Spec) error {
	if err := h.call(ctx, s, http.MethodPost, "start", "start", nil, nil); err != nil {
		return err
	}
	return h.wait(ctx, s, "started")
}

// stopRequest is the body of a stop, as Fly's API takes it.
type stopRequest struct {
	Signal  string `json:"signal"`
	Timeout string `json:"timeout"` // a Go duration: "5s"
}

// Stop asks the API to stop the machine with its KillSignal and
// KillTimeout, and waits until it says the machine is stopped.
func (h *HTTP) Stop(ctx context.Context, s *Spec) error {
	body := stopRequest{Signal: s.killSignal(), Timeout: s.killTimeout().String()}
	if err := h.call(ctx, s, http.MethodPost, "stop", "stop", nil, body); err != nil {
		return err
	}
	return h.wait(ctx, s, "stopped")
}

// Suspend asks the API to suspend the machine and waits until it says the
// machine is suspended.
func (h *HTTP) Suspend(ctx context.Context, s *Spec) error {
	if err := h.call(ctx, s, http.MethodPost, "suspend", "suspend", nil, nil); err != nil {
		return err
	}
	return h.wait(ctx, s, "suspended")
}

// Close closes the idle connections of the driver's own client.
func (h *HTTP) Close() {
	if h.own {
		h.client.CloseIdleConnections()
	}
}

// wait asks the API to answer once the machine is in state. The API's own
// wait ends with 408 after its timeout; it is asked again while ctx lasts.
func (h *HTTP) wait(ctx context.Context, s *Spec, state string) error {
	op := "wait for " + state
	for {
		q := url.Values{"state": {state}, "timeout": {strconv.Itoa(waitSeconds(ctx))}}
		began := time.Now()
		err := h.call(ctx, s, http.MethodGet, "wait", op, q, nil)
		var ae *APIError
		if !errors.As(err, &ae) || ae.Status != http.StatusRequestTimeout {
			return err
		}
		if time.Since(began) < time.Second { // an API that times out at once is not asked in a hot loop
			t := time.NewTimer(250 * time.Millisecond)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w (%w)", err, ctx.Err())
		}
		h.log.Debug("machines api wait timed out: asking again", "machine", s.ID, "state", state)
	}
}

// waitSeconds is the timeout of one wait call: what is left of ctx, in
// whole seconds from 1 to 60.
func waitSeconds(ctx context.Context) int {
	d := maxWait
	if dl, ok := ctx.Deadline(); ok {
		d = min(time.Until(dl), maxWait)
	}
	return max(1, int(d/time.Second))
}

// call makes one API call on the machine: method on
// {url}/v1/apps/{app}/machines/{id}/{path}, with query and a JSON body (if
// not nil). op names it in errors.
func (h *HTTP) call(ctx context.Context, s *Spec, method, path, op string, query url.Values, body any) error {
	api := s.API
	if api == nil || api.URL == "" {
		return fmt.Errorf("autostart: machines api: %s machine %s: no API url in its spec", op, s.ID)
	}
	machine := api.App + "/" + s.ID
	u := api.URL + "/v1/apps/" + url.PathEscape(api.App) + "/machines/" + url.PathEscape(s.ID) + "/" + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("autostart: machines api: %s %s: %w", op, machine, err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return fmt.Errorf("autostart: machines api: %s %s: %w", op, machine, err)
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if api.Token != "" {
		req.Header.Set("Authorization", authorization(api.Token))
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return fmt.Errorf("autostart: machines api: %s %s: %w", op, machine, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return nil
	}
	return &APIError{Op: op, Machine: machine, Status: resp.StatusCode, Message: apiMessage(data)}
}

// authorization is the Authorization header of a token: Fly's macaroon
// tokens ("FlyV1 fm2_...") go as they are, others as a bearer token.
func authorization(token string) string {
	if strings.HasPrefix(token, "FlyV1 ") || strings.HasPrefix(token, "Bearer ") {
		return token
	}
	return "Bearer " + token
}

// apiMessage is the error message of an API answer: the "error" of Fly's
// {"error": "..."}, or else the start of the body, on one line.
func apiMessage(body []byte) string {
	var e struct {
		Error string `json:"error"`
	}
	msg := string(body)
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		msg = e.Error
	}
	msg = strings.Join(strings.FieldsFunc(msg, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }), " ")
	if len(msg) > 200 {
		msg = strings.ToValidUTF8(msg[:200], "") + "..."
	}
	return msg
}
