package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clockTick is USER_HZ, the unit of the CPU times in /proc/PID/stat: 100 on
// every Linux architecture Go supports.
const clockTick = 100

// procStat is what the benchmark reads of /proc/PID/stat.
type procStat struct {
	pid, ppid int
	cpu       time.Duration // utime+stime+cutime+cstime: this process and its reaped children
}

func readProcStat(pid int) (procStat, bool) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return procStat{}, false
	}
	// The command name is in parentheses and may hold anything: the
	// fields that follow start after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 15 { // state ppid … utime(12) stime cutime cstime(15)
		return procStat{}, false
	}
	st := procStat{pid: pid}
	st.ppid, _ = strconv.Atoi(f[1])
	var ticks int64
	for _, s := range f[11:15] {
		n, _ := strconv.ParseInt(s, 10, 64)
		ticks += n
	}
	st.cpu = time.Duration(ticks) * time.Second / clockTick
	return st, true
}

// treeCPU is the CPU time spent by the process tree under root (root
// included): every live process's own time plus that of the children it
// reaped. Children of the tree that exited and were reaped are counted in
// their parent; none is counted twice.
func treeCPU(root int) time.Duration {
	if root <= 0 {
		return 0
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	children := map[int][]procStat{}
	var top procStat
	found := false
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, ok := readProcStat(pid)
		if !ok {
			continue
		}
		if pid == root {
			top, found = st, true
		}
		children[st.ppid] = append(children[st.ppid], st)
	}
	if !found {
		return 0
	}
	total := time.Duration(0)
	queue := []procStat{top}
	for len(queue) > 0 {
		st := queue[0]
		queue = queue[1:]
		total += st.cpu
		queue = append(queue, children[st.pid]...)
	}
	return total
}

// steal reads the machine's total and stolen CPU time from /proc/stat, in
// ticks; a rising share of steal says the hypervisor disturbed a run.
func steal() (total, stolen int64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	for i, s := range f[1:] {
		n, _ := strconv.ParseInt(s, 10, 64)
		if i < 8 { // user … steal; guest times are already in user
			total += n
		}
		if i == 7 {
			stolen = n
		}
	}
	return total, stolen
}

// readPID reads a pid file (Postfix pads it with spaces).
func readPID(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}
