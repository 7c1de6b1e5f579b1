// Package benchcmd is the frame that every bench command (fleet, tls,
// wake) puts around its measurements: the format of its progress log, the
// command line's parse with -quick settings that explicit flags still
// override, comma-separated list flags, and a run that a signal interrupts and that ends with every child
// process killed and an exit status saying how it ended.
//
// It does not define a command's flags nor validate their values (each
// command owns its settings), and does not start children (see package
// child).
package benchcmd

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
	"unicode"

	"github.com/godwit/godwit/bench/internal/child"
)

// Logf returns the progress logger of command name: each line goes to
// stderr as "[name 15:04:05] message", so that progress never mixes with the
// report on stdout and a slow step shows by its time.
func Logf(name string) func(format string, args ...any) {
	return func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "[%s %s] %s\n", name, time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
	}
}

// Parse parses the command line args with fs, whose flags the command
// defined, and refuses positional arguments. When fs has a -quick flag and
// it was given, Parse then applies quick, the smoke test's settings: each
// flag it names is set to its value, in the flag's own syntax ("1", "2s"),
// unless the command line set that flag, so explicit flags still win. An
// error is a bad command line (flag.ErrHelp for -h), or a -quick setting
// that fs lacks or refuses.
func Parse(fs *flag.FlagSet, args []string, quick map[string]string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if q := fs.Lookup("quick"); q == nil || q.Value.String() != "true" {
		return nil
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for name, v := range quick {
		if set[name] {
			continue
		}
		if err := fs.Set(name, v); err != nil {
			return fmt.Errorf("-quick: -%s %s: %w", name, v, err)
		}
	}
	return nil
}

// List splits a list flag's value ("h1,h2,h3", "1, 64") at commas and
// white space; empty entries are dropped, so "" is no entry.
func List(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || unicode.IsSpace(r) })
}

// Run runs body with a context that the first SIGINT or SIGTERM cancels
// (body should then return soon, stopping what it started; a second signal
// ends the process at once, and the kernel still kills the children: see
// child.Command). Then it kills every child still running and returns the
// exit status: 0; 130 after an interrupt; 1 after body failed. logf says
// why, so body's error is logged here and not by body.
func Run(logf func(format string, args ...any), body func(context.Context) error) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done() // a signal, or Run's return
		stop()
	}()
	err := body(ctx)
	child.KillAll()
	switch {
	case ctx.Err() != nil:
		logf("interrupted; every child process was killed")
		return 130
	case err != nil:
		logf("FAILED: %v", err)
		return 1
	}
	return 0
}
