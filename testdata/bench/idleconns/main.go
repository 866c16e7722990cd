// Command idleconns measures what idle client connections cost a proxy: it
// reads the proxy's resident set size (VmRSS), opens -n connections through
// it, runs one statement on each so every session is fully established, lets
// them sit idle, and reads VmRSS again. make bench (testdata/bench/run.sh)
// runs it against tenantguard.
//
//	go run ./testdata/bench/idleconns -url 'postgres://app@127.0.0.1:6432/clinic?sslmode=disable' -pid 1234 -n 1000
//
// It prints one line of key=value pairs, sizes in KiB:
//
//	conns=1000 rss_before_kib=... rss_idle_kib=... per_conn_kib=... rss_closed_kib=...
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

func main() {
	url := flag.String("url", "", "connection URL of the proxy (the tenant may be set with options=-c ...)")
	pid := flag.Int("pid", 0, "process id of the proxy whose VmRSS is read")
	n := flag.Int("n", 1000, "number of idle connections to hold")
	parallel := flag.Int("parallel", 32, "connections opened at once")
	settle := flag.Duration("settle", 3*time.Second, "idle time before the RSS is read")
	flag.Parse()
	if *url == "" || *pid <= 0 || *n <= 0 || *parallel <= 0 {
		fmt.Fprintln(os.Stderr, "idleconns: -url, -pid and a positive -n are required")
		os.Exit(2)
	}
	if err := run(*url, *pid, *n, *parallel, *settle); err != nil {
		fmt.Fprintln(os.Stderr, "idleconns:", err)
		os.Exit(1)
	}
}

func run(url string, pid, n, parallel int, settle time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	before, err := rssKiB(pid)
	if err != nil {
		return err
	}
	conns := make([]*pgconn.PgConn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				_ = c.Close(context.Background())
			}
		}
	}()

	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	slots := make(chan struct{}, parallel)
	for i := range conns {
		wg.Add(1)
		slots <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-slots }()
			c, err := pgconn.Connect(ctx, url)
			if err == nil {
				_, err = c.Exec(ctx, "SELECT 1").ReadAll()
			}
			mu.Lock()
			defer mu.Unlock()
			if c != nil {
				conns[i] = c
			}
			if err != nil && first == nil {
				first = fmt.Errorf("connection %d: %w", i, err)
			}
		}(i)
	}
	wg.Wait()
	if first != nil {
		return first
	}

	time.Sleep(settle)
	idle, err := rssKiB(pid)
	if err != nil {
		return err
	}
	for i, c := range conns {
		_ = c.Close(ctx)
		conns[i] = nil
	}
	time.Sleep(settle)
	closed, err := rssKiB(pid)
	if err != nil {
		return err
	}
	fmt.Printf("conns=%d rss_before_kib=%d rss_idle_kib=%d per_conn_kib=%.1f rss_closed_kib=%d\n",
		n, before, idle, float64(idle-before)/float64(n), closed)
	return nil
}

// rssKiB reads VmRSS of process pid from /proc, in KiB.
func rssKiB(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read rss: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			v, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("read rss: parse %q: %w", line, err)
			}
			return v, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("read rss: %w", err)
	}
	return 0, errors.New("read rss: no VmRSS line")
}
