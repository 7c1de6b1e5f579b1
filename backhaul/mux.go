package backhaul

// The mux protocol: godwit's own multiplexed request streams over one TLS
// connection per peer. It exists because a request through the backhaul
// pays for both ends of the transport on top of two full proxy passes, and
// net/http's HTTP/2 costs several goroutine hand-offs per request on each
// side (a frame-writer goroutine per write and a new handler goroutine whose
// stack grows on every request on the server; a read loop and a body writer
// on the client), HPACK, and a write per frame. Measured in process
// (BenchmarkBackhaul in ../proxy), that was four times the cost of a plain
// HTTP/1.1 hop. mux keeps what the backhaul needs from HTTP/2 (streams, per
// stream flow control, resets, pings, GOAWAY, trailers, full duplex) and
// drops the rest:
//
//   - A request's caller writes its frames itself, under the connection's
//     write lock, so a GET is one write system call; a handler does the same
//     with its response, and a small response goes out, head, body and end,
//     in one write when the handler returns.
//   - One read loop per connection and side delivers frames; it never blocks
//     on a stream, because flow control bounds what a stream can buffer.
//   - Heads are encoded plainly (length-prefixed strings), decoded into one
//     string allocation; no header compression, since edges are close in
//     bandwidth terms and the heads are small.
//
// Frame: a 9-byte header (payload length: 3 bytes, type: 1, flags: 1,
// stream id: 4, all big-endian) and the payload. Streams are opened by the
// client with odd, increasing ids; stream 0 is the connection.

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
)

const alpnMux = "godwit-mux/1"

type frameType uint8

const (
	frameSettings frameType = iota // server's first frame: version, max streams
	frameHeaders                   // a request or response head, or trailers
	frameData                      // body bytes
	frameReset                     // the sender abandons the stream: code
	frameWindow                    // the receiver consumed n more bytes
	framePing                      // liveness; answered with flagAck
	frameGoAway                    // server: no stream above id will be served
)

const (
	flagEnd = 1 // the sender's last frame on the stream
	flagAck = 2 // a ping's answer
)

// Reset codes.
const (
	codeCancel   = 0 // the sender no longer wants the stream
	codeRefused  = 1 // the server did not process the request: safe to retry
	codeInternal = 2 // the handler failed mid-answer
	codeProtocol = 3 // the peer broke the protocol on this stream (a request it cannot serve)
)

const (
	muxVersion     = 1
	frameHeaderLen = 9
	maxFrame       = 32 << 10 // largest data payload a sender writes and a receiver accepts
	maxHead        = 1 << 20  // largest frame, head or trailers, a receiver accepts
	// streamWindow is how many body bytes a stream may have unread at its
	// receiver. 1 MiB keeps a cross-region stream (100 ms) above 10 MB/s;
	// it bounds memory only when the reader falls behind.
	streamWindow = 1 << 20
	writeBuffer  = 16 << 10
)

var (
	errStreamRefused   = errors.New("mux: the peer refused the stream (not processed)")
	errStreamCanceled  = errors.New("mux: stream canceled by the peer")
	errStreamInternal  = errors.New("mux: the peer's handler failed mid-answer")
	errStreamMalformed = errors.New("mux: the peer found the request malformed (not processed)")
	errStreamDone      = errors.New("mux: stream finished")
	errIdle            = errors.New("mux: no frame from the peer within the idle timeout")
	errRetired         = errors.New("mux: connection replaced by a new one")
)

// protocolError is a peer that broke the protocol; the connection ends.
type protocolError string

func (e protocolError) Error() string { return "mux: protocol error: " + string(e) }

// muxConn is one end of a mux connection: the state both sides share.
type muxConn struct {
	nc   net.Conn
	br   *bufio.Reader
	opts *Options

	wmu  sync.Mutex
	bw   *bufio.Writer
	werr error // the first write error; every later write fails with it

	mu      sync.Mutex
	streams map[uint32]*muxStream
	err     error // why the connection ended; set once
	// retiring: the connection takes no new stream and closes when its
	// last one ends (a client's connection that was replaced).
	retiring bool
	done     chan struct{} // closed when it ended

	reads atomic.Uint64 // frames read, for the idle check
	pings chan []byte   // pings to answer, from the read loop to keepAlive
}

func newMuxConn(nc net.Conn, opts *Options) *muxConn {
	return &muxConn{
		nc:      nc,
		br:      bufio.NewReaderSize(nc, 32<<10),
		bw:      bufio.NewWriterSize(nc, writeBuffer),
		opts:    opts,
		streams: make(map[uint32]*muxStream),
		done:    make(chan struct{}),
		pings:   make(chan []byte, 1),
	}
}

