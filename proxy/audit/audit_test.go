package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func readLines(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m map[string]any
		require.NoError(t, json.Unmarshal(sc.Bytes(), &m), sc.Text())
		out = append(out, m)
	}
	return out
}

func TestStatementEventKeys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := New(Options{File: path, Now: func() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) }})
	require.NoError(t, err)
	l.Log(&Event{
		Event: EventStatement, ConnID: 42, Client: "127.0.0.1:5555", User: "app", Database: "clinic",
		ApplicationName: "psql", Tenant: "7", Kind: "select", Relations: []string{"public.patients"},
		Decision: DecisionRejected, Reason: "unbounded", SQLState: "54000", Fingerprint: "abc",
		Statement: "SELECT * FROM patients WHERE id = $1", Rows: -1, Duration: 1500 * time.Microsecond,
	})
	require.NoError(t, l.Close())
	lines := readLines(t, path)
	require.Len(t, lines, 1)
	m := lines[0]
	require.Equal(t, "2026-01-02T03:04:05Z", m["ts"])
	for k, v := range map[string]any{
		"event": "statement", "conn_id": 42.0, "client": "127.0.0.1:5555", "user": "app", "database": "clinic",
		"application_name": "psql", "tenant": "7", "kind": "select", "decision": "rejected", "reason": "unbounded",
		"sqlstate": "54000", "fingerprint": "abc", "statement": "SELECT * FROM patients WHERE id = $1",
		"duration_ms": 1.5, "injected": false,
	} {
		require.Equal(t, v, m[k], k)
	}
	require.Equal(t, []any{"public.patients"}, m["relations"])
	_, hasRows := m["rows"]
	require.False(t, hasRows, "unknown row count is omitted")
}

func TestReopenFollowsRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	l, err := New(Options{File: path})
	require.NoError(t, err)
	defer l.Close()
	l.Log(&Event{Event: EventConnect, ConnID: 1})
	require.NoError(t, os.Rename(path, path+".1"))
	l.Log(&Event{Event: EventConnect, ConnID: 2}) // still into the rotated file
	require.NoError(t, l.Reopen())
	l.Log(&Event{Event: EventConnect, ConnID: 3})
	require.Len(t, readLines(t, path+".1"), 2)
	fresh := readLines(t, path)
	require.Len(t, fresh, 1)
	require.Equal(t, 3.0, fresh[0]["conn_id"])
}

type brokenWriter struct{ fail bool }

func (w *brokenWriter) Write(p []byte) (int, error) {
	if w.fail {
		return 0, errors.New("disk full")
	}
	return len(p), nil
}

func TestWriteFailuresAreCountedAndReportedOnce(t *testing.T) {
	w := &brokenWriter{fail: true}
	var reported []error
	l, err := New(Options{Stdout: w, OnError: func(err error) { reported = append(reported, err) }})
	require.NoError(t, err)
	for i := 0; i < 5; i++ {
		l.Log(&Event{Event: EventStatement, Decision: DecisionAllowed})
	}
	require.EqualValues(t, 5, l.Failures())
	require.Len(t, reported, 1)
	w.fail = false
	l.Log(&Event{Event: EventStatement, Decision: DecisionAllowed})
	w.fail = true
	l.Log(&Event{Event: EventStatement, Decision: DecisionAllowed})
	require.EqualValues(t, 6, l.Failures())
	require.Len(t, reported, 2, "a new run of failures is reported again")
}

func TestDecisionFilterAndSampling(t *testing.T) {
	var buf bytes.Buffer
	l, err := New(Options{Stdout: &buf, Decisions: []string{DecisionRejected}})
	require.NoError(t, err)
	l.Log(&Event{Event: EventStatement, Decision: DecisionAllowed})
	l.Log(&Event{Event: EventStatement, Decision: DecisionRejected})
	l.Log(&Event{Event: EventConnect}) // session events are not filtered
	require.Equal(t, 2, bytes.Count(buf.Bytes(), []byte("\n")))

	buf.Reset()
	l, err = New(Options{Stdout: &buf, Sample: 0.000001})
	require.NoError(t, err)
	for i := 0; i < 100; i++ {
		l.Log(&Event{Event: EventStatement, Decision: DecisionRejected})
	}
	require.Equal(t, 100, bytes.Count(buf.Bytes(), []byte("\n")), "rejections are never sampled away")
	buf.Reset()
	for i := 0; i < 100; i++ {
		l.Log(&Event{Event: EventStatement, Decision: DecisionAllowed})
	}
	require.Less(t, bytes.Count(buf.Bytes(), []byte("\n")), 5)
}

func TestBufferedSinkFlushesOnTimerAndClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := New(Options{File: path, FlushInterval: 20 * time.Millisecond})
	require.NoError(t, err)
	l.Log(&Event{Event: EventConnect, ConnID: 1})
	deadline := time.Now().Add(5 * time.Second)
	for len(readLines(t, path)) < 1 {
		require.True(t, time.Now().Before(deadline), "the flusher never wrote the event")
		time.Sleep(5 * time.Millisecond)
	}
	for i := 0; i < 100; i++ {
		l.Log(&Event{Event: EventStatement, Decision: DecisionAllowed, ConnID: uint64(i + 2)})
	}
	require.NoError(t, l.Close())
	require.Len(t, readLines(t, path), 101, "Close writes what is buffered")
}

func TestBufferedSinkCountsLostEvents(t *testing.T) {
	w := &brokenWriter{fail: true}
	reported := 0
	l, err := New(Options{Stdout: w, FlushInterval: time.Hour, OnError: func(error) { reported++ }})
	require.NoError(t, err)
	for i := 0; i < 7; i++ {
		l.Log(&Event{Event: EventStatement, Decision: DecisionAllowed})
	}
	require.Zero(t, l.Failures(), "nothing written yet")
	require.NoError(t, l.Close())
	require.EqualValues(t, 7, l.Failures(), "every event of a failed batch is counted")
	require.Equal(t, 1, reported)
}
