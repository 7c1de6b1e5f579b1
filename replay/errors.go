package replay

import "errors"

// ErrInvalid matches (with errors.Is) every error returned by ParseHeader,
// ParseJSON and ParseSrc: the instruction or header is malformed or
// contradictory. The proxy answers an invalid fly-replay with code PA03.
var ErrInvalid = errors.New("fly-replay: invalid instruction")

// Error is a refused instruction: Field is the key at fault ("region",
// "transform.set_headers", ...; "header" or "json" for the whole value) and
// Msg says what is wrong with it.
type Error struct {
	Field string
	Msg   string
}

func (e *Error) Error() string { return "fly-replay: " + e.Field + ": " + e.Msg }

// Is reports whether target is ErrInvalid.
func (e *Error) Is(target error) bool { return target == ErrInvalid }

func invalid(field, msg string) error { return &Error{Field: field, Msg: msg} }
