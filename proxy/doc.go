// Package proxy owns the request path of an edge node: the client listeners
// (HTTP/1.1, h2c, TLS with HTTP/1.1 and HTTP/2), the handler that strips
// spoofable headers, picks a machine through package routing and forwards
// the request over pooled keep-alive connections, the admin API, and the
// metrics of the request path. HTTP/1 client connections are watched for
// request smuggling (smuggle.go) below net/http, which hides a Content-Length
// that came with Transfer-Encoding.
//
// It does not decide which machine is nearest or least loaded (routing), nor
// whether a machine is healthy (health); it asks them.
package proxy
