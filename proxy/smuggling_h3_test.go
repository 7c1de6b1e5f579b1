package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"
)

// The HTTP/2 cases of smuggling_h2_test.go again over HTTP/3 (RFC 9114
// 4.1.2, 4.2, 4.3 forbid the same things): raw QPACK-encoded HEADERS
// frames on a QUIC stream, so that nothing on the client side cleans them
// up. quic-go's server refuses some of them where net/http answers 400
// and the other way round, so a case rejected by the server library in
// HTTP/2 may be rejected either way here (a reset or a 4xx); what the edge
// itself decides (400 PX02) and what it forwards must be the same.

// HTTP/3 frame types (RFC 9114 7.2) and the control stream's type.
const (
	h3FrameData     = 0x0
	h3FrameHeaders  = 0x1
	h3FrameSettings = 0x4
	h3StreamControl = 0x0
)

// h3Passed are the cases quic-go's server lets through where net/http's
// HTTP/2 server resets the stream, with why that is harmless: the machine
// gets a well-formed request that it reads as the edge did.
var h3Passed = map[string]string{
	"missing :scheme":     "the edge writes the scheme itself (X-Forwarded-Proto: https); the request is GET / either way",
	":scheme not http(s)": "quic-go does not keep :scheme; the edge forwards GET / as https, which is what the connection was",
}

func TestSmugglingH3(t *testing.T) {
	m, records := startCapturingMachine(t)
	_, addr := startH3Proxy(t, oneApp("", []string{m.addr}))
	var consumed int64
	var rejected, forwarded int
	cases := h2Cases()
	for _, tc := range cases {
		if why, ok := h3Passed[tc.name]; ok {
			t.Logf("%s: passed by quic-go: %s", tc.name, why)
			get := upGET("/")
			tc.reset, tc.status, tc.up = false, http.StatusOK, &get
		}
		if tc.name == "content-length above DATA" {
			// quic-go ends the body at the FIN without checking its
			// length: the edge must, and cut the machine's request (400
			// PX01; or the machine's own early answer, which this one
			// sends as soon as it has the head).
			tc.up = nil
		}
		// Rejected in HTTP/2: rejected here too, by the library (a reset,
		// or a 4xx) or by the edge (its 400 and code).
		library := tc.up == nil && !tc.either
		if tc.up != nil {
			forwarded++
		} else {
			rejected++
		}
		t.Run(tc.name, func(t *testing.T) {
			reset, status, code := exchangeOnce(t, m, &consumed, records, tc, func() (bool, int, string) { return h3Exchange(t, addr, tc) })
			switch {
			case tc.either:
			case library && !reset && (status < 400 || status >= 500):
				t.Errorf("got status %d %s, want the stream reset or a 4xx", status, code)
			case library && status == http.StatusBadRequest && tc.code != "" && code != string(tc.code):
				t.Errorf("got status %d %q, want the stream reset or %d %q", status, code, tc.status, tc.code)
			case library:
			case reset:
				t.Errorf("got the stream reset, want status %d", tc.status)
			case status != tc.status || tc.code != "" && code != string(tc.code):
				t.Errorf("got status %d %q, want %d %q", status, code, tc.status, tc.code)
			}
		})
	}
	t.Logf("%d HTTP/3 cases: %d rejected, %d normalized and forwarded", len(cases), rejected, forwarded)
}

// h3Exchange sends tc as the first request of a new HTTP/3 connection and
// reports whether its stream (or the connection) was reset before a
// response, or the response's status and Godwit-Error.
func h3Exchange(t *testing.T, addr string, tc h2Case) (reset bool, status int, code string) {
	t.Helper()
	conn, err := dialQUIC(t, addr, http3.NextProtoH3)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctrl, err := conn.OpenUniStreamSync(ctx)
	if err != nil {
		t.Fatalf("control stream: %v", err)
	}
	ctrl.Write(quicvarint.Append(quicvarint.Append(quicvarint.Append(nil, h3StreamControl), h3FrameSettings), 0))

	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		t.Fatalf("request stream: %v", err)
	}
	str.SetDeadline(time.Now().Add(10 * time.Second))
	frame := func(typ uint64, payload []byte) []byte {
		b := quicvarint.Append(quicvarint.Append(nil, typ), uint64(len(payload)))
		return append(b, payload...)
	}
	block := func(fields [][2]string) []byte {
		var buf bytes.Buffer
		enc := qpack.NewEncoder(&buf)
		for _, f := range fields {
			enc.WriteField(qpack.HeaderField{Name: f[0], Value: f[1]})
		}
		return buf.Bytes()
	}
	out := frame(h3FrameHeaders, block(tc.fields))
	if tc.data != "" {
		out = append(out, frame(h3FrameData, []byte(tc.data))...)
	}
	if tc.trailers != nil {
		out = append(out, frame(h3FrameHeaders, block(tc.trailers))...)
	}
	str.Write(out)
	str.Close() // the request ends (FIN); the response still comes

	br := bufio.NewReader(str)
	dec := qpack.NewDecoder()
	for {
		typ, err := quicvarint.Read(br)
		if err == nil {
			var n uint64
			if n, err = quicvarint.Read(br); err == nil {
				payload := make([]byte, n)
				if _, err = io.ReadFull(br, payload); err == nil && typ == h3FrameHeaders {
					st := 0
					next := dec.Decode(payload)
					for {
						hf, derr := next()
						if derr != nil {
							break
						}
						responseField(hf.Name, hf.Value, &st, &code)
					}
					if st >= 200 {
						return false, st, code
					}
				}
			}
		}
		if err != nil {
			var se *quic.StreamError
			var ae *quic.ApplicationError
			if errors.As(err, &se) || errors.As(err, &ae) || errors.Is(err, io.EOF) {
				return true, 0, ""
			}
			t.Fatalf("read the response: %v", err)
		}
	}
}
