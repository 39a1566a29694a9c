package counters

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sessioncap/sessioncap/limits"
)

// ErrUnavailable is returned by a Fallback with OnError "tempfail" while its
// primary store is down: the caller answers 421 at connect.
var ErrUnavailable = errors.New("counters: shared store unavailable")

// The failure policies of a Fallback.
const (
	OnErrorLocal    = "local"    // answer from the local store
	OnErrorTempfail = "tempfail" // return ErrUnavailable
)

// DefaultFallbackTimeout bounds each call to the primary store.
const DefaultFallbackTimeout = 100 * time.Millisecond

// DefaultProbeInterval is how often a down primary is probed.
const DefaultProbeInterval = time.Second

// DefaultAdminTimeout bounds each listing and admin call to the primary
// (Bans, Ban, Unban): listing 100 000 bans takes far longer than a hit.
const DefaultAdminTimeout = 10 * time.Second

// ErrSharedUnreachable is returned, wrapped, by an admin call (Bans, Ban,
// Unban) that could not reach the primary under on_error = "local": what
// it did, it did on this host only, and the error says so.
var ErrSharedUnreachable = errors.New("counters: the shared store could not be reached")

// Pinger is implemented by stores that can check their backend cheaply; a
// Fallback probes a down primary with Probe, else Ping, else Stats.
type Pinger interface {
	Ping(ctx context.Context) error
}

// Prober is implemented by stores that can check that their backend takes
// writes (a Redis that answers PING may refuse every write: maxmemory with
// noeviction, a read-only replica after a failover). A Fallback closes its
// breaker only after Probe succeeds.
type Prober interface {
	Probe(ctx context.Context) error
}

// FallbackOptions configure NewFallback; zero values take the defaults.
type FallbackOptions struct {
	Timeout       time.Duration // per call to the primary; DefaultFallbackTimeout when <= 0
	OnError       string        // OnErrorLocal (the default when "") or OnErrorTempfail
	ProbeInterval time.Duration // DefaultProbeInterval when <= 0
	// AdminTimeout bounds each listing and admin call (Bans, Ban, Unban);
	// DefaultAdminTimeout when <= 0. These calls never open the breaker.
	AdminTimeout time.Duration

	// OnStateChange is called once when the primary goes down and once when
	// it is back (to log once per outage and set sessioncap_store_up). Calls
	// are in order and never concurrent.
	OnStateChange func(up bool)
	// Observe is called after every call to the primary (not while it is
	// down) with the operation ("hit", "ban", "unban", "bans", "stats",
	// "ping", the probe of a down primary), its duration and its error.
	Observe func(op string, d time.Duration, err error)
}

// Fallback is a Store over a shared primary (Redis) that never waits for a
// dead one: each call to the primary is bounded by Timeout; the first
// failure opens a circuit breaker, and while it is open every call goes
// straight to the local store (or fails with ErrUnavailable under
// "tempfail") while a background prober, every ProbeInterval, closes the
// breaker as soon as the primary answers again.
//
// State made while the primary was down stays local: windows counted
// locally are not merged into the primary, and bans made locally are not
// copied to it. Those bans stay in force on this host until they end (every
// hit checks the local bans first, a map lookup), are listed with the
// primary's, and are lifted by Unban along with the primary's.
//
// A call that timed out may still be carried out by the primary (a hit sent
// to a Redis that hung is run when it resumes): that hit is then counted
// both there and locally, an error towards refusing, never towards
// admitting.
//
// Listing and admin calls (Bans, Ban, Unban) are different: each is
// bounded by AdminTimeout, not Timeout; it is tried on the primary even
// while the breaker is open, and its failure never opens the breaker (a
// listing of 100 000 bans must not send every connection to the local
// store). When it could not reach the primary it says so (an error
// wrapping ErrSharedUnreachable, or ErrUnavailable under "tempfail")
// rather than present this host's state as the fleet's.
//
// The primary must honour its context's deadline (the Redis store does).
// A caller that cancels its context, or whose deadline left the primary
// less than half of Timeout, gets its context's error, and the breaker
// stays as it is: the primary was not given its chance. A caller whose
// deadline is about Timeout (the daemon bounds every store call by the same
// store.timeout) does not shield a dead primary: the failure opens the
// breaker as if the caller had no deadline.
type Fallback struct {
	primary  Store
	pinger   func(context.Context) error
	local    *Memory
	timeout  time.Duration
	admin    time.Duration
	interval time.Duration
	tempfail bool
	onChange func(bool)
	observe  func(string, time.Duration, error)

	up      atomic.Bool
	mu      sync.Mutex // guards probing and closed
	probing bool
	closed  bool
	stop    chan struct{}
	wg      sync.WaitGroup
}

