"""Speech clips with exact references, read from a corpus folder's MANIFEST.tsv."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "tests" / "data" / "audio"  # the few clips the repo carries
SHARED = REPO.parent / "shared" / "audio"  # the full developer corpus, when present


@dataclass(frozen=True)
class Clip:
    path: Path
    language: str
    duration: float
    sample_rate: int
    channels: int
    reference: str

    @property
    def name(self) -> str:
        return self.path.name


def load_clips(folder: Path = SHIPPED) -> list[Clip]:
    with (folder / "MANIFEST.tsv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return [
        Clip(folder / r["file"], r["language"], float(r["duration_s"]), int(r["sample_rate"]),
             int(r["channels"]), r["reference_transcript"])
        for r in rows
    ]


def clip(name_part: str, folder: Path = SHIPPED) -> Clip:
    """The one clip whose file name contains ``name_part``."""
    found = [c for c in load_clips(folder) if name_part in c.name]
    if len(found) != 1:
        raise LookupError(f"{name_part!r} matches {[c.name for c in found]}")
    return found[0]
