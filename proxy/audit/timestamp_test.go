package audit

import (
	"math/rand/v2"
	"sync"
	"testing"
	"time"
	_ "time/tzdata" // zones with DST and odd offsets, whatever the host has

	"github.com/stretchr/testify/require"
)

// checkStamp fails unless appendTimestamp writes what AppendFormat writes
// for t, alone and after a prefix.
func checkStamp(t testing.TB, ts time.Time) {
	t.Helper()
	want := ts.AppendFormat(nil, time.RFC3339Nano)
	if got := appendTimestamp(nil, ts); string(got) != string(want) {
		t.Fatalf("appendTimestamp(%v) = %s, want %s", ts, got, want)
	}
	if got := appendTimestamp([]byte(`{"ts":"`), ts); string(got) != `{"ts":"`+string(want) {
		t.Fatalf("appendTimestamp(prefix, %v) = %s, want %s", ts, got, want)
	}
}

// stampZones are the locations the timestamp tests format in.
func stampZones(t testing.TB) []*time.Location {
	t.Helper()
	zones := []*time.Location{
		time.UTC, time.Local,
		time.FixedZone("", 0), // offset 0 but not UTC: still "Z"
		time.FixedZone("west", -(5*3600 + 30*60)),
		time.FixedZone("east", 14*3600),
		time.FixedZone("seconds", 30),               // formats as +00:00
		time.FixedZone("lmt", -(17*60 + 30 + 3600)), // minutes and seconds
	}
	for _, name := range []string{"America/New_York", "Europe/London", "Asia/Kolkata", "Australia/Lord_Howe", "America/St_Johns"} {
		loc, err := time.LoadLocation(name)
		require.NoError(t, err)
		zones = append(zones, loc)
	}
	return zones
}

// TestAppendTimestampMatchesAppendFormat compares appendTimestamp with
// AppendFormat(RFC3339Nano) on boundaries (years, days, DST changes, the
// four-digit year range), on runs of times a few hundred milliseconds
// apart (the cached second reused and replaced), with the same second in
// turn in every zone, and on random times.
func TestAppendTimestampMatchesAppendFormat(t *testing.T) {
	zones := stampZones(t)
	nanos := []int{0, 1, 9, 10, 100, 999, 1000, 120_000_000, 100_000_000, 123_456_789, 999_999_999, 500_000_000, 7_000}
	var times []time.Time
	for _, y := range []int{-10000, -1, 0, 1, 1969, 1970, 1999, 2000, 2026, 2038, 9999, 10000, 292277026} {
		for _, ns := range nanos {
			times = append(times,
				time.Date(y, 1, 1, 0, 0, 0, ns, time.UTC),
				time.Date(y, 12, 31, 23, 59, 59, ns, time.UTC),
				time.Date(y, 2, 28, 23, 59, 59, ns, time.UTC),
				time.Date(y, 3, 1, 0, 0, 0, ns, time.UTC))
		}
	}
	// DST changes in 2026: US 8 March and 1 November, UK 29 March and 25
	// October, Lord Howe (half an hour) 5 April and 4 October.
	for _, d := range []time.Time{
		time.Date(2026, 3, 8, 7, 0, 0, 0, time.UTC), time.Date(2026, 11, 1, 6, 0, 0, 0, time.UTC),
		time.Date(2026, 3, 29, 1, 0, 0, 0, time.UTC), time.Date(2026, 10, 25, 1, 0, 0, 0, time.UTC),
		time.Date(2026, 4, 4, 15, 0, 0, 0, time.UTC), time.Date(2026, 10, 3, 15, 30, 0, 0, time.UTC),
	} {
		for s := -3; s <= 3; s++ {
			times = append(times, d.Add(time.Duration(s)*time.Second-1), d.Add(time.Duration(s)*time.Second))
		}
	}
	times = append(times, time.Now(), time.Now().Add(time.Hour), time.Unix(0, 0), time.Unix(-1, 999_999_999),
		time.Unix(1<<40, 1), time.Unix(-(1<<40), 1), time.Time{}, time.Time{}.Add(1))
	for _, ts := range times {
		for _, loc := range zones {
			checkStamp(t, ts.In(loc))
		}
		checkStamp(t, ts) // with its monotonic reading, when it has one
	}

	// Runs: each second formatted many times, then the next.
	r := rand.New(rand.NewPCG(7, 8))
	for _, loc := range zones {
		ts := time.Date(2026, 12, 31, 23, 59, 50, 0, loc)
		for i := 0; i < 200; i++ {
			ts = ts.Add(time.Duration(r.Int64N(int64(300 * time.Millisecond))))
			checkStamp(t, ts)
		}
	}
	// The same instant in one zone after another: the cached second must
	// not serve another location.
	for i := 0; i < 1000; i++ {
		ts := time.Unix(r.Int64N(4_000_000_000), r.Int64N(1e9))
		for _, loc := range zones {
			checkStamp(t, ts.In(loc))
		}
	}
	// Random instants anywhere from year -5000 to 15000, in random zones,
	// with nanoseconds that often end in zeros.
	first, last := time.Date(-5000, 1, 1, 0, 0, 0, 0, time.UTC).Unix(), time.Date(15000, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
	for i := 0; i < 300_000; i++ {
		sec := first + r.Int64N(last-first)
		ns := r.Int64N(1e9)
		if r.IntN(2) == 0 {
			ns -= ns % []int64{1, 10, 1000, 1e6, 1e8, 1e9}[r.IntN(6)]
		}
		checkStamp(t, time.Unix(sec, ns).In(zones[r.IntN(len(zones))]))
	}
}

// TestAppendTimestampConcurrent formats from several goroutines at once,
// each in its own zone and its own run of seconds, so that they keep
// replacing each other's cached second (run it with -race).
func TestAppendTimestampConcurrent(t *testing.T) {
	zones := stampZones(t)
	var wg sync.WaitGroup
	errs := make(chan string, len(zones))
	for g, loc := range zones {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ts := time.Date(2026, 11, 27, 3, 7, 0, 0, loc).Add(time.Duration(g) * 1500 * time.Millisecond)
			var buf []byte
			for i := 0; i < 5000; i++ {
				ts = ts.Add(7919 * time.Microsecond)
				buf = appendTimestamp(buf[:0], ts)
				if want := ts.Format(time.RFC3339Nano); string(buf) != want {
					errs <- string(buf) + " != " + want
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// FuzzAppendTimestamp compares appendTimestamp with AppendFormat on any
// instant, in a fixed zone of any offset or in UTC.
func FuzzAppendTimestamp(f *testing.F) {
	f.Add(int64(1764212876), int64(123456789), int32(0), false)
	f.Add(int64(-62135596800), int64(0), int32(-19800), true)
	f.Add(int64(253402300799), int64(999999999), int32(50400), true)
	f.Fuzz(func(t *testing.T, sec, ns int64, offset int32, fixed bool) {
		ts := time.Unix(sec, ns).UTC()
		if fixed {
			ts = ts.In(time.FixedZone("f", int(offset)))
		}
		checkStamp(t, ts)
	})
}
