package replay

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

func readAll(t *testing.T, r io.Reader, n int) []byte {
	t.Helper()
	buf := make([]byte, n)
	got, err := io.ReadFull(r, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		t.Fatalf("read: %v", err)
	}
	return buf[:got]
}

func TestBodyReplay(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 100) // 1000 bytes
	tests := []struct {
		name          string
		limit         int
		contentLength int64
		firstRead     int // bytes the first machine reads before answering
		wantErr       error
	}{
		{"whole body read, fits", 1000, 1000, 1000, nil},
		{"first machine read part of it", 1000, 1000, 300, nil},
		{"first machine read none", 1000, -1, 0, nil},
		{"unknown length, fits", 4096, -1, 1000, nil},
		{"grew past the limit", 500, -1, 1000, ErrBodyTooLarge},
		{"part read, still under the limit though the body is not", 500, -1, 400, nil},
		{"known to be over the limit", 500, 1000, 0, ErrBodyTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := NewBody(io.NopCloser(iotest.HalfReader(bytes.NewReader(data))), tt.contentLength, tt.limit)
			first := readAll(t, b, tt.firstRead)
			if !bytes.Equal(first, data[:tt.firstRead]) {
				t.Fatalf("first attempt: got %d bytes that differ from the body's start", len(first))
			}
			err := b.Rewind()
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Rewind: got %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				if b.Replayable() || b.Buffered() != 0 {
					t.Errorf("after a failed Rewind: Replayable %v, Buffered %d; want false, 0 (memory released)", b.Replayable(), b.Buffered())
				}
				return
			}
			// Two replays in a chain both get the whole body.
			for i := range 2 {
				got, err := io.ReadAll(b)
				if err != nil {
					t.Fatalf("replay %d: %v", i, err)
				}
				if !bytes.Equal(got, data) {
					t.Fatalf("replay %d: got %d bytes, want the whole %d-byte body", i, len(got), len(data))
				}
				if err := b.Rewind(); err != nil && i == 0 {
					if tt.limit >= len(data) {
						t.Fatalf("second Rewind: %v", err)
					}
					return // the replay itself read past the limit
				}
			}
		})
	}
}

func TestBodyEmpty(t *testing.T) {
	b := NewBody(io.NopCloser(bytes.NewReader(nil)), 0, DefaultBodyLimit)
	if got, _ := io.ReadAll(b); len(got) != 0 {
		t.Fatalf("empty body read %d bytes", len(got))
	}
	if err := b.Rewind(); err != nil {
		t.Fatalf("Rewind of an empty body: %v", err)
	}
	if got, _ := io.ReadAll(b); len(got) != 0 {
		t.Fatalf("replayed empty body read %d bytes", len(got))
	}
}
