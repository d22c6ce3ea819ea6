"""A labelled set of document types from files Debian installs, for bench_analysis.py.

    apt-get install python3-doc manpages netbase   # most of the sources
    python benchmarks/analysis_data.py            # prints the set: label, split, path

Labels come from where a file lives, not from reading it: rendered man pages and the Python
library reference are `manual`; the Python FAQ is `faq`; the licences of
/usr/share/common-licenses are `contract`; /etc/*.conf are `config`; tables (/etc/services,
/etc/protocols, /etc/rpc..., CSV and JSON files) are `data`; Python modules and shell, Perl
or Python scripts (with or without an extension) are `code`. Files are sorted by path and
alternate between a calibration split (the only one tuned on) and a test split.
"""

from __future__ import annotations

import glob
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

PYDOC = Path("/usr/share/doc/python3-doc/html/_sources")
MAN_PAGES = ("tcp.7", "ip.7", "signal.7", "socket.7", "epoll.7", "capabilities.7", "cgroups.7",
             "environ.7", "fifo.7", "futex.7", "ascii.7", "boot.7", "credentials.7",
             "crontab.5", "passwd.5", "fstab.5", "hosts.5", "services.5", "protocols.5",
             "nsswitch.conf.5", "resolv.conf.5", "ls.1", "grep.1", "tar.1", "ssh.1", "cp.1",
             "find.1", "sort.1", "apt-get.8", "mount.8", "ip.8", "useradd.8")
MAX_CHARS = 60_000


@dataclass(frozen=True)
class Doc:
    label: str
    split: str
    path: str
    filename: str
    text: str


def render_man(page: str) -> str | None:
    name, section = page.rsplit(".", 1)
    """A man page ("tcp.7") as plain text, 80 columns; None when it is not installed."""
    env = {**os.environ, "MANWIDTH": "80", "MAN_KEEP_FORMATTING": "0"}
    try:
        out = subprocess.run(["man", section, name], capture_output=True, text=True, env=env,
                             timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    # Rendered pages carry backspace overstrikes when written to a pipe on some setups.
    while "\b" in out:
        out = "".join(c for i, c in enumerate(out) if c != "\b" and
                      (i + 1 >= len(out) or out[i + 1] != "\b"))
    return out or None


def _script(path: Path) -> bool:
    try:
        head = path.read_bytes()[:64]
    except OSError:
        return False
    return head.startswith(b"#!") and any(k in head for k in (b"sh", b"perl", b"python"))


def _sources() -> list[tuple[str, str, str]]:
    """(label, path, filename) of every candidate, before reading."""
    out: list[tuple[str, str, str]] = []
    out += [("manual", f"man:{p}", f"{p.rsplit('.', 1)[0]}.txt") for p in MAN_PAGES]
    library = sorted(glob.glob(str(PYDOC / "library" / "*.rst.txt")))
    out += [("manual", p, Path(p).name) for p in library[::12][:26]]
    out += [("faq", p, Path(p).name) for p in sorted(glob.glob(str(PYDOC / "faq" / "*.rst.txt")))
            if not p.endswith("index.rst.txt")]
    seen: set[str] = set()
    for p in sorted(glob.glob("/usr/share/common-licenses/*")):
        real = os.path.realpath(p)
        if real not in seen:
            seen.add(real)
            out.append(("contract", p, Path(p).name))
    out += [("config", p, Path(p).name) for p in sorted(glob.glob("/etc/*.conf"))]
    tables = ["/etc/services", "/etc/protocols", "/etc/rpc", "/etc/ethertypes",
              "/etc/mime.types", "/etc/networks"]
    tables += sorted(glob.glob("/usr/share/distro-info/*.csv"))
    tables += sorted(glob.glob("/usr/share/doc/gawk/examples/misc/*.csv"))
    tables += sorted(glob.glob("/usr/share/cmake-*/Templates/MSBuild/FlagTables/*.json"))[::6]
    out += [("data", p, Path(p).name) for p in tables]
    py = sorted(glob.glob("/usr/lib/python3/dist-packages/*/*.py"))
    out += [("code", p, Path(p).name) for p in py if not p.endswith("__init__.py")][::25][:12]
    scripts = [p for p in sorted(glob.glob("/usr/bin/*")) if _script(Path(p))]
    out += [("code", p, Path(p).name) for p in scripts[::8][:12]]
    return out


def load() -> list[Doc]:
    docs: list[Doc] = []
    by_label: dict[str, int] = {}
    for label, path, filename in sorted(_sources(), key=lambda s: (s[0], s[1])):
        if path.startswith("man:"):
            text = render_man(path[4:])
        else:
            try:
                text = Path(path).read_text(errors="replace")
            except OSError:
                text = None
        if not text or len(text.split()) < 20:
            continue
        n = by_label.get(label, 0)
        by_label[label] = n + 1
        docs.append(Doc(label, "calibration" if n % 2 == 0 else "test", path, filename,
                        text[:MAX_CHARS]))
    return docs


if __name__ == "__main__":
    for d in load():
        print(d.label, d.split, d.path, len(d.text), sep="\t")
