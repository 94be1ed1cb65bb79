"""The project describes itself as it is: no development history in the tracked files.

History lives in git log. Two kinds of mentions are refused in every tracked text file (and in
the names of tracked files):

- a numbered development step, e.g. "session 18", "issue #8", "session-17 preset";
- a result name tagged with such a step, e.g. ``digits_matrix_300s_cpu_s18_screen_x.json``
  (``_s`` and a number; ``_s3``, the storage scheme, is not one).

Skipped: ``uv.lock``, binary files and this file.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HISTORY = re.compile(r"\b(?:session|issue)[\s-]*#?\d+\b", re.IGNORECASE)
STEP_TAG = re.compile(r"_s(?!3(?!\d))\d+(?:r\d+)?(?![a-z0-9])")  # _s18_, _s19.json, _s17r1_; not _s3
SKIPPED = {"uv.lock", "tests/test_no_history.py"}


def history_hits(path: Path, shown_as: str | None = None) -> list[str]:
    """``file:line: text`` for every history mention in one file (none for a binary file)."""
    name = shown_as or str(path)
    hits = [f"{name}: file name" for _ in STEP_TAG.finditer(Path(name).name)][:1]
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return hits
    text = data.decode("utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), 1):
        for pattern in (HISTORY, STEP_TAG):
            match = pattern.search(line)
            if match:
                start = max(0, match.start() - 40)
                hits.append(f"{name}:{number}: ...{line[start:match.end() + 40].strip()}...")
                break
    return hits


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p and p not in SKIPPED]


def test_tracked_files_carry_no_development_history() -> None:
    try:
        files = tracked_files()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    hits = [hit for rel in files if (ROOT / rel).is_file() for hit in history_hits(ROOT / rel, rel)]
    if hits:
        pytest.fail(f"{len(hits)} history mention(s); history belongs in git log:\n" + "\n".join(hits), pytrace=False)


@pytest.mark.parametrize("planted", [
    "measured in Session 18 on the shared box",
    "see issue #8 for the matrix",
    "the session-17 preset",
    "files digits_matrix_300s_cpu_s18_screen_unc2_seed0.md",
    "merged into digits_matrix_300s_cpu_s19.json",
    "the kd_max_rate=1 arm (`..._s17r1_seed*`)",
])
def test_the_checker_finds_a_planted_mention(tmp_path: Path, planted: str) -> None:
    doc = tmp_path / "notes.md"
    doc.write_text(f"# Notes\n\nclean line\n{planted}\n", encoding="utf-8")
    hits = history_hits(doc, "notes.md")
    assert len(hits) == 1 and hits[0].startswith("notes.md:4:"), hits


def test_the_checker_finds_a_tagged_file_name_and_leaves_clean_text_alone(tmp_path: Path) -> None:
    tagged = tmp_path / "digits_matrix_300s_cpu_s19.json"
    tagged.write_text("{}\n", encoding="utf-8")
    assert history_hits(tagged, "benchmarks/results/digits_matrix_300s_cpu_s19.json") == [
        "benchmarks/results/digits_matrix_300s_cpu_s19.json: file name"]
    clean = tmp_path / "storage_s3.py"
    clean.write_text("DFMSCD_S3_ENDPOINT_URL\nmoto_s3 fixture; 300s budget; 5 sessions; an issue tracker\n"
                     "digits_matrix_300s_cpu_xeon.json\n", encoding="utf-8")
    assert history_hits(clean) == []
    binary = tmp_path / "shot.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\0session 18")
    assert history_hits(binary) == []
