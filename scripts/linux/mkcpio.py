#!/usr/bin/env python3
"""Write an uncompressed newc cpio archive (a Linux initramfs) from a spec list.

    mkcpio.py SPEC OUT

Deterministic (same spec and files, same bytes): entries in sorted path order,
mtime 0, uid/gid 0, inode numbers counted from 1, no host device numbers. Needs no
root, since device nodes are written straight into the archive.

SPEC lines (paths absolute inside the archive; '#' starts a comment):
    dir   PATH MODE
    file  PATH MODE HOSTFILE
    slink PATH MODE TARGET
    nod   PATH MODE c|b MAJOR MINOR
MODE is octal permission bits (e.g. 0755).
"""
import stat
import sys


def header(ino, mode, nlink, size, rdevmajor, rdevminor, namesize):
    fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, rdevmajor, rdevminor, namesize, 0]
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def pad4(n):
    return b"\0" * ((4 - n % 4) % 4)


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: mkcpio.py SPEC OUT")
    entries = {}
    with open(sys.argv[1]) as spec:
        for lineno, line in enumerate(spec, 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            kind, path, perm = words[0], words[1], int(words[2], 8)
            if not path.startswith("/") or path in entries:
                sys.exit(f"{sys.argv[1]}:{lineno}: path {path!r} is not absolute or is repeated")
            if kind == "dir":
                entries[path] = (stat.S_IFDIR | perm, b"", 0, 0, 2)
            elif kind == "file":
                with open(words[3], "rb") as f:
                    entries[path] = (stat.S_IFREG | perm, f.read(), 0, 0, 1)
            elif kind == "slink":
                entries[path] = (stat.S_IFLNK | perm, words[3].encode(), 0, 0, 1)
            elif kind == "nod":
                typ = stat.S_IFCHR if words[3] == "c" else stat.S_IFBLK
                entries[path] = (typ | perm, b"", int(words[4]), int(words[5]), 1)
            else:
                sys.exit(f"{sys.argv[1]}:{lineno}: unknown entry kind {kind!r}")
    out = bytearray()
    for ino, path in enumerate(sorted(entries), 1):
        mode, data, major, minor, nlink = entries[path]
        name = path.lstrip("/").encode() + b"\0"
        out += header(ino, mode, nlink, len(data), major, minor, len(name))
        out += name + pad4(110 + len(name))
        out += data + pad4(len(data))
    name = b"TRAILER!!!\0"
    out += header(0, 0, 1, 0, 0, 0, len(name)) + name + pad4(110 + len(name))
    out += pad4(len(out))  # whole archive to a multiple of 4
    with open(sys.argv[2], "wb") as f:
        f.write(out)


if __name__ == "__main__":
    main()
