package routing

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// Queue errors, for callers to branch on.
var (
	ErrQueueTimeout = errors.New("routing: no machine below its hard limit within the queue timeout")
	ErrQueueFull    = errors.New("routing: too many requests already waiting for a machine")
)

// queue is an app's FIFO of requests waiting because every usable machine is
// at its hard limit. A released slot is handed to the oldest waiter directly,
// so newcomers cannot overtake it and the hard limit holds throughout.
type queue struct {
	app     *App // set once when the app is built
	waiting atomic.Int32
	mu      sync.Mutex
	head    *waiter
	tail    *waiter
}

type waiter struct {
	next *waiter
	prev *waiter
	got  chan *Machine // buffered 1: the handed-over slot
}

// push appends w unless max requests are already waiting; false means full.
func (q *queue) push(w *waiter, max int) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if int(q.waiting.Load()) >= max {
		return false
	}
	w.prev = q.tail
	if q.tail != nil {
		q.tail.next = w
	} else {
		q.head = w
	}
	q.tail = w
	q.waiting.Add(1)
	return true
}

// remove takes w off the queue; false means a slot was handed to it first.
func (q *queue) remove(w *waiter) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if w.prev == nil && q.head != w { // unlinked: a slot was handed over
		return false
	}
	q.unlink(w)
	return true
}

func (q *queue) unlink(w *waiter) {
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		q.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		q.tail = w.prev
	}
	w.next, w.prev = nil, nil
	q.waiting.Add(-1)
}

// kick hands free slots to waiters, oldest first. m is the machine that just
// freed a slot (or became usable), nil for none in particular; any usable
// machine of the app will do when m cannot take another request. A machine
// the table no longer lists for the app (removed, or replaced after a change
// of address) gets no new request.
func (q *queue) kick(m *Machine) {
	if q == nil || q.waiting.Load() == 0 {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.head != nil {
		got := m
		if m == nil || q.app.byID[m.ID] != m || !m.usable() || !m.TryAcquire() {
			got = q.app.pickAny()
			if got == nil {
				return
			}
		}
		w := q.head
		q.unlink(w)
		w.got <- got
	}
}

// Len is the number of requests waiting.
func (q *queue) Len() int { return int(q.waiting.Load()) }

// Wait queues the caller until a slot on one of the app's machines frees up,
// the timeout passes (ErrQueueTimeout) or ctx ends (its error). At most max
// requests wait at once (ErrQueueFull beyond). Slots go to waiters in the
// order they called Wait; a slot handed over just as the timeout or ctx ends
// is returned rather than an error. The returned machine's slot is held: the
// caller must Release it.
func (a *App) Wait(ctx context.Context, timeout time.Duration, max int) (*Machine, error) {
	q := a.queue
	w := &waiter{got: make(chan *Machine, 1)}
	if !q.push(w, max) {
		return nil, ErrQueueFull
	}
	// A slot freed between the caller's failed pick and the push did not see
	// this waiter: look once more now that it is queued, handing what is
	// free to the oldest waiters (this one only if none is older).
	q.kick(nil)
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case m := <-w.got:
		return m, nil
	case <-t.C:
		if q.remove(w) {
			return nil, ErrQueueTimeout
		}
	case <-ctx.Done():
		if q.remove(w) {
			return nil, ctx.Err()
		}
	}
	return <-w.got, nil // handed a slot just as the wait ended
}