var _ Store = (*Fallback)(nil)

// NewFallback returns a Fallback over primary and local, the primary taken
// as up.
func NewFallback(primary Store, local *Memory, o FallbackOptions) (*Fallback, error) {
	f := &Fallback{
		primary:  primary,
		local:    local,
		timeout:  o.Timeout,
		admin:    o.AdminTimeout,
		interval: o.ProbeInterval,
		onChange: o.OnStateChange,
		observe:  o.Observe,
		stop:     make(chan struct{}),
	}
	switch o.OnError {
	case "", OnErrorLocal:
	case OnErrorTempfail:
		f.tempfail = true
	default:
		return nil, errors.New(`counters: on_error must be "local" or "tempfail", not "` + o.OnError + `"`)
	}
	if f.timeout <= 0 {
		f.timeout = DefaultFallbackTimeout
	}
	if f.interval <= 0 {
		f.interval = DefaultProbeInterval
	}
	if f.admin <= 0 {
		f.admin = DefaultAdminTimeout
	}
	if p, ok := primary.(Prober); ok {
		f.pinger = p.Probe
	} else if p, ok := primary.(Pinger); ok {
		f.pinger = p.Ping
	} else {
		f.pinger = func(ctx context.Context) error { _, err := primary.Stats(ctx); return err }
	}
	f.up.Store(true)
	return f, nil
}

// Up reports whether calls go to the primary (the breaker is closed).
func (f *Fallback) Up() bool { return f.up.Load() }

// Local returns the local store.
func (f *Fallback) Local() *Memory { return f.local }

// call runs op on the primary within the timeout. It reports whether the
// caller must answer from the local store instead (the primary was down or
// just failed); err is then nil under "local" and ErrUnavailable under
// "tempfail", or the caller's own context error.
func (f *Fallback) call(ctx context.Context, name string, op func(context.Context) error) (fallback bool, err error) {
	if !f.up.Load() {
		return f.unavailable()
	}
	c, cancel := context.WithTimeout(ctx, f.timeout)
	start := time.Now()
	err = op(c)
	cancel()
	if f.observe != nil {
		f.observe(name, time.Since(start), err)
	}
	if err == nil {
		return false, nil
	}
	if f.callerGaveUp(ctx, start) {
		return false, ctx.Err()
	}
	f.down()
	return f.unavailable()
}

// callerGaveUp reports whether a call begun at start failed because of the
// caller's context rather than the primary: the caller cancelled it, or
// its deadline left less than half of the timeout.
func (f *Fallback) callerGaveUp(ctx context.Context, start time.Time) bool {
	switch err := ctx.Err(); {
	case err == nil:
		return false
	case errors.Is(err, context.DeadlineExceeded):
		d, _ := ctx.Deadline()
		return d.Sub(start) < f.timeout/2
	}
	return true
}

// adminCall runs op on the primary within AdminTimeout (and ctx), whether
// the breaker is open or not, and never changes the breaker. A failure is
// returned wrapping ErrSharedUnreachable, or as ErrUnavailable under
// "tempfail"; the caller's own cancellation as its context's error.
func (f *Fallback) adminCall(ctx context.Context, name string, op func(context.Context) error) error {
	c, cancel := context.WithTimeout(ctx, f.admin)
	start := time.Now()
	err := op(c)
	cancel()
	if f.observe != nil {
		f.observe(name, time.Since(start), err)
	}
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil && errors.Is(err, ctx.Err()):
		return ctx.Err()
	case f.tempfail:
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return fmt.Errorf("%w (%v)", ErrSharedUnreachable, err)
}

func (f *Fallback) unavailable() (bool, error) {
	if f.tempfail {
		return true, ErrUnavailable
	}
	return true, nil
}

// down opens the breaker (once per outage) and starts the prober.
func (f *Fallback) down() {
	f.mu.Lock()
	if f.closed || f.probing {
		f.mu.Unlock()
		return
	}
	f.probing = true
	f.up.Store(false)
	f.wg.Add(1)
	f.mu.Unlock()
	if f.onChange != nil {
		f.onChange(false)
	}
	go f.probe()
}

