package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2specVersion is the h2spec release the test installs (with go install,
// into a cache directory outside the repository) and runs.
const h2specVersion = "v2.2.1+incompatible"

// h2specKnown are h2spec cases that fail against godwit for reasons godwit
// cannot fix: each is net/http's HTTP/2 server behaving as it chooses to.
// Keyed by "section/description" as h2spec's JUnit report names them; the
// value is the reason. A failure not listed here fails the test, and a
// listed case that passes is logged so the list can shrink.
var h2specKnown = map[string]string{
	"http2/6.5.3/Sends multiple values of SETTINGS_INITIAL_WINDOW_SIZE": "net/http's HTTP/2 server " +
		"hangs up (GOAWAY PROTOCOL_ERROR) on a SETTINGS frame that repeats a setting, on purpose " +
		"against abuse, where RFC 9113 says to apply the values in order",
	`http2/8.1.2.2/Sends a HEADERS frame that contains the TE header field with any value other than "trailers"`: "net/http " +
		"answers the malformed request with its own 400 (the handler is never called) rather than the " +
		"stream error PROTOCOL_ERROR; the request does not reach the machine either way",
	"http2/8.1.2.2/Sends a HEADERS frame that contains the connection-specific header field": "net/http " +
		"answers the malformed request with its own 400 (the handler is never called) rather than the " +
		"stream error PROTOCOL_ERROR; the request does not reach the machine either way",
}

// TestH2spec runs h2spec, the HTTP/2 conformance suite, against the https
// listener (HTTP/2 negotiated by ALPN) in front of a real machine, and fails
// on every failure not in h2specKnown.
func TestH2spec(t *testing.T) {
	if testing.Short() {
		t.Skip("h2spec: skipped in -short mode (installs and runs an external conformance suite, ~30 s)")
	}
	bin := installH2spec(t)

	// A body of at least 5 bytes, or h2spec skips its negative flow
	// control window case (http2/6.9.2).
	m := startMachine(t, "m1", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "hello from m1\n")
	}, nil)
	// h2spec sends ":authority: 127.0.0.1:PORT"; routing matches hosts
	// without their port.
	p := startProxy(t, fmt.Sprintf(`
[[app]]
name  = "web"
hosts = ["127.0.0.1"]
[[machine]]
id      = "m1"
app     = "web"
address = %q
`, m.addr))
	_, port, err := net.SplitHostPort(p.httpsAddr)
	if err != nil {
		t.Fatalf("https address %q: %v", p.httpsAddr, err)
	}

	report := filepath.Join(t.TempDir(), "h2spec.xml")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// -S: the strict cases too (RFC "SHOULD"s); -o 5: a case's timeout, in
	// seconds, for a loaded CI machine (-race).
	cmd := exec.CommandContext(ctx, bin, "-t", "-k", "-S", "-h", "127.0.0.1", "-p", port, "-o", "5", "-j", report)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	runErr := cmd.Run() // exits 1 when any case failed: the report says which
	var exit *exec.ExitError
	if runErr != nil && !errors.As(runErr, &exit) {
		t.Fatalf("h2spec: %v\n%s", runErr, out.String())
	}
	cases, err := readH2specReport(report)
	if err != nil {
		t.Fatalf("h2spec report: %v (h2spec: %v)\n%s", err, runErr, out.String())
	}

	var passed, skipped, failed int
	var unexpected, known []string
	seen := make(map[string]bool)
	for _, c := range cases {
		seen[c.key()] = true
		switch {
		case c.Skipped != nil:
			skipped++
			t.Logf("h2spec: skipped %s", c.key())
		case c.Failure != nil || c.Error != nil:
			failed++
			detail := c.detail()
			if reason, ok := h2specKnown[c.key()]; ok {
				known = append(known, fmt.Sprintf("%s (known: %s)", c.key(), reason))
				continue
			}
			unexpected = append(unexpected, fmt.Sprintf("%s\n\t%s", c.key(), strings.ReplaceAll(detail, "\n", "\n\t")))
		default:
			passed++
			if _, ok := h2specKnown[c.key()]; ok {
				t.Logf("h2spec: known failure %q passed: remove it from h2specKnown", c.key())
			}
		}
	}
	t.Logf("h2spec %s: %d passed, %d skipped, %d failed of %d (%d known)", h2specVersion, passed, skipped, failed, len(cases), len(known))
	for _, k := range known {
		t.Logf("h2spec: %s", k)
	}
	for k := range h2specKnown {
		if !seen[k] {
			t.Errorf("h2specKnown names %q, which h2spec %s did not run", k, h2specVersion)
		}
	}
	if len(cases) == 0 {
		t.Fatalf("h2spec ran no case (h2spec: %v)\n%s", runErr, out.String())
	}
	if len(unexpected) > 0 {
		sort.Strings(unexpected)
		t.Errorf("h2spec: got %d failures not in h2specKnown, want none:\n%s", len(unexpected), strings.Join(unexpected, "\n"))
	}
}

