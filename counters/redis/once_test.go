package redisstore_test

import (
	"bytes"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	redisstore "github.com/sessioncap/sessioncap/counters/redis"
	"github.com/sessioncap/sessioncap/internal/redistest"
	"github.com/sessioncap/sessioncap/limits"
)

// The faults a faultProxy injects into the reply of a script.
const (
	faultNone    int32 = iota
	faultEOF           // the reply is dropped and the client's connection closed
	faultTimeout       // the reply is held past the client's read timeout, then dropped
)

// faultProxy forwards TCP connections to one Redis node. Armed with a
// fault, it lets the next request that runs a script (EVALSHA or EVAL)
// through to Redis, which runs it, and loses its reply: the shape of a
// connection that breaks after the command was sent.
type faultProxy struct {
	ln     net.Listener
	target string
	hold   time.Duration
	armed  atomic.Int32 // a fault to inject once
	fired  atomic.Int32 // faults injected
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn
}

func startFaultProxy(t *testing.T, target string, hold time.Duration) *faultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{ln: ln, target: target, hold: hold}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *faultProxy) port() int { return p.ln.Addr().(*net.TCPAddr).Port }

func (p *faultProxy) addr() string { return "127.0.0.1:" + strconv.Itoa(p.port()) }

func (p *faultProxy) track(c net.Conn) {
	p.mu.Lock()
	p.conns = append(p.conns, c)
	p.mu.Unlock()
}

