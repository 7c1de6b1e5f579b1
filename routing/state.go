package routing

// State is a machine's lifecycle state. Only StateStarted takes requests;
// the others say why a machine does not.
type State uint8

// Lifecycle states. The zero value is StateStopped.
const (
	StateStopped   State = iota // not running; a wake starts it
	StateStarting               // a start is under way: the driver, then the first passing check
	StateStarted                // running and ready: the pick may choose it
	StateStopping               // cordoned: no new request, in-flight ones drain, then it stops
	StateSuspended              // suspended (memory kept); a wake resumes it
	StateFailed                 // the last start or stop failed
)

var stateNames = [...]string{
	StateStopped:   "stopped",
	StateStarting:  "starting",
	StateStarted:   "started",
	StateStopping:  "stopping",
	StateSuspended: "suspended",
	StateFailed:    "failed",
}

// String returns the state's name as the admin API and gossip show it.
func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "unknown"
}

// ParseState returns the state named s (as String writes it).
func ParseState(s string) (State, bool) {
	for i, n := range stateNames {
		if n == s {
			return State(i), true
		}
	}
	return StateStopped, false
}
