package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
	"github.com/tsenart/vegeta/v12/lib/plot"
)

// AttackName is the vegeta attack's name: requests carry it in
// X-Vegeta-Attack (and their number in X-Vegeta-Seq), and the plot's
// series are named after it.
const AttackName = "godwit load"

// Options are a load run's requests and pace.
type Options struct {
	// Targets are the requests, sent in turn.
	Targets []vegeta.Target
	// Rate is the pace of new requests; a zero Freq sends as fast as
	// Workers allow.
	Rate vegeta.Rate
	// Duration is how long to send; 0: until ctx ends.
	Duration time.Duration
	// Workers caps the requests in flight; 0: no cap (a Rate is needed).
	// At the cap, vegeta waits for a free worker before sending, so the
	// rate falls behind rather than queueing requests.
	Workers uint64
	// Client sends the requests (Client.HTTP).
	Client *http.Client
}

// Run sends requests as o says until o.Duration passes or ctx ends, and
// calls each with every result, in the order they end, from the calling
// goroutine. It returns once the last request in flight has ended (a
// request still running when ctx ends runs to its own end or timeout).
func Run(ctx context.Context, o Options, each func(*vegeta.Result)) error {
	if len(o.Targets) == 0 {
		return errors.New("no targets")
	}
	if o.Rate.Freq == 0 && o.Workers == 0 {
		return errors.New("as fast as possible (rate 0) needs a cap on the requests in flight")
	}
	opts := []func(*vegeta.Attacker){
		vegeta.Client(o.Client),
		vegeta.MaxBody(0), // read each body whole, keep none of it
	}
	if o.Workers > 0 {
		initial := min(o.Workers, vegeta.DefaultWorkers) // more start when the rate needs them
		if o.Rate.Freq == 0 {
			initial = o.Workers // all at once: each sends as soon as its last answer is in
		}
		opts = append(opts, vegeta.Workers(initial), vegeta.MaxWorkers(o.Workers))
	}
	atk := vegeta.NewAttacker(opts...)
	stop := context.AfterFunc(ctx, func() { atk.Stop() })
	defer stop()
	for res := range atk.Attack(vegeta.NewStaticTargeter(o.Targets...), o.Rate, o.Duration, AttackName) {
		each(res)
	}
	return nil
}

// NewPlot returns vegeta's HTML latency plot with one series per
// Outcome.Label: replayed, direct, unclassified, and ERROR for failed
// requests.
func NewPlot(title string) *plot.Plot {
	return plot.New(
		plot.Title(title),
		plot.Downsample(4000), // points per series: enough to see, small enough to open
		plot.Label(func(r *vegeta.Result) string { return Judge(r).Label() }),
	)
}

// ReadTargets reads targets in vegeta's http format (a request line, then
// header lines, then optionally @BODYFILE, targets separated by blank
// lines; `#` comments). body is the body of targets that name none; header
// is added to every target's.
func ReadTargets(r io.Reader, body []byte, header http.Header) ([]vegeta.Target, error) {
	ts, err := vegeta.ReadAllTargets(vegeta.NewHTTPTargeter(r, body, header))
	if errors.Is(err, vegeta.ErrNoTargets) {
		return nil, errors.New("no targets in it")
	}
	return ts, err
}

// ParseRate parses a rate: "N" or "N/s" per second, or N per another
// period: "N/100ms", "N/m", "N/1m". "0" is as fast as possible.
func ParseRate(s string) (vegeta.Rate, error) {
	freq, per, hasPer := strings.Cut(strings.TrimSpace(s), "/")
	n, err := strconv.Atoi(freq)
	if err != nil || n < 0 {
		return vegeta.Rate{}, fmt.Errorf("rate %q: want a count of requests per second (100), or per period (100/s, 5/100ms, 600/m)", s)
	}
	r := vegeta.Rate{Freq: n, Per: time.Second}
	if hasPer {
		if per != "" && (per[0] < '0' || per[0] > '9') {
			per = "1" + per // "s" is "1s"
		}
		d, err := time.ParseDuration(per)
		if err != nil || d <= 0 {
			return vegeta.Rate{}, fmt.Errorf("rate %q: the period after / must be a duration, like s, 100ms or 1m", s)
		}
		r.Per = d
	}
	return r, nil
}

// PerSecond is r in requests per second.
func PerSecond(r vegeta.Rate) float64 {
	if r.Per <= 0 {
		return 0
	}
	return float64(r.Freq) / r.Per.Seconds()
}
