package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
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

// recordingWriter keeps what is written to it and the size of each write.
type recordingWriter struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	writes []int
	fail   bool
	// entered, when set, is closed at the first write, which then waits
	// for release.
	entered, release chan struct{}
}

func (w *recordingWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	first := len(w.writes) == 0
	w.writes = append(w.writes, len(p))
	fail := w.fail
	if !fail {
		w.buf.Write(p)
	}
	w.mu.Unlock()
	if first && w.entered != nil {
		close(w.entered)
		<-w.release
	}
	if fail {
		return 0, errors.New("disk full")
	}
	return len(p), nil
}

func (w *recordingWriter) sizes() []int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]int(nil), w.writes...)
}

// TestBufferedSinkFlushesAt64KiB checks the buffered Log path against the
// sink's contract: nothing written below 64 KiB, one write of every
// pending event at the event that reaches it, and a failed batch counted
// once per event; the unbuffered path writes each event at once.
func TestBufferedSinkFlushesAt64KiB(t *testing.T) {
	ts := time.Date(2026, 11, 27, 3, 7, 56, 5, time.UTC)
	e := benchStatement()
	line := e.AppendJSON(nil, ts)
	k := (64<<10 + len(line) - 1) / len(line) // the event that reaches 64 KiB
	for _, fail := range []bool{false, true} {
		w := &recordingWriter{fail: fail}
		failures, reported := 0, 0
		l, err := New(Options{
			Stdout: w, FlushInterval: time.Hour, Now: func() time.Time { return ts },
			OnFailure: func() { failures++ }, OnError: func(error) { reported++ },
		})
		require.NoError(t, err)
		for i := 1; i < k; i++ {
			l.Log(e)
		}
		require.Empty(t, w.sizes(), "written below 64 KiB")
		l.Log(e)
		require.Equal(t, []int{k * len(line)}, w.sizes(), "one write of the %d events at 64 KiB", k)
		l.Log(e)
		require.NoError(t, l.Close())
		require.Equal(t, []int{k * len(line), len(line)}, w.sizes(), "Close writes the rest")
		if fail {
			require.EqualValues(t, k+1, l.Failures())
			require.Equal(t, k+1, failures, "OnFailure once per lost event")
			require.Equal(t, 1, reported, "OnError once per run of failures")
		} else {
			require.Zero(t, l.Failures())
			require.Equal(t, strings.Repeat(string(line), k+1), w.buf.String())
		}
	}

	w := &recordingWriter{}
	l, err := New(Options{Stdout: w, Now: func() time.Time { return ts }})
	require.NoError(t, err)
	for i := 0; i < 3; i++ {
		l.Log(e)
	}
	require.Equal(t, []int{len(line), len(line), len(line)}, w.sizes(), "unbuffered: one write per event")
	require.NoError(t, l.Close())
}

// TestBufferedLogConcurrent logs from many goroutines at once through the
// buffered sink and checks that every line is whole and present once.
func TestBufferedLogConcurrent(t *testing.T) {
	ts := time.Date(2026, 11, 27, 3, 7, 56, 5, time.UTC)
	w := &recordingWriter{}
	l, err := New(Options{Stdout: w, FlushInterval: time.Millisecond, Now: func() time.Time { return ts }})
	require.NoError(t, err)
	const goroutines, events = 8, 2000
	want := map[string]int{}
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		e := benchStatement()
		e.ConnID = uint64(g + 1)
		e.Statement = strings.Repeat("x", g*100)
		want[string(e.AppendJSON(nil, ts))] = events
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < events; i++ {
				l.Log(e)
			}
		}()
	}
	wg.Wait()
	require.NoError(t, l.Close())
	got := map[string]int{}
	for _, line := range strings.SplitAfter(w.buf.String(), "\n") {
		if line != "" {
			got[line]++
		}
	}
	require.Equal(t, want, got)
}
