"""What hooks may read and write, as paths: the walk that hides the sidecar's state from a read-all
grant (and notices when the directories it listed change), and the default write grants.

Landlock is an allow-list: nothing can be carved out of a grant. "Read everything but the spool,
.env and the secret files" is built by walking from / down the directories that lead to hidden
state, granting every other entry on the way whole, and granting nothing on the way itself.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

# Directory times come from a coarse clock (a jiffy) on older kernels: a change in the same tick
# as the walk's stat keeps the time. A directory changed this recently is checked once more later.
YOUNG_S = 1.0
RECHECK = "(changed during the walk)"  # what View.changed() says at that later look
TEMP_DIRS = ("/tmp", "/var/tmp")


def _real(path: str | os.PathLike[str]) -> str:
    return os.path.realpath(os.fspath(path))


def _within(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns


@dataclass(frozen=True)
class View:
    """What hooks may read: the entries granted whole, and the directories listed to find them."""

    paths: tuple[str, ...]
    listed: tuple[tuple[str, tuple[int, int, int, int]], ...]
    recheck_at: float = 0.0  # a listed directory was changing at the walk: look again after this
    young: tuple[tuple[str, frozenset[tuple[str, int]]], ...] = ()  # those directories' (name, inode)s

    def changed(self) -> str:
        """A listed directory that is not as it was (its path), or "" when the view still holds."""
        for path, stamp in self.listed:
            try:
                if _stamp(os.stat(path)) != stamp:
                    return path
            except OSError:
                return path
        if self.recheck_at and time.time() >= self.recheck_at:
            return RECHECK
        return ""

    def settled(self) -> View | None:
        """At the recheck: this view without it when each directory that was changing at the walk still
        holds the entries (names and inodes) it listed then; None when one does not (walk again).

        Its stamps held (changed() says so first), so any later change shows in them: a time past the
        walk's tick differs from the one taken. Listing again is far cheaper than a walk and a ruleset
        rebuilt, which a busy /tmp would otherwise cost twice per change."""
        for path, entries in self.young:
            try:
                with os.scandir(path) as it:
                    if frozenset((e.name, e.inode()) for e in it) != entries:
                        return None
            except OSError:
                return None
        return dataclasses.replace(self, recheck_at=0.0, young=())


def resolve_hidden(hidden: Iterable[str]) -> set[str]:
    """The real paths to hide. A path that resolves through a `..<name>` directory beside it (a Kubernetes
    volume: token -> ..data/token -> ..<timestamp>/token) is hidden in every such directory: at an
    update the next one is written, and may be walked, before ..data is switched to it."""
    hide = set()
    for given in hidden:
        path = os.path.abspath(given)
        real = _real(path)
        hide.add(real)
        top = os.path.dirname(path)
        while real != path and top != "/":
            base = _real(top).rstrip("/") + "/"
            if real.startswith(base + ".."):
                tail = real[len(base):].partition("/")[2]
                try:
                    names = [n for n in os.listdir(base) if n.startswith("..") and n != ".."]
                except OSError:
                    names = []
                hide.update(_real(os.path.join(base, n, tail)) for n in names if tail)
                break
            top = os.path.dirname(top)
    return hide


def walk(hidden: Iterable[str]) -> View:
    """Grant every entry under / whole except those that are, or lead to, a hidden path."""
    hide = resolve_hidden(hidden)
    paths: list[str] = []
    listed: list[tuple[str, tuple[int, int, int, int]]] = []
    young: list[tuple[str, frozenset[tuple[str, int]]]] = []
    started = time.time()

    def visit(top: str) -> None:
        real_top = _real(top)
        if real_top in hide or any(_within(real_top, h) for h in hide):
            return
        if not any(_within(h, real_top) for h in hide):
            paths.append(top)
            return
        # A directory on the way to hidden state: grant its other entries, not itself. Its stamp is
        # taken before it is listed: any change after the listing shows at the next check.
        try:
            stamp = _stamp(os.stat(top))
            entries = list(os.scandir(top))
        except OSError:
            return
        listed.append((top, stamp))
        if max(stamp[2], stamp[3]) >= (started - YOUNG_S) * 1e9:
            young.append((top, frozenset((e.name, e.inode()) for e in entries)))
        for entry in entries:
            real = _real(entry.path)
            if real in hide:
                continue
            if any(_within(h, real) for h in hide):
                if entry.is_dir(follow_symlinks=False):
                    visit(entry.path)
                continue  # a symlink to a directory on the way: reached through its real path
            paths.append(entry.path)

    visit("/")
    return View(tuple(paths), tuple(listed), started + YOUNG_S if young else 0.0, tuple(young))


def exposed(hidden: Iterable[str], writable: Iterable[str], readable: Iterable[str] = ()) -> list[str]:
    """'<state> in <dir> (writable|readable)' for state that lies inside a granted directory."""
    out = []
    for h in hidden:
        for kind, tops in (("writable", writable), ("readable", readable)):
            top = next((t for t in tops if _within(_real(h), _real(t))), None)
            if top:
                out.append(f"{h} is inside {top} ({kind} by hooks)")
                break
    return out


def default_writes(state: Iterable[str], private: str = "") -> tuple[tuple[str, ...], list[tuple[str, str]]]:
    """(what hooks may write by default, [(a temp directory left out, why)]).

    The hooks' own directory and /dev always; /tmp and /var/tmp unless state lies beneath one of
    them: a grant covers its whole hierarchy, so state there would be writable (and readable).
    """
    state = tuple(state)
    writes, narrowed = [], []
    for top in TEMP_DIRS:
        if not os.path.isdir(top):
            continue
        inside = next((s for s in state if _within(_real(s), _real(top)) or _within(os.path.abspath(s), top)), None)
        if inside is None:
            writes.append(top)
        else:
            narrowed.append((top, f"the sidecar's state {inside} lies beneath it: a grant on {top} would open it"))
    writes.append("/dev")
    if private:
        writes.append(private)
    return tuple(writes), narrowed