// installH2spec returns the path of the h2spec binary, installing it with
// go install into the user's cache directory (not the repository) if it is
// not there yet. It skips the test when that fails (no Go command, no
// module proxy).
func installH2spec(t *testing.T) string {
	t.Helper()
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Skipf("h2spec: skipped, no cache directory to install it into: %v", err)
	}
	dir := filepath.Join(cache, "godwit-tools", "h2spec-"+h2specVersion)
	bin := filepath.Join(dir, "h2spec")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("h2spec: skipped, not installed in %s and no go command to install it: %v", dir, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Skipf("h2spec: skipped, cannot create %s: %v", dir, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goCmd, "install", "github.com/summerwind/h2spec/cmd/h2spec@"+h2specVersion)
	// Outside this module, with none of the caller's GOFLAGS (a -mod
	// flag would refuse pkg@version); h2spec's release has no go.mod, so
	// its dependencies resolve to their newest versions.
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=", "GO111MODULE=on")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Skipf("h2spec: skipped, go install github.com/summerwind/h2spec/cmd/h2spec@%s failed (no network?): %v\n%s", h2specVersion, err, out)
	}
	return bin
}

// h2specCase is one <testcase> of h2spec's JUnit report.
type h2specCase struct {
	Package   string   `xml:"package,attr"`   // "http2/6.5.3"
	ClassName string   `xml:"classname,attr"` // the case's description
	Failure   *xmlText `xml:"failure"`
	Skipped   *xmlText `xml:"skipped"`
	Error     *xmlText `xml:"error"`
}

type xmlText struct {
	Text string `xml:",innerxml"`
}

func (c h2specCase) key() string { return c.Package + "/" + c.ClassName }

func (c h2specCase) detail() string {
	if c.Failure != nil {
		return c.Failure.Text
	}
	if c.Error != nil {
		return c.Error.Text
	}
	return ""
}

// readH2specReport parses h2spec's JUnit report at path.
func readH2specReport(path string) ([]h2specCase, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r struct {
		Suites []struct {
			Cases []h2specCase `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("parsing %s: %w", path, err)
	}
	var cases []h2specCase
	for _, s := range r.Suites {
		cases = append(cases, s.Cases...)
	}
	return cases, nil
}

// TestH2MaxReadFrameSize checks that both listeners advertise
// SETTINGS_MAX_FRAME_SIZE h2MaxReadFrameSize over HTTP/2 and treat a larger
// HEADERS frame as a connection error (h2spec http2/4.2 case 3).
func TestH2MaxReadFrameSize(t *testing.T) {
	m := startMachine(t, "m1", nil, nil)
	p := startProxy(t, fmt.Sprintf(`
[[app]]
name  = "web"
hosts = ["web.example.com"]
[[machine]]
id      = "m1"
app     = "web"
address = %q
`, m.addr))
	for _, tc := range []struct {
		name string
		dial func(t *testing.T) net.Conn
	}{
		{"https, ALPN h2", func(t *testing.T) net.Conn {
			nc := dialProxy(t, p.httpsAddr)
			tc := tls.Client(nc, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
			if err := tc.Handshake(); err != nil {
				t.Fatalf("tls handshake: %v", err)
			}
			if got := tc.ConnectionState().NegotiatedProtocol; got != "h2" {
				t.Fatalf("ALPN: got %q, want h2", got)
			}
			return tc
		}},
		{"http, h2c prior knowledge", func(t *testing.T) net.Conn { return dialProxy(t, p.httpAddr) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.dial(t)
			if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
				t.Fatalf("write preface: %v", err)
			}
			fr := http2.NewFramer(c, c)
			if err := fr.WriteSettings(); err != nil {
				t.Fatalf("write SETTINGS: %v", err)
			}
			f, err := fr.ReadFrame()
			if err != nil {
				t.Fatalf("read the server's SETTINGS: %v", err)
			}
			sf, ok := f.(*http2.SettingsFrame)
			if !ok {
				t.Fatalf("first frame: got %v, want SETTINGS", f)
			}
			if got, ok := sf.Value(http2.SettingMaxFrameSize); !ok || got != h2MaxReadFrameSize {
				t.Errorf("SETTINGS_MAX_FRAME_SIZE: got %d (sent: %v), want %d", got, ok, h2MaxReadFrameSize)
			}

			var block bytes.Buffer
			enc := hpack.NewEncoder(&block)
			for _, hf := range []hpack.HeaderField{
				{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "https"},
				{Name: ":path", Value: "/"}, {Name: ":authority", Value: "web.example.com"},
				{Name: "x-big", Value: strings.Repeat("x", 2*h2MaxReadFrameSize), Sensitive: true},
			} {
				enc.WriteField(hf)
			}
			if block.Len() <= h2MaxReadFrameSize {
				t.Fatalf("header block: got %d bytes, want over %d", block.Len(), h2MaxReadFrameSize)
			}
			fr.SetMaxReadFrameSize(1 << 20)
			if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
				t.Fatalf("write HEADERS of %d bytes: %v", block.Len(), err)
			}
			for {
				f, err := fr.ReadFrame()
				if err != nil {
					t.Fatalf("reading frames after a %d-byte HEADERS: got %v before GOAWAY, want GOAWAY FRAME_SIZE_ERROR", block.Len(), err)
				}
				switch f := f.(type) {
				case *http2.GoAwayFrame:
					if f.ErrCode != http2.ErrCodeFrameSize {
						t.Fatalf("GOAWAY: got error code %v, want FRAME_SIZE_ERROR", f.ErrCode)
					}
					return
				case *http2.HeadersFrame, *http2.DataFrame:
					t.Fatalf("a %d-byte HEADERS frame: got a response (%v), want GOAWAY FRAME_SIZE_ERROR", block.Len(), f)
				}
			}
		})
	}
}