// frame is one frame to write.
type frame struct {
	typ     frameType
	flags   uint8
	id      uint32
	payload []byte
}

// write writes frames and flushes them: one system call for all, unless
// they exceed the buffer.
//
// The read loop never writes: a write can block on a full socket, and a
// peer whose read loop blocked in turn would never drain it.
func (c *muxConn) write(fs ...frame) error {
	c.wmu.Lock()
	err := c.writeLocked(fs...)
	c.wmu.Unlock()
	if err != nil {
		c.fail(fmt.Errorf("mux: write: %w", err))
	}
	return err
}

// writeLocked is write with c.wmu held; the caller fails the connection
// on error.
func (c *muxConn) writeLocked(fs ...frame) error {
	if c.werr != nil {
		return c.werr
	}
	var hdr [frameHeaderLen]byte
	for _, f := range fs {
		n := len(f.payload)
		hdr[0], hdr[1], hdr[2] = byte(n>>16), byte(n>>8), byte(n)
		hdr[3], hdr[4] = byte(f.typ), f.flags
		binary.BigEndian.PutUint32(hdr[5:], f.id)
		c.bw.Write(hdr[:])
		c.bw.Write(f.payload)
	}
	if err := c.bw.Flush(); err != nil {
		c.werr = err
	}
	return c.werr
}

// readFrame reads the next frame header; the payload is left to the
// caller, who must consume exactly n bytes. A frame longer than any this
// protocol sends (bytes that are not frames, such as a stray HTTP/1.1
// request, look like one) ends the connection at once.
func (c *muxConn) readFrame() (typ frameType, flags uint8, id uint32, n int, err error) {
	var hdr [frameHeaderLen]byte
	if _, err = io.ReadFull(c.br, hdr[:]); err != nil {
		return
	}
	c.reads.Add(1)
	n = int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
	if n > maxHead {
		return 0, 0, 0, 0, protocolError(fmt.Sprintf("frame of %d bytes (type %d)", n, hdr[3]))
	}
	return frameType(hdr[3]), hdr[4], binary.BigEndian.Uint32(hdr[5:]), n, nil
}

// payload reads n payload bytes into a new slice.
func (c *muxConn) payload(n int) ([]byte, error) {
	b := make([]byte, n)
	_, err := io.ReadFull(c.br, b)
	return b, err
}

// discard skips n payload bytes.
func (c *muxConn) discard(n int) error {
	_, err := c.br.Discard(n)
	return err
}

// serveFrames reads frames until the connection fails: data, window,
// reset and ping as handleCommon does, heads and trailers to heads, and
// other types to other (nil: none), which reports whether it knew the
// type. Unknown types are skipped: room to extend.
func (c *muxConn) serveFrames(heads func(id uint32, b []byte, end bool) error, other func(typ frameType, n int) (bool, error)) error {
	for {
		typ, flags, id, n, err := c.readFrame()
		if err != nil {
			return err
		}
		if ok, err := c.handleCommon(typ, flags, id, n); ok {
			if err != nil {
				return err
			}
			continue
		}
		if typ == frameHeaders {
			b, err := c.payload(n)
			if err != nil {
				return err
			}
			if err := heads(id, b, flags&flagEnd != 0); err != nil {
				return err
			}
			continue
		}
		if other != nil {
			if ok, err := other(typ, n); ok {
				if err != nil {
					return err
				}
				continue
			}
		}
		if err := c.discard(n); err != nil {
			return err
		}
	}
}

// handleCommon handles the frames both sides treat alike: data, window,
// reset and ping. It reports whether it knew the type.
func (c *muxConn) handleCommon(typ frameType, flags uint8, id uint32, n int) (bool, error) {
	switch typ {
	case frameData:
		if n > maxFrame {
			return true, protocolError("data frame of " + strconv.Itoa(n) + " bytes")
		}
		s := c.stream(id)
		if s == nil { // a stream this side already finished
			return true, c.discard(n)
		}
		b, err := c.payload(n)
		if err != nil {
			return true, err
		}
		return true, s.receive(b, flags&flagEnd != 0)
	case frameWindow:
		if n != 4 {
			return true, protocolError("window frame of " + strconv.Itoa(n) + " bytes")
		}
		b, err := c.payload(n)
		if err != nil {
			return true, err
		}
		if s := c.stream(id); s != nil {
			s.grantSend(int(binary.BigEndian.Uint32(b)))
		}
		return true, nil
	case frameReset:
		if n != 4 {
			return true, protocolError("reset frame of " + strconv.Itoa(n) + " bytes")
		}
		b, err := c.payload(n)
		if err != nil {
			return true, err
		}
		if s := c.stream(id); s != nil {
			s.peerReset(binary.BigEndian.Uint32(b))
		}
		return true, nil
	case framePing:
		if n != 8 {
			return true, protocolError("ping frame of " + strconv.Itoa(n) + " bytes")
		}
		b, err := c.payload(n)
		if err != nil {
			return true, err
		}
		if flags&flagAck == 0 {
			select {
			case c.pings <- b: // answered by keepAlive
			default: // one is pending already; the peer needs only one answer
			}
		}
		return true, nil
	}
	return false, nil
}

