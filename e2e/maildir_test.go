package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"net/textproto"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

var msgSeq atomic.Int64

// newMessage builds a message of about size bytes (at least the headers)
// with a Message-ID unique to this run, and returns it with that ID.
func newMessage(tag string, size int) ([]byte, string) {
	id := fmt.Sprintf("<%s.%d.%d@e2e.sessioncap.test>", tag, os.Getpid(), msgSeq.Add(1))
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: <sender@client.test>\r\n")
	fmt.Fprintf(&b, "To: <rcpt@%s>\r\n", sinkDomain)
	fmt.Fprintf(&b, "Subject: sessioncap e2e %s\r\n", tag)
	fmt.Fprintf(&b, "Date: %s\r\n", time.Now().Format(time.RFC1123Z))
	fmt.Fprintf(&b, "Message-ID: %s\r\n", id)
	b.WriteString("\r\n")
	line := strings.Repeat("0123456789abcdefghijklmnopqrstuvwxyz", 2)[:70] + "\r\n"
	for b.Len()+len(line) <= size {
		b.WriteString(line)
	}
	for b.Len() < size-2 {
		b.WriteByte('x')
	}
	if !bytes.HasSuffix(b.Bytes(), []byte("\r\n")) {
		b.WriteString("\r\n")
	}
	return b.Bytes(), id
}

// maildirMessageIDs counts the Message-IDs of the messages in a Maildir's
// new/ and cur/.
func maildirMessageIDs(t testing.TB, dir string) map[string]int {
	t.Helper()
	ids := map[string]int{}
	for _, sub := range []string{"new", "cur"} {
		ents, err := os.ReadDir(filepath.Join(dir, sub))
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			id, err := messageID(filepath.Join(dir, sub, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			ids[id]++
		}
	}
	return ids
}

func messageID(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h, err := textproto.NewReader(bufio.NewReader(f)).ReadMIMEHeader()
	if err != nil && len(h) == 0 {
		return "", fmt.Errorf("%s: %v", path, err)
	}
	id := h.Get("Message-Id")
	if id == "" {
		return "", fmt.Errorf("%s: no Message-ID", path)
	}
	return id, nil
}

// assertDelivered waits until the MTA's queue is empty and, at that moment,
// the Maildir holds exactly want[id] copies of every id in want and no
// message outside want. Copies are checked for "exactly", not "at least": a
// duplicate is a failure. An empty queue means the MTA has nothing left to
// deliver (the client saw every reply before this is called), so the set
// compared is final: a late duplicate or an unexpected delivery cannot come
// after it, and a message stuck in the queue (deferred, bounce pending) keeps
// the condition false until the timeout.
func assertDelivered(t testing.TB, m mta, want map[string]int, timeout time.Duration) {
	t.Helper()
	err := waitFor(timeout, func() error {
		if empty, left := m.queueEmpty(); !empty {
			got := maildirMessageIDs(t, m.mailDir())
			return fmt.Errorf("%w: queue not empty (Maildir: %s):\n%s", errNotYet, deliveryDiff(want, got), left)
		}
		got := maildirMessageIDs(t, m.mailDir())
		if diff := deliveryDiff(want, got); diff != "" {
			return fmt.Errorf("queue empty, but the Maildir differs: %s", diff)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%s Maildir: %v", m.mtaName(), err)
	}
}

func deliveryDiff(want, got map[string]int) string {
	var probs []string
	for id, n := range want {
		if got[id] != n {
			probs = append(probs, fmt.Sprintf("%s: %d copies, want %d", id, got[id], n))
		}
	}
	for id, n := range got {
		if _, ok := want[id]; !ok {
			probs = append(probs, fmt.Sprintf("%s: %d unexpected copies", id, n))
		}
	}
	sort.Strings(probs)
	if len(probs) > 10 {
		probs = append(probs[:10], fmt.Sprintf("… and %d more", len(probs)-10))
	}
	return strings.Join(probs, "; ")
}
