package policy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Holder holds the policy in force. Sessions Load it per statement; a reload
// Stores a new one. The swap is atomic: a statement sees the old policy or
// the new one, never a mix.
type Holder struct {
	p atomic.Pointer[Policy]
}

// NewHolder returns a Holder holding p (which may be nil: not loaded yet).
func NewHolder(p *Policy) *Holder {
	h := &Holder{}
	h.p.Store(p)
	return h
}

// Load returns the policy in force, nil when none was stored.
func (h *Holder) Load() *Policy { return h.p.Load() }

// Store puts p in force.
func (h *Holder) Store(p *Policy) { h.p.Store(p) }

// settle is how long the watcher waits after a file event for more events of
// the same save (editors write, chmod and rename in a burst) before reading.
const settle = 50 * time.Millisecond

// Watcher reloads a policy file when it changes on disk or when asked
// (SIGHUP). A valid new policy is stored in the Holder; an invalid one is
// reported and the old policy stays in force.
//
// It watches the file's directory, not the file, so that a rename over the
// file (vim, most editors, `mv`) and a Kubernetes ConfigMap update (a swap of
// the ..data symlink) are seen as well as in-place writes. Any event in the
// directory triggers a read; the file is reloaded only when its bytes
// differ from the policy in force or from the last refused version.
type Watcher struct {
	path     string
	holder   *Holder
	onChange func(*Policy, error)
	fs       *fsnotify.Watcher
	reload   chan struct{}
	done     chan struct{}
	last     string // digest of the last file version handled (stored or refused)
}

// Watch starts watching path and returns once the watch is in place. On a
// change it loads the file: on success it stores the policy in holder (when
// not nil) and calls onChange(p, nil); on failure it keeps the old policy
// and calls onChange(nil, err). onChange is called from the watcher's
// goroutine, one call at a time, and may be nil. The watcher stops when ctx
// is done; Done is closed when it has.
func Watch(ctx context.Context, path string, holder *Holder, onChange func(*Policy, error)) (*Watcher, error) {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("policy: watch %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	if err := fw.Add(dir); err != nil {
		_ = fw.Close()
		return nil, fmt.Errorf("policy: watch %s: %w", dir, err)
	}
	w := &Watcher{
		path:     path,
		holder:   holder,
		onChange: onChange,
		fs:       fw,
		reload:   make(chan struct{}, 1),
		done:     make(chan struct{}),
	}
	if holder != nil && holder.Load() != nil {
		w.last = holder.Load().Digest
	} else if data, err := os.ReadFile(path); err == nil {
		w.last = digest(data)
	}
	go w.run(ctx)
	return w, nil
}

// Reload asks the watcher to reload the file now, even if it looks
// unchanged (SIGHUP). It does not block; requests made while one is pending
// are merged.
func (w *Watcher) Reload() {
	select {
	case w.reload <- struct{}{}:
	default:
	}
}

// Done is closed when the watcher has stopped and released its resources.
func (w *Watcher) Done() <-chan struct{} { return w.done }

func (w *Watcher) run(ctx context.Context) {
	defer close(w.done)
	defer w.fs.Close()
	// A change between the caller's Load and the watch being in place must
	// not be missed: check once at start, after the same settling delay as
	// for an event, so that a write in progress is not read half done.
	timer := time.NewTimer(settle)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.reload:
			w.check(true)
		case _, ok := <-w.fs.Events:
			if !ok {
				return
			}
			timer.Reset(settle)
		case err, ok := <-w.fs.Errors:
			if !ok {
				return
			}
			w.report(nil, fmt.Errorf("policy: watch %s: %w", w.path, err))
		case <-timer.C:
			w.check(false)
		}
	}
}

// check reads the file and loads it if forced or changed.
func (w *Watcher) check(force bool) {
	data, err := os.ReadFile(w.path)
	if err != nil {
		// A file briefly missing during a rename is normal; report it only
		// when asked explicitly, and keep the old policy either way.
		if force {
			w.report(nil, fmt.Errorf("policy: read %s: %w", w.path, err))
		}
		return
	}
	if len(data) == 0 && !force {
		// An in-place save truncates before it writes: an empty file is
		// never a valid policy, and the write that follows brings an event.
		return
	}
	d := digest(data)
	if !force && d == w.last {
		return
	}
	w.last = d
	p, err := Parse(data, w.path)
	if err != nil {
		w.report(nil, err)
		return
	}
	if w.holder != nil {
		w.holder.Store(p)
	}
	w.report(p, nil)
}

func (w *Watcher) report(p *Policy, err error) {
	if w.onChange != nil {
		w.onChange(p, err)
	}
}

func digest(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}
