package replay

import (
	"errors"
	"io"
)

// DefaultBodyLimit is how much of a request body is kept for replays: 1 MiB,
// the limit Fly documents ("requests larger than 1MB cannot be replayed").
const DefaultBodyLimit = 1 << 20

// ErrBodyTooLarge is returned by Rewind when the body outgrew the limit and
// its start is gone: the request cannot be replayed.
var ErrBodyTooLarge = errors.New("replay: request body is larger than the replay buffer")

// Body is a request body that streams to the first machine while keeping
// its first Limit bytes, so the request can be sent again when the machine
// answers with fly-replay. Nothing is buffered up front: a body larger than
// the limit still streams to the first machine, and only a replay of it
// fails (with ErrBodyTooLarge from Rewind), so a large upload is never
// refused just in case.
//
// A Body is read by one reader at a time: the caller ends one attempt's
// reading before it calls Rewind for the next.
type Body struct {
	src   io.ReadCloser
	limit int
	buf   []byte // the body's first bytes, while replayable
	pos   int    // next byte of buf to return, after a Rewind
	lost  bool   // bytes past the limit were read: buf no longer starts the body
	err   error  // src's terminal error (io.EOF once it is done)
}

// NewBody wraps src, keeping up to limit bytes for replays. contentLength
// is the request's (-1 if unknown); a body known to be over the limit is
// not buffered at all.
func NewBody(src io.ReadCloser, contentLength int64, limit int) *Body {
	b := &Body{src: src, limit: limit}
	if contentLength > int64(limit) {
		b.lost = true
	}
	return b
}

// Read returns the buffered bytes first (after a Rewind), then the rest of
// the source, keeping a copy of what fits in the limit.
func (b *Body) Read(p []byte) (int, error) {
	if b.pos < len(b.buf) {
		n := copy(p, b.buf[b.pos:])
		b.pos += n
		return n, nil
	}
	if b.err != nil {
		return 0, b.err
	}
	n, err := b.src.Read(p)
	if n > 0 && !b.lost {
		if len(b.buf)+n <= b.limit {
			b.buf = append(b.buf, p[:n]...)
			b.pos = len(b.buf)
		} else {
			b.lost = true
			b.buf, b.pos = nil, 0 // free it now: it can never be replayed
		}
	}
	if err != nil {
		b.err = err
	}
	return n, err
}

// Replayable reports whether Rewind can still succeed.
func (b *Body) Replayable() bool { return !b.lost }

// Rewind makes the next Read start at the body's first byte again. The
// part of the body the last attempt did not read is still to come from
// the source, so a machine that answered fly-replay before reading the
// whole body does not truncate the replayed one.
func (b *Body) Rewind() error {
	if b.lost {
		return ErrBodyTooLarge
	}
	b.pos = 0
	return nil
}

// Buffered is the number of bytes kept for replays.
func (b *Body) Buffered() int { return len(b.buf) }

// Close closes the source.
func (b *Body) Close() error { return b.src.Close() }