func (p *faultProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *faultProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.track(c)
		p.track(s)
		var lose atomic.Int32 // the fault this connection's next reply gets
		p.wg.Add(2)
		go func() { // client → Redis
			defer p.wg.Done()
			defer s.Close()
			buf := make([]byte, 64<<10)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					chunk := buf[:n]
					if bytes.Contains(chunk, []byte("\r\nEVALSHA\r\n")) || bytes.Contains(chunk, []byte("\r\nEVAL\r\n")) ||
						bytes.Contains(chunk, []byte("\r\nevalsha\r\n")) || bytes.Contains(chunk, []byte("\r\neval\r\n")) {
						if f := p.armed.Swap(faultNone); f != faultNone {
							lose.Store(f)
						}
					}
					if _, err := s.Write(chunk); err != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
		go func() { // Redis → client
			defer p.wg.Done()
			defer c.Close()
			buf := make([]byte, 64<<10)
			for {
				n, err := s.Read(buf)
				if n > 0 {
					switch lose.Swap(faultNone) {
					case faultEOF:
						p.fired.Add(1)
						return
					case faultTimeout:
						p.fired.Add(1)
						time.Sleep(p.hold)
						return
					}
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
				if err != nil {
					if err != io.EOF {
						return
					}
					return
				}
			}
		}()
	}
}

// TestClusterAppliesALostHitOnce: on a real Cluster whose nodes announce
// proxies in front of them, a hit whose reply is lost after Redis ran its
// script (the connection closed, or the reply later than the client's read
// timeout) fails, and was counted once: the next hit counts 3, not 4.
// go-redis's cluster client with its default MaxRedirects sends the script
// again after EOF or a timeout whatever MaxRetries says (see redis.go);
// with those defaults this test counts the lost hit twice.
func TestClusterAppliesALostHitOnce(t *testing.T) {
	const readTimeout = 300 * time.Millisecond
	for _, c := range []struct {
		name  string
		fault int32
	}{{"eof", faultEOF}, {"timeout", faultTimeout}} {
		t.Run(c.name, func(t *testing.T) {
			var proxies []*faultProxy
			redistest.ClusterVia(t, func(_ int, addr string) int {
				p := startFaultProxy(t, addr, 3*readTimeout)
				proxies = append(proxies, p)
				return p.port()
			})
			s := open(t, redisstore.Options{Addresses: []string{proxies[0].addr()}, Cluster: true, KeyPrefix: newPrefix(),
				Host: "mx1", ReadTimeout: readTimeout})
			r := limits.Rate{Max: 1000, Window: time.Hour, Ban: time.Minute, Reason: "frequency"}
			const key = "freq:192.0.2.1/32"
			// the first hit loads the script and the slot map
			if h, err := s.Hit(ctx, key, 1, r); err != nil || h.Count != 1 {
				t.Fatalf("first hit: %+v, %v; want count 1", h, err)
			}
			for _, p := range proxies {
				p.armed.Store(c.fault)
			}
			_, err := s.Hit(ctx, key, 1, r)
			fired := 0
			for _, p := range proxies {
				fired += int(p.fired.Load())
				p.armed.Store(faultNone)
			}
			if fired != 1 {
				t.Fatalf("%d faults injected, want 1 (the hit's reply)", fired)
			}
			if err == nil {
				t.Error("the hit whose reply was lost reported no error")
			}
			h, err := s.Hit(ctx, key, 1, r)
			if err != nil {
				t.Fatalf("the hit after: %v", err)
			}
			if h.Count != 3 {
				t.Errorf("the hit after the lost one counts %d, want 3: the lost hit was applied %d times", h.Count, h.Count-2)
			}
		})
	}
}

// TestClusterFollowsAMovedSlotOnTheNextCall: with one attempt per command,
// a MOVED reply (the slot now served by another node: a reshard or a
// failover) is not followed within the call: the call fails and was not
// run. go-redis reloads the slot map in the background on that reply, and
// once it has, calls go to the new owner. Every hit that succeeded was
// counted once; none that failed was.
func TestClusterFollowsAMovedSlotOnTheNextCall(t *testing.T) {
	var proxies []*faultProxy
	nodes := redistest.ClusterVia(t, func(_ int, addr string) int {
		p := startFaultProxy(t, addr, time.Second)
		proxies = append(proxies, p)
		return p.port()
	})
	prefix := newPrefix()
	s := open(t, redisstore.Options{Addresses: []string{proxies[0].addr()}, Cluster: true, KeyPrefix: prefix, Host: "mx1"})
	r := limits.Rate{Max: 1000, Window: time.Hour, Ban: time.Minute, Reason: "frequency"}
	const key = "freq:198.51.100.7/32"
	if _, err := s.Hit(ctx, key, 1, r); err != nil {
		t.Fatal(err)
	}
	// the slot of the key, its owner, and another node
	owner, slot := -1, ""
	for i, n := range nodes {
		keys, err := redistest.Do(n.Addr(), "KEYS", prefix+"*")
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range strings.Fields(keys) {
			sl, err := redistest.Do(n.Addr(), "CLUSTER", "KEYSLOT", k)
			if err != nil || slot != "" && sl != slot {
				t.Fatalf("key %s: slot %q (%v), another key is in %q", k, sl, err, slot)
			}
			slot, owner = sl, i
			// empty the slot so that it can be given to another node
			if _, err := redistest.Do(n.Addr(), "DEL", k); err != nil {
				t.Fatal(err)
			}
		}
	}
	if owner < 0 {
		t.Fatal("the hit wrote no key")
	}
	to := (owner + 1) % len(nodes)
	id, err := redistest.Do(nodes[to].Addr(), "CLUSTER", "MYID")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{to, owner, (owner + 2) % len(nodes)} {
		if out, err := redistest.Do(nodes[n].Addr(), "CLUSTER", "SETSLOT", slot, "NODE", id); err != nil {
			t.Fatalf("CLUSTER SETSLOT %s NODE %s on node %d: %s %v", slot, id, n, out, err)
		}
	}
	// The client still sends the slot to its old owner, which answers
	// MOVED; poll (bounded) until a hit succeeds on the new owner.
	var ok, failed int
	var count int64
	start := time.Now()
	for deadline := start.Add(10 * time.Second); ok < 2; time.Sleep(10 * time.Millisecond) {
		h, err := s.Hit(ctx, key, 1, r)
		if err != nil {
			if !strings.Contains(err.Error(), "MOVED") {
				t.Fatalf("hit after the slot moved: %v, want MOVED until the client reloads", err)
			}
			if failed++; time.Now().After(deadline) {
				t.Fatalf("%d hits failed over %v after the slot moved; the client never followed", failed, time.Since(start))
			}
			continue
		}
		ok++
		count = h.Count
	}
	if count != int64(ok) {
		t.Errorf("the new owner counts %d after %d successful hits (%d failed): a failed call was applied, or a hit twice", count, ok, failed)
	}
	t.Logf("after the slot moved: %d call(s) failed (MOVED) over %v, then the client followed", failed, time.Since(start).Round(time.Millisecond))
}
