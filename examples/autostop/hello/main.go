// Command hello is the sample app of examples/autostop: an HTTP server on
// 127.0.0.1:$PORT that says which machine, app and region answered, with
// the variables godwit's exec driver sets as Fly sets them ($GREETING, from
// the machine's driver.env, replaces "hello"). GET /healthz
// answers 200 for the app's health check. It exits on SIGINT or SIGTERM.
package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		log.Fatal("hello: PORT is not set (godwit's exec driver sets it from the machine's address)")
	}
	greeting := os.Getenv("GREETING") // set in the machine's driver.env
	if greeting == "" {
		greeting = "hello"
	}
	started := time.Now()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s from machine %s of app %s in %s (up %s); edge region %s, request %s\n",
			greeting, os.Getenv("FLY_MACHINE_ID"), os.Getenv("FLY_APP_NAME"), os.Getenv("FLY_REGION"),
			time.Since(started).Round(time.Second), r.Header.Get("Fly-Region"), r.Header.Get("Fly-Request-Id"))
	})
	srv := &http.Server{Addr: net.JoinHostPort("127.0.0.1", port), Handler: mux, ReadHeaderTimeout: 10 * time.Second}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		<-ctx.Done()
		// Within the app's kill_timeout (5s), after which godwit kills it.
		shutdown, cancel := context.WithTimeout(context.Background(), 4*time.Second)
		defer cancel()
		srv.Shutdown(shutdown)
	}()
	if err := srv.ListenAndServe(); err != http.ErrServerClosed {
		log.Fatal("hello: ", err)
	}
	<-drained // ListenAndServe returns at once on Shutdown; the requests finish here
}
