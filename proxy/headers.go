package proxy

import (
	"bufio"
	"net/http"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// Header names the proxy sets or reads.
const (
	hdrFlyClientIP       = "Fly-Client-Ip"
	hdrFlyRegion         = "Fly-Region"
	hdrFlyRequestID      = "Fly-Request-Id"
	hdrFlyForwardedProto = "Fly-Forwarded-Proto"
	hdrFlyForwardedPort  = "Fly-Forwarded-Port"
	hdrFlyForwardedSSL   = "Fly-Forwarded-Ssl"
	hdrXForwardedFor     = "X-Forwarded-For"
	hdrXForwardedProto   = "X-Forwarded-Proto"
	hdrXForwardedPort    = "X-Forwarded-Port"
	hdrXForwardedSSL     = "X-Forwarded-Ssl"
	hdrVia               = "Via"
	hdrServerTiming      = "Server-Timing"
	hdrRequestIDResp     = "Fly-Request-Id"
)

// viaName is the pseudonym godwit writes into Via, after the protocol version.
const viaName = "godwit"

// hopHeaders are hop-by-hop headers (RFC 9110 section 7.6.1): they describe
// one connection and are never forwarded.
var hopHeaders = map[string]bool{
	"Connection":          true,
	"Proxy-Connection":    true,
	"Keep-Alive":          true,
	"Proxy-Authenticate":  true,
	"Proxy-Authorization": true,
	"Te":                  true,
	"Trailer":             true,
	"Transfer-Encoding":   true,
	"Upgrade":             true,
}

// dropRequestHeader reports whether a client request header must not reach
// the machine: hop-by-hop headers, framing the proxy redoes itself, and
// every header the proxy owns (Fly-*, fly-replay-src and the X-Forwarded-*
// it sets), so a client cannot spoof them. X-Forwarded-For and Via are not
// dropped but appended to. Host is written from Request.Host: an HTTP/2
// client's host field, which net/http leaves in the header, is not.
func dropRequestHeader(k string) bool {
	if hopHeaders[k] {
		return true
	}
	switch k {
	case "Host", "Content-Length", "Expect", hdrXForwardedFor, hdrVia, hdrBackhaul, "Godwit-Host",
		hdrXForwardedProto, hdrXForwardedPort, hdrXForwardedSSL:
		return true
	}
	return len(k) >= 4 && (k[:4] == "Fly-" || strings.EqualFold(k[:4], "fly-"))
}

// dropUnderscored reports whether k, with "_" for "-", is a header
// dropRequestHeader drops: CGI-style servers (PHP, WSGI, Rack) read
// Fly_Client_Ip as Fly-Client-Ip, so a client could spoof it that way.
func dropUnderscored(k string) bool {
	return strings.IndexByte(k, '_') >= 0 &&
		dropRequestHeader(http.CanonicalHeaderKey(strings.ReplaceAll(k, "_", "-")))
}

// forwardTrailer reports whether the client's trailer field k may reach
// the machine: none that frames, routes, authenticates or says how to
// read the body (RFC 9110 6.5.1), nor one dropRequestHeader drops, nor one
// whose name is not a token. net/http checks the names of header fields
// but not of trailer fields, and keeps "X-A : b" as "X-A " (golang/go#34540):
// written out, that is a field line strict machines refuse and lenient
// ones read as X-A.
func forwardTrailer(k string) bool {
	return httpguts.ValidHeaderFieldName(k) && httpguts.ValidTrailerHeader(k) && !dropRequestHeader(k) && !dropUnderscored(k)
}

// connectionTokens reports whether name is listed in the Connection header,
// which makes it hop-by-hop too.
func connectionListed(connection []string, name string) bool {
	for _, v := range connection {
		for v != "" {
			var tok string
			tok, v, _ = strings.Cut(v, ",")
			if strings.EqualFold(strings.TrimSpace(tok), name) {
				return true
			}
		}
	}
	return false
}

// viaValue is this hop's Via entry: the client's HTTP version as Via
// writes it ("1.1", "2", "3") and our pseudonym.
func viaValue(r *http.Request) string {
	switch r.ProtoMajor {
	case 2:
		return "2 " + viaName
	case 3:
		return "3 " + viaName
	}
	if r.ProtoMinor == 0 {
		return "1.0 " + viaName
	}
	return "1.1 " + viaName
}

// forwardInfo is what the proxy adds to a request it forwards.
type forwardInfo struct {
	clientIP  string
	region    string // the accepting edge's
	requestID string
	proto     string // "http" or "https"
	port      string // the port the client connected to
	ssl       string // "on" or "off"
	via       string // "1.1 godwit"
	upgrade   string // non-empty: forward Connection: Upgrade with this Upgrade value
	// preferredUnavailable names the preferred machine that could not take
	// the request (Fly's fly-preferred-instance-unavailable).
	preferredUnavailable string
	// replaySrc is the fly-replay-src of a replayed request.
	replaySrc string
	// replayFailed is the fly-replay-failed of a request a replay fallback
	// returned to its replaying machine.
	replayFailed string
	// replayCacheStatus is the fly-replay-cache-status of a replayed
	// request: hit, miss or bypass.
	replayCacheStatus string
	chunked           bool // body framed with Transfer-Encoding: chunked
	wake              bool // backhaul: the owner may wake the machine (no started one was found)
}

// writeRequestHead writes the request line and headers of r, rewritten for
// the machine, to bw.
func writeRequestHead(bw *bufio.Writer, r *http.Request, fi *forwardInfo) {
	bw.WriteString(r.Method)
	bw.WriteByte(' ')
	bw.WriteString(requestTarget(r))
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(r.Host)
	bw.WriteString("\r\n")

	connection := r.Header["Connection"]
	for k, vv := range r.Header {
		if dropRequestHeader(k) || dropUnderscored(k) || (len(connection) > 0 && connectionListed(connection, k)) {
			continue
		}
		for _, v := range vv {
			writeHeader(bw, k, v)
		}
	}
	if te := r.Header["Te"]; len(te) > 0 && teHasTrailers(te) {
		writeHeader(bw, "Te", "trailers")
	}

	writeHeader(bw, hdrFlyClientIP, fi.clientIP)
	writeHeader(bw, hdrFlyRegion, fi.region)
	writeHeader(bw, hdrFlyRequestID, fi.requestID)
	writeHeader(bw, hdrFlyForwardedProto, fi.proto)
	writeHeader(bw, hdrFlyForwardedPort, fi.port)
	writeHeader(bw, hdrFlyForwardedSSL, fi.ssl)
	writeJoined(bw, hdrXForwardedFor, r.Header[hdrXForwardedFor], fi.clientIP)
	writeHeader(bw, hdrXForwardedProto, fi.proto)
	writeHeader(bw, hdrXForwardedPort, fi.port)
	writeHeader(bw, hdrXForwardedSSL, fi.ssl)
	writeJoined(bw, hdrVia, r.Header[hdrVia], fi.via)

	if fi.replaySrc != "" {
		writeHeader(bw, "Fly-Replay-Src", fi.replaySrc)
	}
	if fi.replayCacheStatus != "" {
		writeHeader(bw, hdrReplayCacheStatus, fi.replayCacheStatus)
	}
	if fi.replayFailed != "" {
		writeHeader(bw, "Fly-Replay-Failed", fi.replayFailed)
	}
	if fi.preferredUnavailable != "" {
		writeHeader(bw, "Fly-Preferred-Instance-Unavailable", fi.preferredUnavailable)
	}
	if fi.upgrade != "" {
		writeHeader(bw, "Connection", "Upgrade")
		writeHeader(bw, "Upgrade", fi.upgrade)
	}
	switch {
	case fi.chunked:
		writeHeader(bw, "Transfer-Encoding", "chunked")
		first := true
		for k := range r.Trailer {
			if !forwardTrailer(k) {
				continue
			}
			if first {
				bw.WriteString("Trailer: ")
			} else {
				bw.WriteString(", ")
			}
			bw.WriteString(k)
			first = false
		}
		if !first {
			bw.WriteString("\r\n")
		}
	case r.ContentLength > 0 || r.Header["Content-Length"] != nil || methodExpectsBody(r.Method):
		var buf [20]byte
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(buf[:0], max(r.ContentLength, 0), 10))
		bw.WriteString("\r\n")
	}
	bw.WriteString("\r\n")
}

