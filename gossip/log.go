package gossip

import (
	"bytes"
	"context"
	"log"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// memberlistLogWarnBurst lines at Warn per memberlistLogWindow pass; the
// rest of that window goes to Debug. memberlist logs a line for every
// packet it cannot decrypt or decode, so a stranger sending garbage at the
// gossip port could otherwise flood the log.
const (
	memberlistLogWarnBurst = 10
	memberlistLogWindow    = 10 * time.Second
)

// newMemberlistLogger returns a *log.Logger for memberlist that writes to
// l: lines tagged [DEBUG] and [INFO] at Debug (the node logs membership
// changes itself), [WARN] and [ERR] at Warn (they are nearly all about
// peers, not faults of this node), rate-limited.
func newMemberlistLogger(l *slog.Logger) *log.Logger {
	return log.New(&memberlistLogWriter{log: l}, "", 0)
}

type memberlistLogWriter struct {
	log *slog.Logger

	mu          sync.Mutex
	windowStart time.Time
	inWindow    int
}

func (w *memberlistLogWriter) Write(p []byte) (int, error) {
	level, msg := parseMemberlistLine(p)
	if level > slog.LevelDebug && strings.Contains(msg, "use of closed network connection") {
		// memberlist's goroutines racing its own shutdown: nothing failed.
		level = slog.LevelDebug
	}
	if level > slog.LevelDebug && !w.allow(time.Now()) {
		level = slog.LevelDebug
	}
	ctx := context.Background()
	if w.log.Enabled(ctx, level) {
		w.log.Log(ctx, level, msg, "component", "memberlist")
	}
	return len(p), nil
}

// allow reports whether one more non-debug line fits the current window.
func (w *memberlistLogWriter) allow(now time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if now.Sub(w.windowStart) >= memberlistLogWindow {
		w.windowStart, w.inWindow = now, 0
	}
	w.inWindow++
	return w.inWindow <= memberlistLogWarnBurst
}

// parseMemberlistLine maps "[LEVEL] memberlist: text" to a level and the
// text.
func parseMemberlistLine(p []byte) (slog.Level, string) {
	line := bytes.TrimSpace(p)
	level := slog.LevelDebug
	if rest, ok := bytes.CutPrefix(line, []byte("[")); ok {
		if tag, text, ok := bytes.Cut(rest, []byte("]")); ok {
			switch string(tag) {
			case "WARN", "ERR", "ERROR":
				level = slog.LevelWarn
			}
			line = bytes.TrimSpace(text)
		}
	}
	line, _ = bytes.CutPrefix(line, []byte("memberlist: "))
	return level, string(line)
}
