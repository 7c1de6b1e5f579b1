// Package examples holds example godwit configs (the *.toml files in the
// directories below it) and a test that each passes `godwit config check`.
// It has no code of its own; the sample app of the autostop example is
// the command in autostop/hello.
package examples
