package autostart

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestNone(t *testing.T) {
	s := &Spec{ID: "m-elsewhere", Kind: "none"}
	for _, op := range []struct {
		name string
		f    func(context.Context, *Spec) error
	}{{"start", None{}.Start}, {"stop", None{}.Stop}, {"suspend", None{}.Suspend}} {
		err := op.f(context.Background(), s)
		if !errors.Is(err, ErrNotManaged) || !errors.Is(err, ErrUnsupported) {
			t.Errorf("%s: got %v, want ErrNotManaged, which is also ErrUnsupported", op.name, err)
			continue
		}
		want := "autostart: " + op.name + ` machine m-elsewhere: godwit does not manage this machine (driver.kind "none")`
		if !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%s: got %q, want it to start %q", op.name, err, want)
		}
	}
}