// probe pings the primary every interval until it answers, then closes
// the breaker.
func (f *Fallback) probe() {
	defer f.wg.Done()
	t := time.NewTicker(f.interval)
	defer t.Stop()
	for {
		select {
		case <-f.stop:
			return
		case <-t.C:
		}
		c, cancel := context.WithTimeout(context.Background(), f.timeout)
		start := time.Now()
		err := f.pinger(c)
		cancel()
		if f.observe != nil {
			f.observe("ping", time.Since(start), err)
		}
		if err != nil {
			continue
		}
		f.mu.Lock()
		f.up.Store(true)
		f.mu.Unlock()
		if f.onChange != nil {
			f.onChange(true)
		}
		f.mu.Lock()
		f.probing = false // only now: a failure during onChange(true) waits for it
		f.mu.Unlock()
		return
	}
}

// Hit implements Store: a ban made locally during an outage holds first.
func (f *Fallback) Hit(ctx context.Context, key string, n int64, r limits.Rate) (limits.Hit, error) {
	if h, _ := f.local.Hit(ctx, key, 0, limits.Rate{}); !h.BannedUntil.IsZero() {
		return h, nil
	}
	var h limits.Hit
	fb, err := f.call(ctx, "hit", func(c context.Context) (err error) {
		h, err = f.primary.Hit(c, key, n, r)
		return err
	})
	if err != nil || !fb {
		return h, err
	}
	return f.local.Hit(ctx, key, n, r)
}

// Ban implements Store. A ban the primary could not take is made locally
// under "local" (it holds on this host until it ends) and the error, which
// wraps ErrSharedUnreachable, says so; under "tempfail" nothing is banned.
func (f *Fallback) Ban(ctx context.Context, key string, d time.Duration, reason string) (Ban, error) {
	var b Ban
	err := f.adminCall(ctx, "ban", func(c context.Context) (err error) {
		b, err = f.primary.Ban(c, key, d, reason)
		return err
	})
	if err == nil || !errors.Is(err, ErrSharedUnreachable) {
		return b, err
	}
	b, lerr := f.local.Ban(ctx, key, d, reason)
	if lerr != nil {
		return b, lerr
	}
	return b, fmt.Errorf("banned on this host only: %w", err)
}

// Unban implements Store: it lifts the key's ban both locally and on the
// primary; it reports whether either held one. When the primary could not
// be reached the error says so (the shared ban, if any, is still in force
// and comes back here when the primary does).
func (f *Fallback) Unban(ctx context.Context, key string) (bool, error) {
	was, _ := f.local.Unban(ctx, key)
	var shared bool
	err := f.adminCall(ctx, "unban", func(c context.Context) (err error) {
		shared, err = f.primary.Unban(c, key)
		return err
	})
	if err != nil && errors.Is(err, ErrSharedUnreachable) {
		err = fmt.Errorf("lifted on this host only: %w", err)
	}
	return was || shared, err
}

// Bans implements Store: the primary's bans and the local ones, one per
// key (the one ending last). When the primary could not be reached it
// returns the local bans with an error wrapping ErrSharedUnreachable (or
// ErrUnavailable under "tempfail" and no bans): never the local list alone
// as if it were the fleet's.
func (f *Fallback) Bans(ctx context.Context) ([]Ban, error) {
	var shared []Ban
	err := f.adminCall(ctx, "bans", func(c context.Context) (err error) {
		shared, err = f.primary.Bans(c)
		return err
	})
	if err != nil && !errors.Is(err, ErrSharedUnreachable) {
		return nil, err
	}
	if err != nil {
		err = fmt.Errorf("only this host's bans could be listed: %w", err)
	}
	local, _ := f.local.Bans(ctx)
	if len(local) == 0 {
		return shared, err
	}
	byKey := make(map[string]int, len(shared))
	for i, b := range shared {
		byKey[b.Key] = i
	}
	for _, b := range local {
		if i, ok := byKey[b.Key]; !ok {
			shared = append(shared, b)
		} else if b.Until.After(shared[i].Until) {
			shared[i] = b
		}
	}
	sortBans(shared)
	return shared, err
}

// Stats implements Store: the primary's stats while it is up, else the
// local store's.
func (f *Fallback) Stats(ctx context.Context) (Stats, error) {
	var st Stats
	fb, err := f.call(ctx, "stats", func(c context.Context) (err error) {
		st, err = f.primary.Stats(c)
		return err
	})
	if err != nil || !fb {
		return st, err
	}
	return f.local.Stats(ctx)
}

// Close stops the prober and closes both stores.
func (f *Fallback) Close() error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	f.closed = true
	close(f.stop)
	f.mu.Unlock()
	f.wg.Wait()
	err := f.primary.Close()
	if lerr := f.local.Close(); err == nil {
		err = lerr
	}
	return err
}