func (c *muxConn) stream(id uint32) *muxStream {
	c.mu.Lock()
	s := c.streams[id]
	c.mu.Unlock()
	return s
}

func (c *muxConn) remove(s *muxStream) {
	c.mu.Lock()
	if c.streams[s.id] == s {
		delete(c.streams, s.id)
	}
	last := c.retiring && len(c.streams) == 0 && c.err == nil
	c.mu.Unlock()
	if last {
		c.fail(errRetired)
	}
}

// fail ends the connection with err: every stream fails with it and the
// socket closes. Only the first call counts.
func (c *muxConn) fail(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	streams := c.streams
	c.streams = map[uint32]*muxStream{}
	close(c.done)
	c.mu.Unlock()
	c.nc.Close()
	for _, s := range streams {
		s.abort(&connError{err})
	}
}

// ended returns why the connection ended, or nil.
func (c *muxConn) ended() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// keepAlive answers the peer's pings, pings a quiet peer every third of
// the idle timeout and ends the connection when nothing has arrived for
// the whole timeout. It returns when the connection ends.
func (c *muxConn) keepAlive() {
	t := time.NewTicker(c.opts.keepAlive())
	defer t.Stop()
	last, quiet := c.reads.Load(), 0
	for {
		select {
		case <-c.done:
			return
		case b := <-c.pings:
			c.write(frame{typ: framePing, flags: flagAck, payload: b})
			continue
		case <-t.C:
		}
		if n := c.reads.Load(); n != last {
			last, quiet = n, 0
			continue
		}
		quiet++
		if quiet >= 3 {
			c.fail(errIdle)
			return
		}
		var b [8]byte
		c.write(frame{typ: framePing, payload: b[:]})
	}
}

// connError is a stream's failure because its connection ended.
type connError struct{ err error }

func (e *connError) Error() string { return "mux: connection ended: " + e.err.Error() }
func (e *connError) Unwrap() error { return e.err }

// muxStream is one request and its response, at either end.
type muxStream struct {
	c  *muxConn
	id uint32

	mu sync.Mutex
	// Receiving.
	chunks   [][]byte           // received, unread
	buffered int                // bytes in chunks
	unacked  int                // bytes read and not yet granted back
	recvEnd  bool               // the peer's last frame arrived
	recvErr  error              // reading fails with it once chunks are drained
	readErr  error              // reading fails with it at once (a read deadline)
	cancel   context.CancelFunc // server: ends the request's context
	trailer  http.Header
	readable chan struct{} // signalled (capacity 1) when any of the above changes
	// Sending.
	leave      bool // server: leave the table before the last frame (writeFrames)
	sendWindow int
	sendErr    error         // writing fails with it
	writable   chan struct{} // signalled when sendWindow or sendErr changes

	// Client: the response head, or the error instead of it.
	head      []byte
	headEnd   bool
	headErr   error
	headReady chan struct{} // closed when head or headErr is set
}

