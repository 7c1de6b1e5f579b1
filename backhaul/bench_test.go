package backhaul

import (
	"bytes"
	"io"
	"net/http"
	"net/url"
	"testing"
)

// BenchmarkBackhaul measures one small round trip (a 64-byte request body
// and a 64-byte response) over an established connection, one request at
// a time and from parallel goroutines.
func BenchmarkBackhaul(b *testing.B) {
	payload := bytes.Repeat([]byte("x"), 64)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Write(payload)
	})
	for _, proto := range protocols {
		b.Run(proto, func(b *testing.B) {
			p := newPair(b, proto, h, Options{})
			u := &url.URL{Scheme: "https", Host: "backhaul", Path: "/bench"}
			roundTrip := func(buf []byte) {
				req := &http.Request{
					Method: http.MethodPost, URL: u, Host: "backhaul", Header: http.Header{},
					Body: io.NopCloser(bytes.NewReader(payload)), ContentLength: int64(len(payload)),
				}
				resp, err := p.cli.RoundTrip(req, p.srv.Addr(), p.srvID.Fingerprint)
				if err != nil {
					b.Error(err)
					return
				}
				for {
					if _, err := resp.Body.Read(buf); err != nil {
						break
					}
				}
				resp.Body.Close()
			}
			roundTrip(make([]byte, 512)) // dial outside the timing
			b.Run("sequential", func(b *testing.B) {
				buf := make([]byte, 512)
				b.ReportAllocs()
				for b.Loop() {
					roundTrip(buf)
				}
			})
			b.Run("parallel", func(b *testing.B) {
				b.ReportAllocs()
				b.RunParallel(func(pb *testing.PB) {
					buf := make([]byte, 512)
					for pb.Next() {
						roundTrip(buf)
					}
				})
			})
		})
	}
}
