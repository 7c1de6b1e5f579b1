// Command testapp is the machine of autostart's tests: a small HTTP server
// that behaves, on flags, like the apps a driver has to cope with. It
// serves on 127.0.0.1:$PORT after -listen-delay; GET /env answers its
// environment as a JSON object, GET /pid its process id, GET /hold its
// process id once POST /release is called, anything else
// "ok <FLY_MACHINE_ID>". On SIGINT or SIGTERM it exits (after
// -exit-delay, printing "testapp: exiting on <signal>") or ignores the
// signal, per -on-sigint and -on-sigterm; with -exit-after it exits on its
// own with -exit-code.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	listenDelay := flag.Duration("listen-delay", 0, "wait this long before listening")
	onSigint := flag.String("on-sigint", "exit", `"exit" or "ignore"`)
	onSigterm := flag.String("on-sigterm", "exit", `"exit" or "ignore"`)
	exitDelay := flag.Duration("exit-delay", 0, "on a handled signal, wait this long before exiting")
	exitAfter := flag.Duration("exit-after", 0, "if set, exit on its own after this long")
	exitCode := flag.Int("exit-code", 3, "the status of -exit-after")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("testapp: ")

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	actions := map[os.Signal]string{syscall.SIGINT: *onSigint, syscall.SIGTERM: *onSigterm}
	go func() {
		for sig := range sigs {
			if actions[sig] != "exit" {
				log.Printf("ignoring %v", sig)
				continue
			}
			time.Sleep(*exitDelay) // the app's own shutdown work, not a test's wait
			name := "SIGINT"
			if sig == syscall.SIGTERM {
				name = "SIGTERM"
			}
			fmt.Printf("testapp: exiting on %s\n", name)
			os.Exit(0)
		}
	}()
	if *exitAfter > 0 {
		time.AfterFunc(*exitAfter, func() {
			log.Printf("exiting on my own with status %d", *exitCode)
			os.Exit(*exitCode)
		})
	}

	time.Sleep(*listenDelay) // a slow boot, on purpose
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", os.Getenv("PORT")))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("testapp: listening on %s\n", ln.Addr())
	mux := http.NewServeMux()
	mux.HandleFunc("GET /env", func(w http.ResponseWriter, r *http.Request) {
		env := make(map[string]string)
		for _, kv := range os.Environ() {
			k, v, _ := strings.Cut(kv, "=")
			env[k] = v
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(env)
	})
	mux.HandleFunc("GET /pid", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, os.Getpid())
	})
	// GET /hold answers (its pid) once POST /release is called, or when
	// the client goes away: a request held in flight for as long as a
	// test needs, with no sleep.
	// GET /held says how many are held now: a test releases them once all
	// have arrived (release lets go of those held, not of later ones).
	var (
		gateMu sync.Mutex
		gate   = make(chan struct{})
		held   atomic.Int64
	)
	mux.HandleFunc("GET /held", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, held.Load())
	})
	mux.HandleFunc("GET /hold", func(w http.ResponseWriter, r *http.Request) {
		held.Add(1)
		defer held.Add(-1)
		gateMu.Lock()
		g := gate
		gateMu.Unlock()
		select {
		case <-g:
			fmt.Fprintln(w, os.Getpid())
		case <-r.Context().Done():
		}
	})
	mux.HandleFunc("POST /release", func(w http.ResponseWriter, r *http.Request) {
		gateMu.Lock()
		close(gate)
		gate = make(chan struct{})
		gateMu.Unlock()
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok", os.Getenv("FLY_MACHINE_ID"))
	})
	log.Fatal(http.Serve(ln, mux))
}
