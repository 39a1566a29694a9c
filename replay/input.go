package replay

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Input is one log to replay: a file (plain or gzip, told by its first
// bytes) or standard input ("-").
type Input struct {
	Name string
	r    *bufio.Reader
	c    []io.Closer
	clk  clock
	peek []string // lines read to find the first timestamp
	at   time.Time
}

// maxLine bounds one line; a longer one is skipped and counted as not a
// syslog line.
const maxLine = 64 << 10

// OpenInputs opens every log, in the order of their first timestamps so
// that rotated files (mail.log.2.gz, mail.log.1, mail.log) may be given
// in any order. year, when not 0, is the year of classic syslog
// timestamps; otherwise it is the year of each file's modification time.
func OpenInputs(names []string, stdin io.Reader, year int, loc *time.Location) ([]*Input, error) {
	var ins []*Input
	closeAll := func() {
		for _, in := range ins {
			in.Close()
		}
	}
	for _, name := range names {
		in := &Input{Name: name, clk: clock{Year: year, Loc: loc}}
		var src io.Reader
		if name == "-" {
			src, in.clk.Ref = stdin, time.Now()
		} else {
			f, err := os.Open(name)
			if err != nil {
				closeAll()
				return nil, err
			}
			in.c = append(in.c, f)
			if fi, err := f.Stat(); err == nil {
				in.clk.Ref = fi.ModTime()
			}
			src = f
		}
		br := bufio.NewReaderSize(src, 256<<10)
		if magic, _ := br.Peek(2); bytes.Equal(magic, []byte{0x1f, 0x8b}) {
			zr, err := gzip.NewReader(br)
			if err != nil {
				in.Close()
				closeAll()
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			in.c = append(in.c, zr)
			br = bufio.NewReaderSize(zr, 256<<10)
		}
		in.r = br
		ins = append(ins, in)
		// the first timestamp, for the order of the files
		probe := in.clk
		for len(in.peek) < 1000 {
			line, err := readLine(in.r)
			if err != nil {
				if !errors.Is(err, io.EOF) {
					closeAll()
					return nil, fmt.Errorf("%s: %w", name, err)
				}
				break
			}
			in.peek = append(in.peek, line)
			if l, ok := probe.parseLine(line); ok {
				in.at = l.Time
				break
			}
		}
	}
	sort.SliceStable(ins, func(i, j int) bool {
		a, b := ins[i], ins[j]
		if !a.at.IsZero() && !b.at.IsZero() && !a.at.Equal(b.at) {
			return a.at.Before(b.at)
		}
		return rotation(a.Name) > rotation(b.Name) // mail.log.2.gz before mail.log.1 before mail.log
	})
	return ins, nil
}

// readLine reads one line without its newline; a line over maxLine is
// returned cut (and will not parse as a whole line).
func readLine(r *bufio.Reader) (string, error) {
	var buf []byte
	for {
		frag, err := r.ReadSlice('\n')
		if len(buf)+len(frag) <= maxLine {
			buf = append(buf, frag...)
		} else if len(buf) < maxLine {
			buf = append(buf, frag[:maxLine-len(buf)]...)
			buf[0] = 0 // too long: not a line replay reads
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err != nil && (len(buf) == 0 || !errors.Is(err, io.EOF)) {
			return "", err
		}
		return string(bytes.TrimRight(buf, "\r\n")), nil
	}
}

// Close closes the input's files.
func (in *Input) Close() {
	for i := len(in.c) - 1; i >= 0; i-- {
		in.c[i].Close()
	}
	in.c = nil
}

// Read replays every line of in.
func (r *Replayer) Read(in *Input) error {
	feed := func(s string) {
		if l, ok := in.clk.parseLine(s); ok {
			r.Line(l)
		} else if s != "" {
			r.rep.Unparsed++
			r.rep.Lines++
		}
	}
	for _, s := range in.peek {
		feed(s)
	}
	in.peek = nil
	for {
		s, err := readLine(in.r)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("%s: %w", in.Name, err)
		}
		feed(s)
	}
}

// rotation is the number logrotate appended to a file's name (mail.log.2.gz:
// 2), 0 for none: the higher, the older.
func rotation(name string) int {
	name = strings.TrimSuffix(name, ".gz")
	i := strings.LastIndexByte(name, '.')
	if i < 0 {
		return 0
	}
	n, err := strconv.Atoi(name[i+1:])
	if err != nil || n < 0 {
		return 0
	}
	return n
}