func methodExpectsBody(m string) bool { return m == "POST" || m == "PUT" || m == "PATCH" }

// requestTarget is the origin-form target (path and query) for the machine.
// A client's absolute-form target (GET http://host/p) is reduced to its path.
// Bytes that RFC 3986 does not allow in a path (non-ASCII, and `"<>\^`{|}`,
// which net/http lets through) are percent-encoded, so that the machine
// gets the same target whether the request came to its own edge or over
// the backhaul (whose URL handling encodes them).
func requestTarget(r *http.Request) string {
	if u := r.RequestURI; u != "" && (u[0] == '/' || u == "*") {
		return escapeTargetPath(u)
	}
	return r.URL.RequestURI()
}

// escapeTargetPath percent-encodes the bytes of u's path (up to the first
// '?') that are not allowed there, leaving valid escapes and the query as
// they are. It allocates only when there is something to encode.
func escapeTargetPath(u string) string {
	end := strings.IndexByte(u, '?')
	if end < 0 {
		end = len(u)
	}
	i := 0
	for i < end && pathByteOK(u[i]) {
		i++
	}
	if i == end {
		return u
	}
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(u) + 16)
	b.WriteString(u[:i])
	for ; i < end; i++ {
		if c := u[i]; pathByteOK(c) {
			b.WriteByte(c)
		} else {
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
		}
	}
	b.WriteString(u[end:])
	return b.String()
}

