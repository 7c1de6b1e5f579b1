package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/godwit/godwit/config"
	"github.com/godwit/godwit/proxy"
)

// statusDefaultAdmin is the admin API `godwit status` asks when neither
// --admin nor GODWIT_ADMIN says otherwise: listen.admin's default.
const statusDefaultAdmin = "http://127.0.0.1:9090"

// statusMaxBody bounds an admin answer godwit status reads: a fleet of
// 100k machines lists in about 40 MB.
const statusMaxBody = 64 << 20

const statusHelp = `usage: godwit status [--admin URL] [--token TOKEN | --token-file FILE] [--json]

Shows the fleet as one edge sees it, from that edge's admin API
(GET /v1/members and GET /v1/machines):

  members   every edge of the fleet: name, region, state (alive, dead, left)
            and the estimated round trip from the asked edge in ms ("-"
            until measured); "(self)" marks the asked edge
  machines  every machine the asked edge routes to, sorted by app, region
            and id: its owner edge ("local" for the asked edge's own),
            state (started, starting, stopping, stopped, suspended, failed),
            health, load as in-flight/soft/hard ("-": no hard limit), load
            band, requests queued for the app, whether its owner is
            reachable, and a footnote with its last start/stop failure

and a summary line. With --json it prints one JSON object instead,
{"admin": URL, "members": [...], "machines": [...]}, the lists exactly as the
admin API answers them (same field names and order).

The admin URL is --admin, else $GODWIT_ADMIN, else ` + statusDefaultAdmin + `;
"host:port" alone means http://host:port. Reads are open even when
admin.token_file is set; a token given with --token or --token-file is sent
as "Authorization: Bearer <token>" all the same.

Exit status: 0 shown; 1 the admin API is unreachable or answers an error or
something that is not the expected JSON; 2 usage error.

Flags:
`

// cmdStatus is `godwit status`: the fleet's members and machines as one
// edge's admin API reports them, as a table or as JSON.
func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors and help are printed below
	admin := fs.String("admin", "", "admin API `URL` of the edge to ask (default $GODWIT_ADMIN, else "+statusDefaultAdmin+")")
	token := fs.String("token", "", "bearer `TOKEN` to send (visible to other local users in ps; prefer --token-file)")
	tokenFile := fs.String("token-file", "", "`FILE` holding the bearer token to send, such as the edge's admin.token_file")
	asJSON := fs.Bool("json", false, "print one JSON object instead of tables")
	timeout := fs.Duration("timeout", 10*time.Second, "give up on the admin API after this long")
	helpText := func() string {
		var b strings.Builder
		b.WriteString(statusHelp)
		fs.SetOutput(&b)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
		return b.String()
	}
	usageError := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "godwit status: "+format+"\n\n%s", append(a, helpText())...)
		return 2
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, helpText())
			return 0
		}
		return usageError("%v", err)
	}
	if fs.NArg() > 0 {
		return usageError("unexpected argument %q", fs.Arg(0))
	}
	if *token != "" && *tokenFile != "" {
		return usageError("--token and --token-file both given: pass one")
	}
	if *timeout <= 0 {
		return usageError("--timeout %v: want a positive duration", *timeout)
	}
	raw, from := *admin, "--admin"
	if raw == "" {
		raw, from = os.Getenv("GODWIT_ADMIN"), "GODWIT_ADMIN"
	}
	if raw == "" {
		raw = statusDefaultAdmin
	}
	base, err := statusAdminURL(raw)
	if err != nil {
		return usageError("%s %q: %v", from, raw, err)
	}
	tok := *token
	if *tokenFile != "" {
		b, err := config.ReadRegularFile(*tokenFile, 64<<10)
		if err != nil {
			fmt.Fprintf(stderr, "godwit status: --token-file: %v\n", err)
			return 1
		}
		if tok = strings.TrimSpace(string(b)); tok == "" {
			fmt.Fprintf(stderr, "godwit status: --token-file %s is empty\n", *tokenFile)
			return 1
		}
	}

	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	st, err := fetchStatus(ctx, base, tok)
	if err != nil {
		fmt.Fprintf(stderr, "godwit status: %v\n", err)
		return 1
	}
	if *asJSON {
		out, err := json.MarshalIndent(st.report, "", "  ")
		if err != nil { // the lists were valid JSON when read
			fmt.Fprintf(stderr, "godwit status: %v\n", err)
			return 1
		}
		stdout.Write(append(out, '\n'))
		return 0
	}
	st.render(stdout, statusColor(stdout))
	return 0
}

// statusAdminURL checks and normalises an admin URL: http or https, a
// host, no query; a bare "host:port" gets http://. The result has no
// trailing slash, so that paths append to it.
func statusAdminURL(raw string) (string, error) {
	if !strings.Contains(raw, "://") {
		raw = "http://" + raw
	}
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return "", errors.Unwrap(err) // url.Error repeats the URL
	case u.Scheme != "http" && u.Scheme != "https":
		return "", fmt.Errorf("scheme %q: want http or https", u.Scheme)
	case u.Host == "":
		return "", errors.New("no host")
	case u.RawQuery != "" || u.Fragment != "" || u.User != nil:
		return "", errors.New("want scheme://host:port[/path] only, without user, query or fragment")
	}
	return strings.TrimRight(u.String(), "/"), nil
}

