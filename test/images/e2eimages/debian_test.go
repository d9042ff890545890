package e2eimages

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestSuiteHasItsOwnSourcesAndLists(t *testing.T) {
	cache := t.TempDir()
	if opts, err := (Debian{Cache: cache}).aptOptions(); err != nil || opts != nil {
		t.Fatalf("no suite: options %q, %v; want none", opts, err)
	}
	opts, err := Debian{Cache: cache, Suite: "trixie"}.aptOptions()
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(opts, " ")
	dir := filepath.Join(cache, "apt-trixie")
	for _, want := range []string{"Dir::Etc::SourceList=" + dir + "/sources.list", "Dir::Etc::SourceParts=/dev/null", "Dir::State::Lists=" + dir + "/lists"} {
		if !strings.Contains(joined, want) {
			t.Errorf("options %q lack %s", joined, want)
		}
	}
	list, err := os.ReadFile(filepath.Join(dir, "sources.list"))
	if err != nil || !strings.Contains(string(list), archiveURL+" trixie main") {
		t.Errorf("sources.list = %q, %v; want the trixie suite of %s", list, err, archiveURL)
	}
}

func TestParseDependsKeepsRealPackagesOnce(t *testing.T) {
	out := `curl
  Depends: libc6
  Depends: libcurl4
libcurl4
  Depends: libc6
  Depends: <libssl-virtual>
    libssl3
<libssl-virtual>
libc6
  PreDepends: libgcc-s1
libgcc-s1:i386
libssl3
libc6
`
	got := parseDepends(out)
	want := []string{"curl", "libc6", "libcurl4", "libssl3"}
	if !slices.Equal(got, want) {
		t.Errorf("parseDepends = %q, want %q", got, want)
	}
}

func TestParseShowReadsEachStanza(t *testing.T) {
	out := `Package: netbase
Version: 6.4
Architecture: all
Description: Basic TCP/IP networking system
 multi-line description: with a colon

Package: bind9-dnsutils
Source: bind9
Version: 1:9.18.49-1~deb12u3
Architecture: amd64

`
	got, err := parseShow(out)
	if err != nil {
		t.Fatal(err)
	}
	want := []debPackage{
		{"bind9-dnsutils", "1:9.18.49-1~deb12u3", "amd64"},
		{"netbase", "6.4", "all"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("parseShow = %+v, want %+v", got, want)
	}
	if _, err := parseShow("Package: x\nVersion: 1\n"); err == nil {
		t.Error("a stanza without Architecture is accepted")
	}
}

func TestDebFileNameEscapesTheEpoch(t *testing.T) {
	// As apt-get download names it, so a cached .deb is found again.
	p := debPackage{"bind9-dnsutils", "1:9.18.49-1~deb12u3", "amd64"}
	if got, want := p.file(), "bind9-dnsutils_1%3a9.18.49-1~deb12u3_amd64.deb"; got != want {
		t.Errorf("file() = %q, want %q", got, want)
	}
}
