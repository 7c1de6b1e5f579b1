// Command chaos runs godwit's chaos test (TestChaos in cmd/godwit: a fleet
// of three edges as child processes on loopback, steady load from six
// clients while a machine is killed, an edge is SIGKILLed and restarted,
// an edge reloads its config and an edge drains) with a longer load in
// each phase, and prints the counts of every request by outcome as a
// markdown table: sent, succeeded, failed with a code, not accepted, cut
// by SIGKILL, hung (goal 0) and lost (goal 0).
//
// The sequence and the classification are the test's: this command builds
// the test binary, runs TestChaos with -chaos.hold, and reads the
// "chaos-counts" lines it logs. Progress (the test's output) goes to
// stderr, the table to stdout and -out. Run from the repository root:
//
//	go run ./bench/chaos               # -hold 10s: about 2 min
//	go run ./bench/chaos -quick        # -hold 0: about 1 min
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/godwit/godwit/bench/internal/benchcmd"
	"github.com/godwit/godwit/bench/internal/child"
)

// counts is one "chaos-counts" line of TestChaos: a phase, or the total.
type counts struct {
	Phase       string `json:"phase"`
	Sent        int64  `json:"sent"`
	OK          int64  `json:"succeeded"`
	Coded       int64  `json:"failed_with_code"`
	Refused     int64  `json:"not_accepted"`
	Cut         int64  `json:"cut_by_sigkill"`
	Hung        int64  `json:"hung"`
	Lost        int64  `json:"lost"`
	Late        int64  `json:"late"`
	ConvergedMs int64  `json:"converged_ms"`
	// Codes counts the failures with a code by Godwit-Error code.
	Codes map[string]int64 `json:"codes"`
}

func main() {
	logf := benchcmd.Logf("chaos")
	fs := flag.NewFlagSet("chaos", flag.ContinueOnError)
	hold := fs.Duration("hold", 10*time.Second, "keep the load this long in each phase once the fleet has converged")
	out := fs.String("out", "", "also write the report to this file")
	fs.Bool("quick", false, "smoke test: -hold 0")
	if err := benchcmd.Parse(fs, os.Args[1:], map[string]string{"hold": "0s"}); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		logf("%v", err)
		os.Exit(2)
	}
	os.Exit(benchcmd.Run(logf, func(ctx context.Context) error { return run(ctx, logf, *hold, *out) }))
}

func run(ctx context.Context, logf func(string, ...any), hold time.Duration, out string) error {
	dir, err := os.MkdirTemp("", "godwit-chaos-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "godwit.test")
	logf("building the test binary of ./cmd/godwit")
	if b, err := exec.CommandContext(ctx, "go", "test", "-c", "-o", bin, "./cmd/godwit").CombinedOutput(); err != nil {
		return fmt.Errorf("go test -c: %w\n%s", err, b)
	}
	pkg, err := filepath.Abs(filepath.Join("cmd", "godwit"))
	if err != nil {
		return err
	}
	logf("running TestChaos with -chaos.hold %v", hold)
	began := time.Now()
	c := child.Command(-1, bin, "-test.run", "^TestChaos$", "-test.v", "-test.count", "1",
		"-test.timeout", "10m", "-chaos.hold", hold.String())
	c.Dir = pkg // as under go test: the test builds godwit from its package directory
	stdout, err := c.StdoutPipe()
	if err != nil {
		return err
	}
	c.Stderr = os.Stderr
	if err := c.Start(); err != nil {
		return err
	}
	child.Track(c)
	var rows []counts
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintln(os.Stderr, line)
		if _, j, ok := strings.Cut(line, "chaos-counts "); ok {
			var r counts
			if err := json.Unmarshal([]byte(j), &r); err != nil {
				return fmt.Errorf("reading %q: %w", line, err)
			}
			rows = append(rows, r)
		}
	}
	werr := c.Wait()
	child.Untrack(c)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if len(rows) == 0 {
		return fmt.Errorf("TestChaos logged no counts (%v)", werr)
	}
	report := table(rows, hold, time.Since(began))
	fmt.Print(report)
	if out != "" {
		if err := os.WriteFile(out, []byte(report), 0o644); err != nil {
			return err
		}
	}
	if werr != nil {
		return fmt.Errorf("TestChaos failed (%v): see its output above", werr)
	}
	return nil
}

// table is the markdown report of rows, the last of them the total.
func table(rows []counts, hold, took time.Duration) string {
	var b strings.Builder
	fmt.Fprintf(&b, "TestChaos with -chaos.hold %v: 3 edges, 6 clients, %v in all.\n\n", hold, took.Round(time.Second))
	b.WriteString("| phase | sent | succeeded | failed with a code (after the failover window) | not accepted | cut by SIGKILL | hung | lost | converged after the restart or reload |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		conv := "–"
		if r.ConvergedMs > 0 {
			conv = fmt.Sprintf("%.1f s", float64(r.ConvergedMs)/1000)
		}
		name := r.Phase
		if name == "total" {
			name = "**total**"
		}
		codes := ""
		if len(r.Codes) > 0 {
			var cs []string
			for c, n := range r.Codes {
				cs = append(cs, fmt.Sprintf("%s %d", c, n))
			}
			slices.Sort(cs)
			codes = " " + strings.Join(cs, ", ")
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %d (%d)%s | %d | %d | %d | %d | %s |\n",
			name, r.Sent, r.OK, r.Coded, r.Late, codes, r.Refused, r.Cut, r.Hung, r.Lost, conv)
	}
	return b.String()
}
