package proxy

import (
	"net/url"
	"strings"
	"testing"
)

// FuzzEscapeTargetPath checks the request-target normalization the edge
// applies before writing a request to a machine (escapeTargetPath): the
// path it writes holds only bytes pathByteOK allows, decodes to the same
// bytes as the path it was given, survives Go's URL parsing unchanged (as
// the backhaul needs: the owner edge must write the same target), and
// leaves the query alone; a target that needs nothing is returned as it
// is.
func FuzzEscapeTargetPath(f *testing.F) {
	for _, s := range []string{
		"/", "/a/b?c=d", "/caf\xe9", "/a{b}|c\"d`^\\<>?q={x}|\xe9", "/a%2Fb%7e/[x]!$&'()*+,;=:@?%zz",
		"//double/slash", "/%61", "/?", "/a?b?c", "/\x80\xff", "/a b",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, target string) {
		// Targets as net/http hands them on: origin-form, with valid
		// escapes in the path (it refuses others) and no control bytes.
		path, query, hasQuery := strings.Cut(target, "?")
		if !strings.HasPrefix(target, "/") || strings.ContainsAny(target, " \x7f#") || strings.IndexFunc(target, func(r rune) bool { return r < 0x20 }) >= 0 {
			return
		}
		if _, err := url.PathUnescape(path); err != nil {
			return
		}
		got := escapeTargetPath(target)
		gotPath, gotQuery, gotHasQuery := strings.Cut(got, "?")
		if gotHasQuery != hasQuery || gotQuery != query {
			t.Fatalf("escapeTargetPath(%q) = %q: the query changed", target, got)
		}
		for i := 0; i < len(gotPath); i++ {
			if !pathByteOK(gotPath[i]) {
				t.Fatalf("escapeTargetPath(%q) = %q: byte %#x left in the path", target, got, gotPath[i])
			}
		}
		want, _ := url.PathUnescape(path)
		if dec, err := url.PathUnescape(gotPath); err != nil || dec != want {
			t.Fatalf("escapeTargetPath(%q) = %q: decodes to %q (err %v), want %q", target, got, dec, err, want)
		}
		if escapeTargetPath(got) != got {
			t.Fatalf("escapeTargetPath(%q) = %q, and again %q: not stable", target, got, escapeTargetPath(got))
		}
		if path == gotPath && got != target {
			t.Fatalf("escapeTargetPath(%q) = %q: changed a target that needed nothing", target, got)
		}
		// The backhaul sends the target through a URL: it must come out
		// as the edge writes it to a machine of its own.
		u, err := url.Parse("https://owner" + got)
		if err != nil {
			t.Fatalf("url.Parse of the escaped target %q: %v", got, err)
		}
		if rt := u.RequestURI(); rt != got && !(got == "/?" && rt == "/") {
			t.Fatalf("escapeTargetPath(%q) = %q, through a URL %q", target, got, rt)
		}
	})
}
