package replay

import (
	"strings"
	"testing"
)

func BenchmarkParseHeader(b *testing.B) {
	for _, bc := range []struct{ name, v string }{
		{"typical", `region="sjc,any";app=target-app;state=abc`},
		{"commas 16KiB", "x=" + strings.Repeat(",aaaaaaaaa", MaxHeaderBytes/10-1)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				ParseHeader(bc.v)
			}
		})
	}
}

func BenchmarkParseJSON(b *testing.B) {
	body := []byte(`{"app":"target-app","region":"iad,us","transform":{"path":"/new/path?param=value","delete_headers":["x-unwanted-header","cookie"],"set_headers":[{"name":"authorization","value":"Bearer token123"}]}}`)
	b.ReportAllocs()
	for b.Loop() {
		ParseJSON(body)
	}
}