// statusColor reports whether the table is coloured: only on a terminal,
// and not when NO_COLOR (https://no-color.org) is set or TERM is dumb.
func statusColor(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok || os.Getenv("NO_COLOR") != "" || os.Getenv("TERM") == "dumb" {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// statusReport is what `godwit status --json` prints: the admin API's
// lists as they came, so that scripts see its field names and any field
// this version of godwit does not know.
type statusReport struct {
	Admin    string            `json:"admin"`
	Members  []json.RawMessage `json:"members"`
	Machines []json.RawMessage `json:"machines"`
}

// fleetStatus is one edge's view of the fleet, raw and decoded.
type fleetStatus struct {
	report   statusReport
	members  []proxy.MemberStatus
	machines []proxy.MachineStatus
}

// fetchStatus reads /v1/members and /v1/machines from the admin API at
// base, sending token as a bearer token if it is not empty.
func fetchStatus(ctx context.Context, base, token string) (*fleetStatus, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	st := &fleetStatus{report: statusReport{Admin: base}}
	var err error
	if st.report.Members, err = fetchList(ctx, c, base, "/v1/members", token, &st.members); err != nil {
		return nil, err
	}
	if st.report.Machines, err = fetchList(ctx, c, base, "/v1/machines", token, &st.machines); err != nil {
		return nil, err
	}
	return st, nil
}

// fetchList GETs base+path, a JSON list, into dst and returns its
// elements raw (an empty list for null).
func fetchList(ctx context.Context, c *http.Client, base, path, token string, dst any) ([]json.RawMessage, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
	if err != nil {
		return nil, fmt.Errorf("GET %s%s: %w", base, path, err)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "godwit-status/"+version())
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		if ue := (*url.Error)(nil); errors.As(err, &ue) {
			err = ue.Err // it repeats the URL
		}
		if errors.Is(err, context.DeadlineExceeded) {
			err = errors.New("no answer in time (see --timeout)")
		}
		return nil, fmt.Errorf("cannot reach the admin API at %s (GET %s): %w\n"+
			"Is an edge running there? Pass --admin URL (or set GODWIT_ADMIN) with the edge's listen.admin address.", base, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, statusMaxBody+1))
	switch {
	case err != nil:
		return nil, fmt.Errorf("GET %s%s: reading the answer: %w", base, path, err)
	case resp.StatusCode != http.StatusOK:
		msg := fmt.Sprintf("GET %s%s: %s", base, path, resp.Status)
		if e := statusErrorBody(body); e != "" {
			msg += ": " + e
		}
		switch resp.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			msg += "\nPass the edge's admin token with --token-file FILE (or --token)."
		case http.StatusNotFound:
			msg += "\nIs " + base + " a godwit admin API (listen.admin)?"
		}
		return nil, errors.New(msg)
	case len(body) > statusMaxBody:
		return nil, fmt.Errorf("GET %s%s: answer larger than %d bytes", base, path, statusMaxBody)
	}
	var raw []json.RawMessage
	if err := json.Unmarshal(body, &raw); err != nil {
		return nil, fmt.Errorf("GET %s%s: bad JSON, want a list: %w (answer begins %q)", base, path, err, statusSnippet(body))
	}
	if err := json.Unmarshal(body, dst); err != nil {
		return nil, fmt.Errorf("GET %s%s: bad JSON: %w", base, path, err)
	}
	if raw == nil {
		raw = []json.RawMessage{}
	}
	return raw, nil
}

// statusErrorBody is the message of an admin error answer: its JSON
// "error", else the start of its text.
func statusErrorBody(body []byte) string {
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		return e.Error
	}
	return statusSnippet(body)
}

