package loadgen

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseThreshold(t *testing.T) {
	for _, tc := range []struct {
		expr       string
		wantMetric string
		wantOp     string
	}{
		{"p99<50ms", "p99", "<"},
		{"p99 < 50ms", "p99", "<"},
		{"  P99<=1.5s ", "p99", "<="},
		{"p99.9<100ms", "p99.9", "<"},
		{"p999<100ms", "p999", "<"},
		{"max<1s", "max", "<"},
		{"mean>=1us", "mean", ">="},
		{"replay_p99<5ms", "replay_p99", "<"},
		{"replayed_p50<30ms", "replayed_p50", "<"},
		{"direct_max<10ms", "direct_max", "<"},
		{"overhead_p99.9<=25ms", "overhead_p99.9", "<="},
		{"overhead_p50>-1ms", "overhead_p50", ">"},
		{"errors<1%", "errors", "<"},
		{"errors<=0", "errors", "<="},
		{"transport_errors<5", "transport_errors", "<"},
		{"proxy_errors<0.5%", "proxy_errors", "<"},
		{"replayed>=40%", "replayed", ">="},
		{"direct>0", "direct", ">"},
		{"unclassified<1", "unclassified", "<"},
		{"requests>=100", "requests", ">="},
		{"responses>99", "responses", ">"},
		{"rps>=95", "rps", ">="},
		{"rps>95/s", "rps", ">"},
	} {
		got, err := ParseThreshold(tc.expr)
		if err != nil || got.Metric != tc.wantMetric || got.Op != tc.wantOp || got.Expr != tc.expr {
			t.Errorf("ParseThreshold(%q): got metric %q op %q expr %q (err %v); want %q %q", tc.expr, got.Metric, got.Op, got.Expr, err, tc.wantMetric, tc.wantOp)
		}
	}
}

func TestParseThresholdErrors(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want string // in the error
	}{
		{"p99", "no comparison"},
		{"p99=50ms", `comparison "="`},
		{"p99==50ms", `comparison "=="`},
		{"p99!=50ms", `comparison "!="`},
		{"p99=<50ms", `comparison "=<"`},
		{"<50ms", "no metric"},
		{"p99<", "no value"},
		{"p99<50ms<60ms", "more than one comparison"},
		{"p95<50ms", `unknown metric "p95"`},
		{"latency<50ms", `unknown metric "latency"`},
		{"foo_p99<50ms", `unknown metric "foo_p99"`},
		{"replay_p98<5ms", `unknown statistic "p98"`},
		{"p99<50", "takes a duration with its unit"},
		{"p99<fast", "takes a duration with its unit"},
		{"errors<1.5", "takes a count (10) or a percentage (1%)"},
		{"errors<-1", "takes a count"},
		{"errors<101%", "from 0% to 100%"},
		{"errors<x%", "from 0% to 100%"},
		{"requests>50%", "takes a count, not a percentage"},
		{"rps>fast", "requests per second"},
		{"rps>-1", "requests per second"},
	} {
		_, err := ParseThreshold(tc.expr)
		if err == nil || !errors.Is(err, ErrThreshold) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.expr) {
			t.Errorf("ParseThreshold(%q): got error %v; want ErrThreshold naming the expression and saying %q", tc.expr, err, tc.want)
		}
	}
}

// thresholdReport: 200 requests, 190 responses (100 replayed, 80 direct,
// 10 unclassified), 10 transport errors, 4 PR01, 14 errors, 95/s.
func thresholdReport() *Report {
	ms := time.Millisecond
	replayed := Latency{Min: 21 * ms, Mean: 24 * ms, P50: 23 * ms, P90: 26 * ms, P99: 30 * ms, P999: 35 * ms, Max: 40 * ms}
	direct := Latency{Min: 1 * ms, Mean: 2 * ms, P50: 2 * ms, P90: 3 * ms, P99: 8 * ms, P999: 9 * ms, Max: 10 * ms}
	all := Latency{Min: 1 * ms, Mean: 14 * ms, P50: 20 * ms, P90: 25 * ms, P99: 29 * ms, P999: 40 * ms, Max: 40 * ms}
	phase := Latency{Min: 19 * ms, Mean: 20 * ms, P50: 20 * ms, P90: 21 * ms, P99: 22 * ms, P999: 23 * ms, Max: 24 * ms}
	overhead := replayed.Minus(direct)
	return &Report{
		Requests: 200, Responses: 190, AchievedRate: 95,
		Groups: Groups{
			All:          Group{Count: 190, Latency: &all},
			Replayed:     Group{Count: 100, Latency: &replayed},
			Direct:       Group{Count: 80, Latency: &direct},
			Unclassified: Group{Count: 10},
		},
		Replay:          ReplayStats{Phase: &phase, Overhead: &overhead},
		ProxyErrors:     map[string]int{"PR01": 4},
		TransportErrors: TransportErrors{Count: 10},
		Errors:          ErrorCount{Count: 14, Ratio: 0.07},
	}
}

