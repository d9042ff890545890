package e2eimages

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"io/fs"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
)

// elfObject makes a minimal little-endian ELF64 object with an optional
// interpreter (PT_INTERP) and a dynamic section holding DT_NEEDED entries
// and an optional DT_RUNPATH: just what debug/elf reads of them.
func elfObject(t *testing.T, interp string, runpath string, needed ...string) []byte {
	t.Helper()
	le := binary.LittleEndian
	// .dynstr: a leading NUL, then each string.
	dynstr := []byte{0}
	addStr := func(s string) uint64 {
		off := uint64(len(dynstr))
		dynstr = append(append(dynstr, s...), 0)
		return off
	}
	var dynamic []byte
	addDyn := func(tag elf.DynTag, val uint64) {
		dynamic = le.AppendUint64(dynamic, uint64(tag))
		dynamic = le.AppendUint64(dynamic, val)
	}
	for _, n := range needed {
		addDyn(elf.DT_NEEDED, addStr(n))
	}
	if runpath != "" {
		addDyn(elf.DT_RUNPATH, addStr(runpath))
	}
	addDyn(elf.DT_NULL, 0)
	shstrtab := []byte("\x00.interp\x00.dynstr\x00.dynamic\x00.shstrtab\x00")
	name := func(s string) uint32 { return uint32(bytes.Index(shstrtab, []byte(s+"\x00"))) }

	const ehsize, phentsize, shentsize = 64, 56, 64
	phnum := 0
	if interp != "" {
		phnum = 1
	}
	interpData := []byte(interp + "\x00")
	off := uint64(ehsize + phnum*phentsize)
	interpOff := off
	if interp != "" {
		off += uint64(len(interpData))
	}
	dynstrOff := off
	off += uint64(len(dynstr))
	dynamicOff := off
	off += uint64(len(dynamic))
	shstrOff := off
	off += uint64(len(shstrtab))
	shoff := off

	var b []byte
	b = append(b, 0x7f, 'E', 'L', 'F', byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT))
	b = append(b, make([]byte, 16-len(b))...)
	b = le.AppendUint16(b, uint16(elf.ET_DYN))
	b = le.AppendUint16(b, uint16(elf.EM_X86_64))
	b = le.AppendUint32(b, uint32(elf.EV_CURRENT))
	b = le.AppendUint64(b, 0) // entry
	b = le.AppendUint64(b, ehsize)
	b = le.AppendUint64(b, shoff)
	b = le.AppendUint32(b, 0) // flags
	b = le.AppendUint16(b, ehsize)
	b = le.AppendUint16(b, phentsize)
	b = le.AppendUint16(b, uint16(phnum))
	b = le.AppendUint16(b, shentsize)
	b = le.AppendUint16(b, 5) // sections: null, .interp, .dynstr, .dynamic, .shstrtab
	b = le.AppendUint16(b, 4) // .shstrtab's index
	if interp != "" {
		b = le.AppendUint32(b, uint32(elf.PT_INTERP))
		b = le.AppendUint32(b, uint32(elf.PF_R))
		b = le.AppendUint64(b, interpOff)
		b = le.AppendUint64(b, 0) // vaddr
		b = le.AppendUint64(b, 0) // paddr
		b = le.AppendUint64(b, uint64(len(interpData)))
		b = le.AppendUint64(b, uint64(len(interpData)))
		b = le.AppendUint64(b, 1)
		b = append(b, interpData...)
	}
	b = append(b, dynstr...)
	b = append(b, dynamic...)
	b = append(b, shstrtab...)
	section := func(nameOff uint32, typ elf.SectionType, off, size uint64, link uint32, entsize uint64) {
		b = le.AppendUint32(b, nameOff)
		b = le.AppendUint32(b, uint32(typ))
		b = le.AppendUint64(b, 0) // flags
		b = le.AppendUint64(b, 0) // addr
		b = le.AppendUint64(b, off)
		b = le.AppendUint64(b, size)
		b = le.AppendUint32(b, link)
		b = le.AppendUint32(b, 0) // info
		b = le.AppendUint64(b, 1) // align
		b = le.AppendUint64(b, entsize)
	}
	section(0, elf.SHT_NULL, 0, 0, 0, 0)
	interpSize := uint64(0)
	if interp != "" {
		interpSize = uint64(len(interpData))
	}
	section(name(".interp"), elf.SHT_PROGBITS, interpOff, interpSize, 0, 0)
	section(name(".dynstr"), elf.SHT_STRTAB, dynstrOff, uint64(len(dynstr)), 0, 0)
	section(name(".dynamic"), elf.SHT_DYNAMIC, dynamicOff, uint64(len(dynamic)), 2, 16)
	section(name(".shstrtab"), elf.SHT_STRTAB, shstrOff, uint64(len(shstrtab)), 0, 0)
	return b
}

func file(data []byte) *fstest.MapFile { return &fstest.MapFile{Data: data, Mode: 0o755} }

func symlink(target string) *fstest.MapFile {
	return &fstest.MapFile{Data: []byte(target), Mode: fs.ModeSymlink | 0o777}
}

