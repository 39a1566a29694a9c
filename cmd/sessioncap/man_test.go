package main

import (
	"flag"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const manPage = "../../packaging/man/sessioncap.8"

// TestManPageListsEveryCommand: sessioncap(8) documents every command the
// CLI dispatches (commands) as a .TP entry under COMMANDS and every flag of
// every command's flag set as \fB\-name\fR, and no command or flag the CLI
// rejects.
func TestManPageListsEveryCommand(t *testing.T) {
	data, err := os.ReadFile(manPage)
	if err != nil {
		t.Fatal(err)
	}
	page := string(data)
	var documented []string
	inCommands, afterTP := false, false
	entry := regexp.MustCompile(`^\\fB([a-z\\-]+)\\fR`)
	for _, line := range strings.Split(page, "\n") {
		switch {
		case strings.HasPrefix(line, ".SH "):
			inCommands = line == ".SH COMMANDS"
		case inCommands && line == ".TP":
			afterTP = true
			continue
		case inCommands && afterTP:
			if m := entry.FindStringSubmatch(line); m != nil && !strings.HasPrefix(m[1], `\-`) {
				documented = append(documented, strings.ReplaceAll(m[1], `\-`, "-"))
			}
		}
		afterTP = false
	}
	var problems []string
	for _, c := range commands {
		if !slices.Contains(documented, c) {
			problems = append(problems, fmt.Sprintf("command %s is missing: add a .TP entry \"\\fB%s\\fR\" under .SH COMMANDS", c, strings.ReplaceAll(c, "-", `\-`)))
		}
	}
	for _, c := range documented {
		if !slices.Contains(commands, c) {
			problems = append(problems, fmt.Sprintf("command %s is documented under COMMANDS but the CLI has no such command", c))
		}
	}

	// Every flag set of the CLI, by the command that parses it.
	sets := map[string]*flag.FlagSet{}
	sets["sessioncap"], _ = daemonFlags()
	sets["check-config"], _ = checkConfigFlags()
	sets["replay"], _ = replayFlags()
	for _, c := range []string{"bans", "ban", "unban", "reload", "status"} {
		sets[c], _ = adminFlags(c)
	}
	known := map[string]bool{"h": true} // -h: the usage, from the flag package
	for cmd, fs := range sets {
		fs.VisitAll(func(f *flag.Flag) {
			known[f.Name] = true
			if !strings.Contains(page, `\fB\-`+strings.ReplaceAll(f.Name, "-", `\-`)+`\fR`) {
				problems = append(problems, fmt.Sprintf("flag -%s of %s is missing: write it \\fB\\-%s\\fR", f.Name, cmd, strings.ReplaceAll(f.Name, "-", `\-`)))
			}
		})
	}
	for _, m := range regexp.MustCompile(`\\fB\\-([a-z\\-]+)\\fR`).FindAllStringSubmatch(page, -1) {
		if name := strings.ReplaceAll(m[1], `\-`, "-"); !known[name] {
			problems = append(problems, fmt.Sprintf("flag -%s is documented but no command has it", name))
		}
	}
	for _, w := range []string{"SIGHUP", "SIGTERM", "SIGINT", ".SH EXIT STATUS", ".B 78", "STATE_DIRECTORY", ".SH FILES"} {
		if !strings.Contains(page, w) {
			problems = append(problems, fmt.Sprintf("%q is missing", w))
		}
	}
	if len(problems) > 0 {
		t.Errorf("%s does not match the CLI:\n  %s", manPage, strings.Join(problems, "\n  "))
	}
}
