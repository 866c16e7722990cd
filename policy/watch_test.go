package policy

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// reports collects the watcher's callbacks.
type reports struct {
	mu       sync.Mutex
	policies []*Policy
	errs     []error
}

func (r *reports) on(p *Policy, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.errs = append(r.errs, err)
	} else {
		r.policies = append(r.policies, p)
	}
}

func (r *reports) counts() (int, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.policies), len(r.errs)
}

func (r *reports) lastErr() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.errs[len(r.errs)-1]
}

// waitFor polls cond until it holds or the timeout (a hang guard, not an
// assertion on timing) passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, []byte(text), 0o644))
}

// replace writes text to a temp file and renames it over path, as editors do.
func replace(t *testing.T, path, text string) {
	t.Helper()
	tmp := path + ".tmp"
	writeFile(t, tmp, text)
	require.NoError(t, os.Rename(tmp, path))
}

func startWatch(t *testing.T, path string) (*Holder, *reports, *Watcher, context.CancelFunc) {
	t.Helper()
	p, err := Load(path)
	require.NoError(t, err)
	h := NewHolder(p)
	r := &reports{}
	ctx, cancel := context.WithCancel(context.Background())
	w, err := Watch(ctx, path, h, r.on)
	require.NoError(t, err)
	t.Cleanup(func() {
		cancel()
		<-w.Done()
	})
	return h, r, w, cancel
}

func TestWatchSwapsValidChange(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, "tables: [patients]\n")
	h, r, _, _ := startWatch(t, path)
	old := h.Load()

	writeFile(t, path, "tables: [patients, invoices]\n")
	waitFor(t, "new policy stored", func() bool { return len(h.Load().Tables) == 2 })
	assert.NotEqual(t, old.Digest, h.Load().Digest)
	n, e := r.counts()
	assert.Equal(t, 1, n)
	assert.Equal(t, 0, e)
}

func TestWatchKeepsOldOnInvalidChange(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, "tables: [patients]\n")
	h, r, _, _ := startWatch(t, path)
	old := h.Load()

	writeFile(t, path, "tables: [patients]\nmode: block\n")
	waitFor(t, "error reported", func() bool { _, e := r.counts(); return e > 0 })
	assert.Same(t, old, h.Load(), "the old policy stays in force")
	assert.Contains(t, r.lastErr().Error(), `policy.yaml:2: mode: must be enforce or audit, got "block"`)

	// Fixing the file swaps the fixed version in.
	writeFile(t, path, "tables: [patients]\nmode: audit\n")
	waitFor(t, "fixed policy stored", func() bool { return h.Load().Mode == ModeAudit })
}

func TestWatchSeesRenameReplace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, "tables: [patients]\n")
	h, _, _, _ := startWatch(t, path)

	for i, tables := range []string{"[a]", "[a, b]", "[a, b, c]"} {
		replace(t, path, "tables: "+tables+"\n")
		want := i + 1
		waitFor(t, "replaced policy stored", func() bool { return len(h.Load().Tables) == want })
	}
}

// TestWatchSeesConfigMapSwap mimics a Kubernetes ConfigMap volume: the file
// is a symlink through ..data, and an update atomically renames a new ..data
// symlink pointing at a new directory.
func TestWatchSeesConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	v1 := filepath.Join(dir, "..v1")
	require.NoError(t, os.Mkdir(v1, 0o755))
	writeFile(t, filepath.Join(v1, "policy.yaml"), "tables: [patients]\n")
	require.NoError(t, os.Symlink("..v1", filepath.Join(dir, "..data")))
	path := filepath.Join(dir, "policy.yaml")
	require.NoError(t, os.Symlink("..data/policy.yaml", path))
	h, _, _, _ := startWatch(t, path)

	v2 := filepath.Join(dir, "..v2")
	require.NoError(t, os.Mkdir(v2, 0o755))
	writeFile(t, filepath.Join(v2, "policy.yaml"), "tables: [patients, invoices]\n")
	require.NoError(t, os.Symlink("..v2", filepath.Join(dir, "..data_tmp")))
	require.NoError(t, os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))
	waitFor(t, "swapped policy stored", func() bool { return len(h.Load().Tables) == 2 })
}

func TestWatchReloadForces(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, "tables: [patients]\n")
	h, r, w, _ := startWatch(t, path)
	old := h.Load()

	w.Reload()
	waitFor(t, "forced reload reported", func() bool { n, _ := r.counts(); return n == 1 })
	assert.NotSame(t, old, h.Load(), "an explicit reload stores a fresh policy even if unchanged")

	require.NoError(t, os.Remove(path))
	w.Reload()
	waitFor(t, "missing file reported", func() bool { _, e := r.counts(); return e == 1 })
	assert.Contains(t, r.lastErr().Error(), "policy: read ")
	assert.NotNil(t, h.Load(), "the policy in force is kept")
}

func TestWatchStopsWithoutLeak(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, "tables: [patients]\n")
	before := runtime.NumGoroutine()
	for i := 0; i < 5; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		w, err := Watch(ctx, path, nil, nil)
		require.NoError(t, err)
		cancel()
		select {
		case <-w.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("watcher did not stop")
		}
	}
	waitFor(t, "goroutines to exit", func() bool { return runtime.NumGoroutine() <= before })
}

func TestWatchMissingDirectory(t *testing.T) {
	_, err := Watch(context.Background(), filepath.Join(t.TempDir(), "nope", "policy.yaml"), nil, nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "policy: watch ")
}

// TestWatchIgnoresTruncatedFile: an in-place save truncates the file before
// writing it; the empty file in between is not reported as an invalid policy.
func TestWatchIgnoresTruncatedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, "tables: [patients]\n")
	h, r, _, _ := startWatch(t, path)

	writeFile(t, path, "")
	writeFile(t, path, "tables: [invoices]\n")
	waitFor(t, "new policy stored", func() bool { return h.Load().Tables[0].Name == "invoices" })
	_, e := r.counts()
	assert.Equal(t, 0, e)
}
