// Command tenantguard is a PostgreSQL wire-protocol proxy that enforces
// multi-tenant isolation: see `tenantguard --help` and the README.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// Exit codes.
const (
	exitOK       = 0
	exitRejected = 1 // check: a statement was rejected; serve: runtime failure
	exitUsage    = 2 // bad flags, config or input
)

// usageError marks errors caused by the user's input (exit 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// exitError carries a specific exit code without a message of its own.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int { return runWith(args, os.Stdin, os.Stdout, os.Stderr) }

// runWith runs the command line args with the given standard streams and
// returns the exit status, as run does with the process's own. Tests use it.
func runWith(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	cmd := newRootCmd()
	cmd.SetArgs(args)
	cmd.SetIn(stdin)
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	err := cmd.Execute()
	if err == nil {
		return exitOK
	}
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	fmt.Fprintln(stderr, "tenantguard:", err)
	var ue usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	return exitRejected
}