func newStream(c *muxConn, id uint32) *muxStream {
	return &muxStream{
		c:          c,
		id:         id,
		sendWindow: streamWindow,
		readable:   make(chan struct{}, 1),
		writable:   make(chan struct{}, 1),
	}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// receive queues a data frame's bytes.
func (s *muxStream) receive(b []byte, end bool) error {
	s.mu.Lock()
	if s.recvEnd || s.recvErr != nil {
		s.mu.Unlock()
		if s.recvEnd {
			return protocolError("data after the end of stream " + strconv.Itoa(int(s.id)))
		}
		return nil // this side gave up the stream; the peer will learn
	}
	if s.buffered+len(b) > streamWindow {
		s.mu.Unlock()
		return protocolError("stream " + strconv.Itoa(int(s.id)) + " exceeded its flow-control window")
	}
	if len(b) > 0 {
		s.chunks = append(s.chunks, b)
		s.buffered += len(b)
	}
	s.recvEnd = s.recvEnd || end
	s.mu.Unlock()
	signal(s.readable)
	return nil
}

// receiveTrailer stores trailers; they end the stream.
func (s *muxStream) receiveTrailer(h http.Header) {
	s.mu.Lock()
	s.trailer = h
	s.recvEnd = true
	s.mu.Unlock()
	signal(s.readable)
}

// read reads body bytes, granting the window back as it goes.
func (s *muxStream) read(p []byte) (int, error) {
	for {
		s.mu.Lock()
		if err := s.readErr; err != nil {
			s.mu.Unlock()
			return 0, err
		}
		if len(s.chunks) > 0 {
			n := 0
			for n < len(p) && len(s.chunks) > 0 {
				c := copy(p[n:], s.chunks[0])
				n += c
				if c == len(s.chunks[0]) {
					s.chunks[0] = nil
					s.chunks = s.chunks[1:]
				} else {
					s.chunks[0] = s.chunks[0][c:]
				}
			}
			s.buffered -= n
			s.unacked += n
			grant := 0
			if s.unacked >= streamWindow/4 && !s.recvEnd {
				grant, s.unacked = s.unacked, 0
			}
			s.mu.Unlock()
			if grant > 0 {
				var b [4]byte
				binary.BigEndian.PutUint32(b[:], uint32(grant))
				s.c.write(frame{typ: frameWindow, id: s.id, payload: b[:]})
			}
			return n, nil
		}
		if s.recvEnd {
			s.mu.Unlock()
			return 0, io.EOF
		}
		if err := s.recvErr; err != nil {
			s.mu.Unlock()
			return 0, err
		}
		s.mu.Unlock()
		<-s.readable
	}
}

// grantSend adds to the send window.
func (s *muxStream) grantSend(n int) {
	s.mu.Lock()
	s.sendWindow += n
	s.mu.Unlock()
	signal(s.writable)
}

// reserve waits until up to n bytes may be sent and takes them from the
// window.
func (s *muxStream) reserve(n int) (int, error) {
	for {
		s.mu.Lock()
		if s.sendErr != nil {
			err := s.sendErr
			s.mu.Unlock()
			return 0, err
		}
		if s.sendWindow > 0 {
			n = min(n, s.sendWindow, maxFrame)
			s.sendWindow -= n
			s.mu.Unlock()
			return n, nil
		}
		s.mu.Unlock()
		<-s.writable
	}
}

// sendData writes p as data frames within the send window; end marks the
// last one.
func (s *muxStream) sendData(p []byte, end bool) error {
	for len(p) > 0 {
		n, err := s.reserve(len(p))
		if err != nil {
			return err
		}
		last := end && n == len(p)
		f := frame{typ: frameData, id: s.id, payload: p[:n]}
		if last {
			f.flags = flagEnd
		}
		if err := s.writeFrames(f); err != nil {
			return &connError{err}
		}
		p = p[n:]
		if last {
			return nil
		}
	}
	if end {
		if err := s.writeFrames(frame{typ: frameData, flags: flagEnd, id: s.id}); err != nil {
			return &connError{err}
		}
	}
	return nil
}

// writeFrames writes frames of s. If the last one ends this side of the
// stream, a server's stream leaves the connection's table before it goes:
// the client frees the stream's slot, and may open another stream, as
// soon as it has read that end, and the server must by then no longer
// count this one against maxStreams. (Nothing the stream still needs
// comes from the table after its last frame: the window for that frame
// was taken, and the handler, which alone reads the request, returned.)
func (s *muxStream) writeFrames(fs ...frame) error {
	if s.leave && len(fs) > 0 && fs[len(fs)-1].flags&flagEnd != 0 {
		s.c.remove(s)
	}
	return s.c.write(fs...)
}

// failRead makes reads fail with err from now on.
func (s *muxStream) failRead(err error) {
	s.mu.Lock()
	s.readErr = err
	s.mu.Unlock()
	signal(s.readable)
}

// abort fails both directions of the stream with err (unless they already
// ended) and wakes everything waiting on it.
func (s *muxStream) abort(err error) {
	s.mu.Lock()
	if s.recvErr == nil {
		s.recvErr = err
	}
	if s.sendErr == nil {
		s.sendErr = err
	}
	if s.headReady != nil && s.head == nil && s.headErr == nil {
		s.headErr = err
		close(s.headReady)
	}
	cancel := s.cancel
	s.mu.Unlock()
	if cancel != nil && err != errStreamDone {
		cancel()
	}
	signal(s.readable)
	signal(s.writable)
}

// peerReset handles the peer's reset of the stream.
func (s *muxStream) peerReset(code uint32) {
	var err error
	switch code {
	case codeRefused:
		err = errStreamRefused
	case codeInternal:
		err = errStreamInternal
	case codeProtocol:
		err = errStreamMalformed
	default:
		err = errStreamCanceled
	}
	s.c.remove(s)
	s.abort(err)
}

// reset abandons the stream: the peer is told, and local readers and
// writers fail with err. The reset goes out before anything here learns
// of the failure: a client frees the stream's slot then, and the head of
// the next stream must not reach a full server before this reset does.
func (s *muxStream) reset(code uint32, err error) {
	s.c.remove(s)
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], code)
	s.c.write(frame{typ: frameReset, id: s.id, payload: b[:]})
	s.abort(err)
}

