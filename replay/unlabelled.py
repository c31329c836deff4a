"""A folder of the wearer's own E4 exports, read as unlabelled data (the paper's MAYA role).

Why a reader of its own: recordings for domain alignment (section 4.6: unlabelled data from another
domain) are usually kept as the E4 Connect site hands them out, one export per session, grouped
into folders per person, and any ``labels.csv`` lying among them must not leak in as ground truth.
So every E4 export (folder or zip) found up to :data:`MAX_DEPTH` levels below the given folder is
read with the E4 reader and its labels are dropped; the device id is the export's path below the
folder (``anna/session2`` -> ``anna-session2``), so two people's ``session2`` stay apart.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from common.errors import DataError
from replay.e4csv import SIGNAL_FILES, device_name, is_e4_export, read_e4_export
from replay.recording import Recording

MAX_DEPTH = 3
#: The most exports read from one folder (a bound on work before anything is published).
MAX_EXPORTS = 2000


def find_exports_below(root: Path) -> list[Path]:
    """E4 exports at ``root`` or up to :data:`MAX_DEPTH` folders below it, in path order."""
    found: list[Path] = []

    def walk(folder: Path, depth: int) -> None:
        for p in sorted(folder.iterdir()):
            if is_e4_export(p):
                found.append(p)
                if len(found) > MAX_EXPORTS:
                    raise DataError(root, f"more than {MAX_EXPORTS} E4 exports below this folder")
            elif p.is_dir() and not p.is_symlink() and depth < MAX_DEPTH:
                walk(p, depth + 1)

    if is_e4_export(root):
        return [root]
    if root.is_dir():
        walk(root, 1)
    return found


def read_unlabelled(path: str | Path) -> list[Recording]:
    root = Path(path)
    if not root.exists():
        raise DataError(root, "no such file or folder")
    exports = find_exports_below(root)
    if not exports:
        raise DataError(
            root, f"no E4 export here or up to {MAX_DEPTH} folders below (none of {', '.join(SIGNAL_FILES)})"
        )
    out = []
    for p in exports:
        rel = p.relative_to(root) if p != root else Path(p.name)
        parts = [device_name(Path(part)) for part in rel.parts]  # S2_E4_Data.zip -> S2
        rec = read_e4_export(p, device="-".join(parts)[:64])
        out.append(replace(rec, labels=()))
    return out


__all__ = ["MAX_DEPTH", "find_exports_below", "read_unlabelled"]
