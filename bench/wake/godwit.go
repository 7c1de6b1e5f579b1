package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	benchHost = "wake.bench"
	benchApp  = "wake"
	benchID   = "m1"
)

// godwitBench sends bursts of requests through the godwit child. Each
// waiter has a client of its own with one kept-alive connection (opened
// in warmup), so a round measures the wake, not connection set-up.
type godwitBench struct {
	edge    *edge
	waiters int
	settle  time.Duration
	pids    map[int]bool // every machine pid answered

	clients []*http.Client
	lastPid int // the machine's pid in the last round
}

// roundResult is one burst: times from sending to the first and the last
// answer, failed waiters (an error or a status other than 200), the
// machine pids that answered, and godwit's own wait as its Godwit-Woke
// header says (the longest over the answers; 0 when none has it).
type roundResult struct {
	first, last time.Duration
	woke        time.Duration
	waited      int // answers with a Godwit-Woke header
	failed      int
	failures    []string // distinct failure descriptions
	pids        map[int]int
	restarted   bool // resume: a pid other than the suspended one answered
}

var adminClient = &http.Client{Timeout: 30 * time.Second}

// warmup starts the machine, opens every waiter's connection with one
// request, and checks the answers.
func (g *godwitBench) warmup() error {
	if _, err := g.admin("start"); err != nil {
		return err
	}
	g.clients = make([]*http.Client, g.waiters)
	for i := range g.clients {
		g.clients[i] = &http.Client{
			Transport: &http.Transport{MaxIdleConnsPerHost: 1, IdleConnTimeout: time.Minute},
			Timeout:   20 * time.Second, // above the wake timeout (10 s)
		}
	}
	r := g.burst()
	if r.failed > 0 {
		return fmt.Errorf("warm-up through godwit: %d of %d requests failed: %s", r.failed, g.waiters, strings.Join(r.failures, "; "))
	}
	for pid := range r.pids {
		g.lastPid = pid
	}
	logf("godwit at %s (admin %s) answers from machine pid %d", g.edge.http, g.edge.admin, g.lastPid)
	return nil
}

// round stops (op "stop") or suspends (op "suspend") the machine through
// the admin API, waits settle, then sends every waiter's GET /pid at once.
func (g *godwitBench) round(op string) (roundResult, error) {
	want := "stopped"
	if op == "suspend" {
		want = "suspended"
		if _, err := g.admin("start"); err != nil { // suspend needs a running machine
			return roundResult{}, err
		}
	}
	st, err := g.admin(op)
	if err != nil {
		return roundResult{}, err
	}
	if st != want {
		return roundResult{}, fmt.Errorf("machine %s after %s: %q, want %q", benchID, op, st, want)
	}
	time.Sleep(g.settle)
	r := g.burst()
	if op == "suspend" {
		for pid := range r.pids {
			if pid != g.lastPid {
				r.restarted = true
			}
		}
	}
	for pid := range r.pids {
		g.lastPid = pid
	}
	return r, nil
}

// burst sends one GET /pid per waiter, all released at the same instant.
func (g *godwitBench) burst() roundResult {
	type answer struct {
		at     time.Duration
		err    string
		pid    int
		wokeMs float64
		woke   bool // a Godwit-Woke header came
	}
	answers := make([]answer, g.waiters)
	var ready, done sync.WaitGroup
	release := make(chan struct{})
	var t0 time.Time
	for i, c := range g.clients {
		ready.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			req, _ := http.NewRequest("GET", "http://"+g.edge.http+"/pid", nil)
			req.Host = benchHost
			ready.Done()
			<-release
			resp, err := c.Do(req)
			a := &answers[i]
			if err != nil {
				a.at, a.err = time.Since(t0), err.Error()
				return
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			a.at = time.Since(t0)
			switch {
			case err != nil:
				a.err = "body: " + err.Error()
			case resp.StatusCode != http.StatusOK:
				a.err = fmt.Sprintf("%d %s %s", resp.StatusCode, resp.Header.Get("Godwit-Error"), strings.TrimSpace(string(body)))
			default:
				a.pid, _ = strconv.Atoi(strings.TrimSpace(string(body)))
			}
			if w := resp.Header.Get("Godwit-Woke"); w != "" {
				if _, dur, ok := strings.Cut(w, ";dur="); ok {
					a.wokeMs, _ = strconv.ParseFloat(dur, 64)
					a.woke = true
				}
			}
		}()
	}
	ready.Wait()
	t0 = time.Now()
	close(release)
	done.Wait()

	r := roundResult{first: -1, pids: map[int]int{}}
	seen := map[string]bool{}
	for _, a := range answers {
		if a.at > r.last {
			r.last = a.at
		}
		if a.err != "" {
			r.failed++
			if !seen[a.err] {
				seen[a.err] = true
				r.failures = append(r.failures, a.err)
			}
			continue
		}
		if r.first < 0 || a.at < r.first {
			r.first = a.at
		}
		if a.woke {
			r.waited++
			r.woke = max(r.woke, time.Duration(a.wokeMs*float64(time.Millisecond)))
		}
		r.pids[a.pid]++
		g.pids[a.pid] = true
	}
	if r.first < 0 {
		r.first = r.last
	}
	return r
}

// admin POSTs op (start, stop, suspend) for the machine and returns its
// state afterwards.
func (g *godwitBench) admin(op string) (string, error) {
	url := fmt.Sprintf("http://%s/v1/apps/%s/machines/%s/%s", g.edge.admin, benchApp, benchID, op)
	resp, err := adminClient.Post(url, "", nil)
	if err != nil {
		return "", fmt.Errorf("admin %s: %w", op, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("admin %s: status %d: %s", op, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	var st struct {
		State string `json:"state"`
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return "", fmt.Errorf("admin %s: %w", op, err)
	}
	return st.State, nil
}