// pathByteOK reports whether c may stand as it is in a request path: the
// unreserved and sub-delim characters of RFC 3986, ':', '@', '/', '%'
// (net/http has checked the escapes), and '[' ']', which Go's URL keeps
// as they are too.
func pathByteOK(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("-._~!$&'()*+,;=:@/%[]", c) >= 0
}

func writeHeader(bw *bufio.Writer, k, v string) {
	bw.WriteString(k)
	bw.WriteString(": ")
	bw.WriteString(v)
	bw.WriteString("\r\n")
}

// writeJoined writes k with the client's values followed by ours, as one
// comma-separated line (X-Forwarded-For and Via append, per RFC 7239/9110).
func writeJoined(bw *bufio.Writer, k string, prior []string, ours string) {
	bw.WriteString(k)
	bw.WriteString(": ")
	for _, v := range prior {
		if v = strings.TrimSpace(v); v != "" {
			bw.WriteString(v)
			bw.WriteString(", ")
		}
	}
	bw.WriteString(ours)
	bw.WriteString("\r\n")
}

func teHasTrailers(te []string) bool {
	for _, v := range te {
		for v != "" {
			var tok string
			tok, v, _ = strings.Cut(v, ",")
			tok, _, _ = strings.Cut(tok, ";")
			if strings.EqualFold(strings.TrimSpace(tok), "trailers") {
				return true
			}
		}
	}
	return false
}

// copyResponseHeader copies the machine's response header to the client's,
// without hop-by-hop headers.
func copyResponseHeader(dst, src http.Header) {
	connection := src["Connection"]
	for k, vv := range src {
		if hopHeaders[k] || k == "Fly-Replay" || (len(connection) > 0 && connectionListed(connection, k)) {
			continue // Fly-Replay is for the edge, never the client
		}
		dst[k] = vv
	}
}

// copyRawResponseHeader copies the machine's response header for the
// accepting edge of a backhaul request: everything but hop-by-hop headers,
// fly-replay included, since that edge runs the replay.
func copyRawResponseHeader(dst, src http.Header) {
	connection := src["Connection"]
	for k, vv := range src {
		if hopHeaders[k] || (len(connection) > 0 && connectionListed(connection, k)) {
			continue
		}
		dst[k] = vv
	}
}