// Heads. A head is a sequence of uvarints and length-prefixed strings:
//
//	request:  content length + 1 (0: unknown), method, authority, request URI, fields
//	response: status, content length + 1, fields
//	trailers: fields
//
// where fields are a count and that many name/value string pairs.

// headSizeError is a head (or trailers) too large to send: the peer would
// end the connection, and every stream on it, over it.
func headSizeError(b []byte) error {
	if len(b) <= maxHead {
		return nil
	}
	return fmt.Errorf("mux: head of %d bytes, over the limit of %d", len(b), maxHead)
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendFields(b []byte, h http.Header, skip func(string) bool) []byte {
	n := 0
	for k, vv := range h {
		if skip == nil || !skip(k) {
			n += len(vv)
		}
	}
	b = binary.AppendUvarint(b, uint64(n))
	for k, vv := range h {
		if skip != nil && skip(k) {
			continue
		}
		for _, v := range vv {
			b = appendString(b, k)
			b = appendString(b, v)
		}
	}
	return b
}

func headSize(h http.Header) int {
	n := 32
	for k, vv := range h {
		for _, v := range vv {
			n += len(k) + len(v) + 4
		}
	}
	return n
}

// headReader decodes a head. Its strings are slices of one string made
// from the payload, so a head costs one allocation for all its text.
type headReader struct {
	s   string
	err error
}

func (r *headReader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	var v uint64
	for i := 0; i < len(r.s) && i < binary.MaxVarintLen64; i++ {
		b := r.s[i]
		v |= uint64(b&0x7f) << (7 * i)
		if b < 0x80 {
			r.s = r.s[i+1:]
			return v
		}
	}
	r.err = protocolError("malformed head")
	return 0
}

func (r *headReader) string() string {
	n := r.uvarint()
	if r.err != nil {
		return ""
	}
	if n > uint64(len(r.s)) {
		r.err = protocolError("malformed head")
		return ""
	}
	v := r.s[:n]
	r.s = r.s[n:]
	return v
}

// length decodes a content length: -1 (unknown) or more.
func (r *headReader) length() int64 {
	n := int64(r.uvarint()) - 1
	if n < -1 && r.err == nil {
		r.err = protocolError("malformed head: content length")
	}
	return n
}

// fields decodes fields; names are made canonical, as net/http makes
// those it reads.
func (r *headReader) fields() http.Header {
	n := r.uvarint()
	if r.err != nil {
		return nil
	}
	if n > uint64(len(r.s)/3) { // a field takes at least 3 bytes
		r.err = protocolError("malformed head")
		return nil
	}
	h := make(http.Header, n)
	values := make([]string, n) // one backing array, sliced per name
	for i := range values {
		k, v := r.string(), r.string()
		if r.err != nil {
			return nil
		}
		if !httpguts.ValidHeaderFieldName(k) || !httpguts.ValidHeaderFieldValue(v) {
			r.err = protocolError(fmt.Sprintf("invalid header field %q", k))
			return nil
		}
		k = http.CanonicalHeaderKey(k) // no allocation if it is already
		values[i] = v
		if vv, ok := h[k]; ok {
			h[k] = append(vv, v)
		} else {
			h[k] = values[i : i+1 : i+1]
		}
	}
	return h
}

// done reports the decoding error, or one for bytes left over.
func (r *headReader) done() error {
	if r.err == nil && len(r.s) != 0 {
		r.err = protocolError("trailing bytes in a head")
	}
	return r.err
}

// contentLength is a header's Content-Length, or -1.
func contentLength(h http.Header) int64 {
	v := h.Get("Content-Length")
	if v == "" {
		return -1
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return -1
	}
	return n
}
