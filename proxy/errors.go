package proxy

import (
	"net/http"
	"strconv"
)

// Code is a stable proxy error code, in the spirit of Fly's PR/PA/PM codes.
// Where a Fly code means the same thing, godwit uses it; the list with its
// statuses is documented in README.md. Codes never change meaning.
type Code string

// Proxy error codes.
const (
	CodeUnknownHost         Code = "PH01" // 404: no app serves this Host
	CodeNoMachine           Code = "PR01" // 503: no started, healthy machine
	CodeRetriesFailed       Code = "PC07" // 502: every connect attempt to a machine failed
	CodeConnectTimeout      Code = "PC05" // 504: connecting to the machine timed out (last attempt)
	CodeUpstreamFailed      Code = "PU02" // 502: the machine broke the connection before a complete response head
	CodeQueueTimeout        Code = "PL03" // 503: every machine stayed at hard_limit for the queue timeout
	CodeQueueFull           Code = "PL04" // 503: too many requests already waiting for a machine
	CodeDraining            Code = "PD01" // 503: the node is shutting down
	CodeReplayTooLarge      Code = "PA01" // 413: a replay was asked for but the body is over the replay buffer
	CodeReplayLoop          Code = "PA02" // 502: more than 10 fly-replay answers in a chain
	CodeReplayInvalid       Code = "PA03" // 502: the machine's fly-replay is malformed or contradictory
	CodeReplayNoApp         Code = "PA04" // 502: fly-replay names an app this edge does not know
	CodeReplayForbidden     Code = "PA05" // 502: fly-replay names an app of another organization
	CodeInstanceUnavailable Code = "PR02" // 503: a forced machine (fly-force-instance-id) is unknown, stopped or failing
	CodeUpgradeRejected     Code = "PU06" // 502: the protocol upgrade could not be tunnelled
	CodeOwnerRefused        Code = "PB01" // 503: the edges owning the picked machines refused the request or could not be reached
	CodeWakeFailed          Code = "PM01" // 503: the machine's driver failed to start it, or it exited while starting
	CodeWakeTimeout         Code = "PM03" // 503: the machine was not ready within autostart.wake_timeout
	CodeNotStartable        Code = "PM08" // 503: the machine is stopped and godwit does not manage it (driver none)
	CodeWakeCanceled        Code = "PM10" // 503: the wake was canceled (the node is shutting down)
	CodeWakeBusy            Code = "PM12" // 503: too many requests already wait for the app's machines to wake
	// 400: the request, or one before it on its connection, was framed
	// ambiguously: both Content-Length and Transfer-Encoding, a folded
	// header line, or chunked framing net/http could not follow.
	CodeAmbiguousFraming Code = "PX01"
	// 400: the request is one the machine could read differently from
	// the edge, which net/http lets through: a request-target that is
	// not origin-form, absolute-form or OPTIONS * (a fragment, "*" with
	// another method, authority-form outside CONNECT, an http URI with
	// no host), or an HTTP/2 or HTTP/3 host field that differs from
	// :authority.
	CodeMalformedRequest Code = "PX02"
	// 503: the edge is at proxy.max_connections; the connection is
	// answered by its listener (the request never reaches the handler)
	// and closed.
	CodeNodeConnLimit Code = "PL05"
	// 503: the app is at proxy.max_connections_per_app on this edge and
	// the connection holds none of its slots; the connection is closed
	// after the answer.
	CodeAppConnLimit Code = "PL06"
	// 408: the client sent none of its request body for
	// proxy.body_read_timeout; the request to the machine was ended.
	CodeBodyReadTimeout Code = "PL07"
)

var codeStatus = map[Code]int{
	CodeUnknownHost:         http.StatusNotFound,
	CodeNoMachine:           http.StatusServiceUnavailable,
	CodeRetriesFailed:       http.StatusBadGateway,
	CodeConnectTimeout:      http.StatusGatewayTimeout,
	CodeUpstreamFailed:      http.StatusBadGateway,
	CodeQueueTimeout:        http.StatusServiceUnavailable,
	CodeQueueFull:           http.StatusServiceUnavailable,
	CodeDraining:            http.StatusServiceUnavailable,
	CodeInstanceUnavailable: http.StatusServiceUnavailable,
	CodeReplayTooLarge:      http.StatusRequestEntityTooLarge,
	CodeReplayLoop:          http.StatusBadGateway,
	CodeReplayInvalid:       http.StatusBadGateway,
	CodeReplayNoApp:         http.StatusBadGateway,
	CodeReplayForbidden:     http.StatusBadGateway,
	CodeUpgradeRejected:     http.StatusBadGateway,
	CodeOwnerRefused:        http.StatusServiceUnavailable,
	CodeWakeFailed:          http.StatusServiceUnavailable,
	CodeWakeTimeout:         http.StatusServiceUnavailable,
	CodeNotStartable:        http.StatusServiceUnavailable,
	CodeWakeCanceled:        http.StatusServiceUnavailable,
	CodeWakeBusy:            http.StatusServiceUnavailable,
	CodeAmbiguousFraming:    http.StatusBadRequest,
	CodeMalformedRequest:    http.StatusBadRequest,
	CodeNodeConnLimit:       http.StatusServiceUnavailable,
	CodeAppConnLimit:        http.StatusServiceUnavailable,
	CodeBodyReadTimeout:     http.StatusRequestTimeout,
}

// Status is the HTTP status a client gets for the code.
func (c Code) Status() int {
	if s, ok := codeStatus[c]; ok {
		return s
	}
	return http.StatusBadGateway
}

// HeaderError names the response header that carries a proxy error code, so
// clients and load tools can tell godwit's errors from the app's.
const HeaderError = "Godwit-Error"

// writeError sends the one-line error page for code. msg is a short human
// explanation (no secrets, no addresses of machines).
func writeError(w http.ResponseWriter, code Code, requestID, msg string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set(HeaderError, string(code))
	body := "godwit " + string(code) + ": " + msg
	if requestID != "" {
		body += " (request " + requestID + ")"
	}
	body += "\n"
	h.Set("Content-Length", strconv.Itoa(len(body)))
	status := code.Status()
	if code == CodeDraining || code == CodeQueueFull || code == CodeQueueTimeout || code == CodeAppConnLimit {
		h.Set("Retry-After", "1")
	}
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
}
