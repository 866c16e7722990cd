package guard

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// TestAppendQuery: the Query the guard builds in its own buffer is the one
// pgproto3 encodes, for one statement and several.
func TestAppendQuery(t *testing.T) {
	for _, parts := range [][]string{{"SELECT 1"}, {"SELECT 1", "SELECT 'a;b'", ""}, {""}, {}} {
		want, err := (&pgproto3.Query{String: strings.Join(parts, "\n;\n")}).Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		got := appendQuery([]byte("prefix"), parts, "\n;\n")
		if string(got) != "prefix"+string(want) {
			t.Errorf("%q: %q, want %q", parts, got, want)
		}
	}
	// One statement into a buffer with room: no allocation (onQuery reuses
	// the session's buffer for every rewritten Query).
	buf := make([]byte, 0, 256)
	parts := []string{"SELECT full_name FROM patients WHERE patients.clinic_id = 7 AND id = 42"}
	if n := testing.AllocsPerRun(100, func() { buf = appendQuery(buf[:0], parts, "\n;\n") }); n != 0 {
		t.Errorf("appendQuery allocated %v times per call, want 0", n)
	}
}