func TestThresholdCheck(t *testing.T) {
	rep := thresholdReport()
	empty := &Report{Requests: 5, Responses: 5, Groups: Groups{Direct: Group{Count: 5, Latency: &Latency{P99: time.Millisecond}}}}
	for _, tc := range []struct {
		expr      string
		rep       *Report
		wantOK    bool
		wantValue string
	}{
		{"p99<50ms", rep, true, "29.000ms"},
		{"p99<29ms", rep, false, "29.000ms"},
		{"p99<=29ms", rep, true, "29.000ms"},
		{"p99.9>39ms", rep, true, "40.000ms"},
		{"p999>=41ms", rep, false, "40.000ms"},
		{"replayed_p50<25ms", rep, true, "23.000ms"},
		{"direct_max<10ms", rep, false, "10.000ms"},
		{"replay_p99<5ms", rep, false, "22.000ms"},
		{"replay_p99<25ms", rep, true, "22.000ms"},
		{"overhead_p50<=21ms", rep, true, "21.000ms"},
		{"overhead_p99<20ms", rep, false, "22.000ms"},
		{"errors<1%", rep, false, "14/200 = 7.00%"},
		{"errors<7.5%", rep, true, "14/200 = 7.00%"},
		{"errors<=14", rep, true, "14/200 = 7.00%"},
		{"errors<14", rep, false, "14/200 = 7.00%"},
		{"transport_errors<=5%", rep, true, "10/200 = 5.00%"},
		{"proxy_errors<4", rep, false, "4/200 = 2.00%"},
		{"replayed>=50%", rep, true, "100/190 = 52.63%"},
		{"direct>80", rep, false, "80/190 = 42.11%"},
		{"unclassified<=10", rep, true, "10/190 = 5.26%"},
		{"requests>=200", rep, true, "200"},
		{"responses>190", rep, false, "190"},
		{"rps>=95", rep, true, "95.0/s"},
		{"rps>95/s", rep, false, "95.0/s"},
		// What cannot be measured fails.
		{"replay_p99<1h", empty, false, "no replayed responses"},
		{"replayed_p99<1h", empty, false, "no replayed responses"},
		{"overhead_p99<1h", empty, false, "no replayed responses"},
		{"direct_p99<1h", &Report{}, false, "no direct responses"},
		{"p99<1h", &Report{}, false, "no responses"},
		{"errors<1%", &Report{}, true, "0/0 = 0.00%"},
	} {
		th, err := ParseThreshold(tc.expr)
		if err != nil {
			t.Fatalf("ParseThreshold(%q): %v", tc.expr, err)
		}
		got := th.Check(tc.rep)
		if got.OK != tc.wantOK || got.Value != tc.wantValue || got.Expr != tc.expr {
			t.Errorf("%s: got ok %v value %q; want ok %v value %q", tc.expr, got.OK, got.Value, tc.wantOK, tc.wantValue)
		}
	}
}

func TestCheckAll(t *testing.T) {
	var ts []Threshold
	for _, e := range []string{"p99<50ms", "errors<1%", "replay_p99<25ms"} {
		th, err := ParseThreshold(e)
		if err != nil {
			t.Fatal(err)
		}
		ts = append(ts, th)
	}
	rep := thresholdReport()
	if CheckAll(rep, ts) {
		t.Errorf("CheckAll: got true, want false (errors<1%% fails)")
	}
	failed := rep.Failed()
	if len(rep.Thresholds) != 3 || len(failed) != 1 || failed[0].Expr != "errors<1%" {
		t.Errorf("after CheckAll: got thresholds %+v, failed %+v; want 3 results, errors<1%% the one failed", rep.Thresholds, failed)
	}
	if !CheckAll(rep, nil) || len(rep.Thresholds) != 0 {
		t.Errorf("CheckAll with no thresholds: got false or results %+v; want true and none", rep.Thresholds)
	}
}

func FuzzParseThreshold(f *testing.F) {
	for _, s := range []string{"p99<50ms", "errors < 1%", "replay_p99.9<=5ms", "rps>=95/s", "overhead_p50>-1ms", "<", "p99<<1s", "errors<%", "=", "_<1s"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, expr string) {
		th, err := ParseThreshold(expr)
		if err != nil {
			if !errors.Is(err, ErrThreshold) {
				t.Errorf("ParseThreshold(%q): error %v does not wrap ErrThreshold", expr, err)
			}
			return
		}
		if th.Expr != expr || th.Metric == "" || th.Op == "" {
			t.Errorf("ParseThreshold(%q): got %+v, want the expression, a metric and an operator", expr, th)
		}
		th.Check(&Report{})
		th.Check(thresholdReport())
	})
}
