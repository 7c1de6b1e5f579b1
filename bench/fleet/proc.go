package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/godwit/godwit/bench/internal/child"
)

// stopGrace is how long an edge has to leave and drain after SIGTERM
// before SIGKILL.
const stopGrace = 10 * time.Second

// edge is one `godwit run` child. Its JSON log goes to a file in the temp
// dir; the bound addresses are read from it as it is written.
type edge struct {
	name, region string
	cfgPath      string
	cpu          int
	logPath      string

	p           *child.Proc // nil until started; a restart replaces it
	http, admin string      // bound addresses, from the log
}

// start runs the edge and waits until it serves and has joined gossip
// (its "godwit edge running" and "fleet joined" log lines), or fails. A
// restarted edge appends to the same log.
func (e *edge) start(ctx context.Context) error {
	up := make(chan struct{})
	var http, admin string
	running, joined := false, false
	onLine := func(line string) {
		if running && joined {
			return // up is closed
		}
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil {
			return
		}
		switch rec["msg"] {
		case "godwit edge running":
			running, http, admin = true, fmt.Sprint(rec["http"]), fmt.Sprint(rec["admin"])
		case "fleet joined":
			joined = true
		}
		if running && joined {
			close(up)
		}
	}
	p, err := child.Start(child.Command(e.cpu, godwitBin, "run", "--config", e.cfgPath), e.name, e.logPath, onLine)
	if err != nil {
		return err
	}
	e.p = p
	if err := p.Await(ctx, up, 30*time.Second); err != nil {
		return err
	}
	e.http, e.admin = http, admin
	return nil
}
