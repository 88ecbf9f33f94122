"""Issue 7: the temporary file of a cache write killed before its rename is removed later, by a build that
computes (under the cache's lock) or by `layerheat cache prune`, but never while it may be another build's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sites import ENV, GOOD, make_site, mkdocs

from mkdocs_layerheat.cache import STALE_TEMP_SECONDS

# A real write (`Cache.put`'s), killed between writing its temporary file and renaming it into place.
KILLED_WRITE = """
import os, signal, sys
from pathlib import Path
from mkdocs_layerheat import cache
os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
cache._write_atomic(Path(sys.argv[1], "ab", "ab" * 32 + ".npz"), b"PK" * 50_000)
"""


def killed_write(cache: Path) -> Path:
    result = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(cache)], capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr
    (tmp,) = (cache / "ab").glob("*.tmp")
    return tmp


def age(*paths: Path) -> None:
    then = time.time() - STALE_TEMP_SECONDS - 60
    for path in paths:
        os.utime(path, (then, then))


def temp_file(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"partial")
    return folder / name


def test_stale_temporary_files_are_removed_and_fresh_ones_kept(tmp_path, llama_model):
    site = make_site(tmp_path / "site", {"index.md": "# P\n\n" + GOOD}, {"tiny": str(llama_model.path)})
    cache = site / ".cache" / "layerheat"
    killed = killed_write(cache)
    fresh = temp_file(cache / "ab", "tmpwriting.tmp")  # young: maybe another build's, being written now
    stale = [killed, temp_file(cache / "rendered", "tmp1.tmp"), temp_file(cache / "exports", "tmp2.tmp"),
             temp_file(cache, "fingerprints.123.tmp")]
    age(*stale)
    build = mkdocs(site)
    assert build.returncode == 0 and "WARNING" not in build.stderr, build.stderr
    assert [p for p in stale if p.exists()] == []
    assert fresh.exists()
    assert 'class="layerheat-item"' in (site / "site" / "index.html").read_text()

    # a fully cached build takes no lock and removes nothing; prune does, with the same care
    later = temp_file(cache / "cd", "tmp3.tmp")
    age(later)
    assert "1 cached, 0 computed" in mkdocs(site).stderr and later.exists()
    prune = subprocess.run([str(Path(sys.executable).parent / "layerheat"), "cache", "prune"], cwd=site, env=ENV,
                           capture_output=True, text=True)
    assert prune.returncode == 0, prune.stderr
    assert "removed 1 temporary files left by killed builds" in prune.stdout
    assert not later.exists() and fresh.exists()
