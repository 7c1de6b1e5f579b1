// Package health decides whether machines pass their health checks.
//
// A [Checker] runs the active checks of each [Target] (the HTTP and TCP
// checks of the app's http_service) and keeps one fact per machine: passing
// or failing. The request path reads it with [Checker.Passing], learns of
// every change through a [ReportFunc], and feeds its own connect errors back
// with [Checker.MarkFailing].
//
// The package owns the check schedule, the check connections and that
// passing/failing state. It does not route requests or pick machines, and it
// never starts, stops or restarts a machine: as on Fly.io, a failing check
// only takes the machine out of routing until its checks pass again. What a
// failing machine means is up to the caller.
//
// # Rules
//
//   - Every target starts passing: a machine declared started is routable at
//     once.
//   - Each check first runs when its grace period, counted from
//     [Target.Started], has elapsed, then every interval. Each attempt is
//     bounded by the check's timeout.
//   - A machine passes only while every one of its checks passed on its
//     latest attempt. One failing check makes it failing; it passes again when
//     all of them pass.
//   - An HTTP check passes on a 2xx status only. Redirects are not followed,
//     so a 301 fails. Each attempt uses a new connection (keep-alives are
//     off), never the environment's proxy settings.
//   - A TCP check passes when a connection is established within the timeout.
//   - [Checker.MarkFailing] makes a machine failing at once; it stays failing
//     until one of its checks passes again.
//   - A machine with no checks at all is never checked actively. After
//     MarkFailing it is probed with a TCP connect to its address every second
//     (each attempt bounded by one second) until a connect succeeds; then it
//     is passing again.
//   - When [Checker.Set] changes a target (its address, start time or
//     checks), the target's checks restart from their grace period. A failing
//     machine stays failing until one of its new checks passes.
//
// # Metrics
//
// A Checker registers one collector on the registerer given to [NewChecker]:
//
//	godwit_health_checks_total{app, type, result}
//
// a counter of check attempts, with type "http" or "tcp" and result "pass" or
// "fail". The passive TCP probes of machines without checks count as "tcp".
// Attempts cut short because their target was removed or the Checker stopped
// are not counted.
//
// # Logs
//
// Transitions are logged at Info (passing) and Warn (failing) with the keys
// machine, app and reason; each check attempt is logged at Debug.
package health