// debianLike is a root laid out as Debian's unpacked packages are: the
// loader reached through /lib64, versioned libraries behind soname links,
// a private library found through $ORIGIN, and files nothing needs.
func debianLike(t *testing.T) fstest.MapFS {
	const ld = "/lib64/ld-linux-x86-64.so.2"
	return fstest.MapFS{
		"usr/bin/prog":                              file(elfObject(t, ld, "$ORIGIN/../lib/prog", "libfoo.so.1", "libpriv.so", "libc.so.6")),
		"usr/bin/script":                            file([]byte("#!/bin/sh\necho hi\n")),
		"usr/bin/other":                             file(elfObject(t, ld, "", "libunused.so.1")),
		"lib64/ld-linux-x86-64.so.2":                symlink("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
		"lib/x86_64-linux-gnu/ld-linux-x86-64.so.2": file(elfObject(t, "", "")),
		"lib/x86_64-linux-gnu/libc.so.6":            file(elfObject(t, "", "", "ld-linux-x86-64.so.2")),
		"usr/lib/x86_64-linux-gnu/libfoo.so.1":      symlink("libfoo.so.1.2.3"),
		"usr/lib/x86_64-linux-gnu/libfoo.so.1.2.3":  file(elfObject(t, "", "", "libbar.so.2", "libc.so.6")),
		"usr/lib/x86_64-linux-gnu/libbar.so.2":      symlink("../../../lib/x86_64-linux-gnu/libbar.so.2.0"),
		"lib/x86_64-linux-gnu/libbar.so.2.0":        file(elfObject(t, "", "")),
		"usr/lib/prog/libpriv.so":                   file(elfObject(t, "", "")),
		"usr/lib/x86_64-linux-gnu/libunused.so.1":   file(elfObject(t, "", "")),
	}
}

func TestClosureFollowsNeededInterpreterAndLinks(t *testing.T) {
	r := Resolver{Root: debianLike(t), Dirs: LibDirs("x86_64-linux-gnu")}
	got, err := r.Closure("usr/bin/prog", "usr/bin/script")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
		"lib/x86_64-linux-gnu/libbar.so.2.0",
		"lib/x86_64-linux-gnu/libc.so.6",
		"lib64/ld-linux-x86-64.so.2",
		"usr/bin/prog",
		"usr/bin/script",
		"usr/lib/prog/libpriv.so",
		"usr/lib/x86_64-linux-gnu/libbar.so.2",
		"usr/lib/x86_64-linux-gnu/libfoo.so.1",
		"usr/lib/x86_64-linux-gnu/libfoo.so.1.2.3",
	}
	if !slices.Equal(got, want) {
		t.Errorf("closure:\n got %q\nwant %q", got, want)
	}
}

func TestClosureRunpathIsPerObject(t *testing.T) {
	// libfoo names libpriv.so too, but only prog's RUNPATH leads to it:
	// each object's RUNPATH serves its own DT_NEEDED entries alone.
	root := debianLike(t)
	root["usr/lib/x86_64-linux-gnu/libfoo.so.1.2.3"] = file(elfObject(t, "", "", "libpriv.so"))
	r := Resolver{Root: root, Dirs: LibDirs("x86_64-linux-gnu")}
	_, err := r.Closure("usr/bin/prog")
	if err == nil || !strings.Contains(err.Error(), "libfoo.so.1.2.3 needs libpriv.so") {
		t.Fatalf("Closure = %v, want libfoo's libpriv.so not found", err)
	}
}

func TestClosureNamesWhatIsMissing(t *testing.T) {
	root := debianLike(t)
	delete(root, "lib/x86_64-linux-gnu/libbar.so.2.0") // the soname link now dangles
	r := Resolver{Root: root, Dirs: LibDirs("x86_64-linux-gnu")}
	_, err := r.Closure("usr/bin/prog")
	if err == nil || !strings.Contains(err.Error(), "needs libbar.so.2") {
		t.Fatalf("Closure = %v, want an error naming libbar.so.2", err)
	}
}

func TestResolveStaysInsideTheRoot(t *testing.T) {
	root := fstest.MapFS{
		"a/up":       symlink("../../../../etc/target"),
		"etc/target": file([]byte("x")),
		"loop1":      symlink("loop2"),
		"loop2":      symlink("/loop1"),
		"dir/in":     symlink("/a"), // a link to a directory, used mid-path
	}
	r := Resolver{Root: root}
	final, links, err := r.resolve("a/up")
	if err != nil || final != "etc/target" || !slices.Equal(links, []string{"a/up"}) {
		t.Errorf("resolve a/up = %q %q %v, want etc/target through a/up", final, links, err)
	}
	if final, _, err := r.resolve("/dir/in/up"); err != nil || final != "etc/target" {
		t.Errorf("resolve /dir/in/up = %q %v, want etc/target", final, err)
	}
	if _, _, err := r.resolve("loop1"); err == nil || !strings.Contains(err.Error(), "too many levels") {
		t.Errorf("resolve loop1 = %v, want a loop error", err)
	}
}

func TestTriplet(t *testing.T) {
	if got, err := Triplet("arm64"); err != nil || got != "aarch64-linux-gnu" {
		t.Errorf("Triplet(arm64) = %q, %v", got, err)
	}
	if _, err := Triplet("mips"); err == nil {
		t.Error("Triplet(mips) has no error")
	}
}