// statusSnippet is the first line of body, at most 200 bytes of it.
func statusSnippet(body []byte) string {
	s := strings.TrimSpace(string(body))
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// SGR colours of the table. Every cell of a coloured table is wrapped in
// one of these and statusReset, all of the same length, so that
// text/tabwriter, which counts bytes, still aligns the columns.
const (
	sgrPlain  = "\x1b[39m"
	sgrBold   = "\x1b[01m"
	sgrRed    = "\x1b[31m"
	sgrGreen  = "\x1b[32m"
	sgrYellow = "\x1b[33m"
	sgrReset  = "\x1b[0m"
)

// statusTable writes tab-aligned rows, coloured or not.
type statusTable struct {
	tw    *tabwriter.Writer
	color bool
}

// cell is one cell of a row: its text and its colour (sgrPlain, ...).
type cell struct{ text, sgr string }

func plain(s string) cell { return cell{s, sgrPlain} }

func (t *statusTable) row(cells ...cell) {
	for i, c := range cells {
		if i > 0 {
			t.tw.Write([]byte{'\t'})
		}
		if t.color {
			io.WriteString(t.tw, c.sgr+c.text+sgrReset)
		} else {
			io.WriteString(t.tw, c.text)
		}
	}
	t.tw.Write([]byte{'\n'})
}

func (t *statusTable) header(names ...string) {
	cells := make([]cell, len(names))
	for i, n := range names {
		cells[i] = cell{n, sgrBold}
	}
	t.row(cells...)
}

// render writes the status as tables and a summary line.
func (st *fleetStatus) render(w io.Writer, color bool) {
	members := slices.Clone(st.members)
	slices.SortFunc(members, func(a, b proxy.MemberStatus) int {
		return cmp.Or(strings.Compare(a.Region, b.Region), strings.Compare(a.Name, b.Name))
	})
	machines := slices.Clone(st.machines)
	slices.SortFunc(machines, func(a, b proxy.MachineStatus) int {
		return cmp.Or(strings.Compare(a.App, b.App), strings.Compare(a.Region, b.Region), strings.Compare(a.ID, b.ID))
	})
	bold := func(s string) string {
		if color {
			return sgrBold + s + sgrReset
		}
		return s
	}

	title := "godwit status of " + st.report.Admin
	for _, m := range members {
		if m.Self {
			title += fmt.Sprintf(" (edge %s, region %s)", m.Name, m.Region)
		}
	}
	fmt.Fprintf(w, "%s\n\n%s\n", title, bold("MEMBERS"))
	t := &statusTable{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0), color: color}
	t.header("NAME", "REGION", "STATE", "RTT (ms)")
	alive := 0
	for _, m := range members {
		name := m.Name
		if m.Self {
			name += " (self)"
		}
		rtt := "-"
		if m.RTTMs != nil && !m.Self {
			rtt = strconv.FormatFloat(*m.RTTMs, 'f', 2, 64)
		}
		stateColor := sgrRed
		switch m.State {
		case "alive":
			alive++
			stateColor = sgrGreen
		case "left":
			stateColor = sgrYellow
		}
		t.row(plain(name), plain(m.Region), cell{m.State, stateColor}, plain(rtt))
	}
	t.tw.Flush()

	fmt.Fprintf(w, "\n%s\n", bold("MACHINES"))
	var footnotes []string
	counts := map[string]int{}
	unreachable, failing := 0, 0
	if len(machines) == 0 {
		fmt.Fprintln(w, "(none)")
	} else {
		t.header("APP", "ID", "REGION", "OWNER", "STATE", "HEALTH", "IN/SOFT/HARD", "BAND", "QUEUED", "REACHABLE")
	}
	for _, m := range machines {
		counts[m.State]++
		owner := m.Owner
		if owner == "" {
			owner = "local"
		}
		hard := "-"
		if m.HardLimit > 0 {
			hard = strconv.Itoa(m.HardLimit)
		}
		state := cell{m.State, sgrPlain}
		switch m.State {
		case "started":
			state.sgr = sgrGreen
		case "starting", "stopping":
			state.sgr = sgrYellow
		case "failed":
			state.sgr = sgrRed
		}
		if m.LastFailure != "" {
			footnotes = append(footnotes, fmt.Sprintf("[%d] %s last failed: %s", len(footnotes)+1, m.ID, m.LastFailure))
			state.text += fmt.Sprintf(" [%d]", len(footnotes))
		}
		// A machine that is not started fails its checks as a matter
		// of course: only a started one failing them is news.
		health := cell{m.Health, sgrPlain}
		if m.Health != "passing" && m.State == "started" {
			failing++
			health.sgr = sgrRed
		}
		band := cell{m.Band, sgrPlain}
		switch m.Band {
		case "above_soft":
			band.sgr = sgrYellow
		case "at_hard":
			band.sgr = sgrRed
		}
		reachable := cell{"yes", sgrPlain}
		if !m.Reachable {
			unreachable++
			reachable = cell{"no", sgrRed}
		}
		t.row(plain(m.App), plain(m.ID), plain(m.Region), plain(owner), state, health,
			plain(fmt.Sprintf("%d/%d/%s", m.Inflight, m.SoftLimit, hard)), band,
			plain(strconv.Itoa(m.Queued)), reachable)
	}
	t.tw.Flush()
	for _, f := range footnotes {
		fmt.Fprintln(w, f)
	}

	summary := fmt.Sprintf("\n%d of %d members alive; %d machines: %d started", alive, len(members), len(machines), counts["started"])
	for _, s := range []string{"starting", "stopping", "stopped", "suspended", "failed"} {
		if n := counts[s]; n > 0 || s == "stopped" || s == "failed" {
			summary += fmt.Sprintf(", %d %s", n, s)
		}
		delete(counts, s)
	}
	delete(counts, "started")
	others := make([]string, 0, len(counts))
	for s := range counts {
		others = append(others, s)
	}
	slices.Sort(others)
	for _, s := range others {
		summary += fmt.Sprintf(", %d %s", counts[s], s)
	}
	if failing > 0 {
		summary += fmt.Sprintf("; %d started but failing health checks", failing)
	}
	if unreachable > 0 {
		summary += fmt.Sprintf("; %d unreachable", unreachable)
	}
	fmt.Fprintln(w, summary)
}
