"""Issue 7: a page names models by path only inside the project folder, or in folders that mkdocs.yml's
`model_dirs` lists; aliases of mkdocs.yml may point anywhere."""

from __future__ import annotations

import os
import shutil

import pytest
from sites import make_site, mkdocs

OUTSIDE = "is outside the project folder; list its folder in the plugin option model_dirs to allow it"


@pytest.fixture(scope="module")
def root(tmp_path_factory, llama_model):
    root = tmp_path_factory.mktemp("model-dirs")
    for folder in ("site/models", "shared", "other"):
        shutil.copytree(llama_model.path, root / folder / "tiny")
    return root


def cases(root):
    """model reference -> whether a page may use it, with `model_dirs: [../shared]`."""
    return {
        "./models/tiny": True,  # inside the project folder
        "models/tiny": True,
        "../shared/tiny": True,  # in model_dirs
        f"{root}/shared/tiny": True,
        "./shared-link": True,  # a symlink into model_dirs
        "far": True,  # an alias of mkdocs.yml, to a folder outside
        "../other/tiny": False,
        f"{root}/other/tiny": False,
        "./models/../../other/tiny": False,
        "./other-link": False,  # a symlink inside the project to a model outside
    }


@pytest.fixture(scope="module")
def built(root):
    site = root / "site"
    os.symlink(root / "other" / "tiny", site / "other-link")
    os.symlink(root / "shared" / "tiny", site / "shared-link")
    pages = {f"page{i}.md": f"# P\n\n```layerheat\nmodel: '{ref}'\ntext: text {i}\nmetric: hidden-norm\n```\n"
             for i, ref in enumerate(cases(root))}
    make_site(site, pages, {"far": str(root / "other" / "tiny")}, model_dirs=["../shared"])
    return site, mkdocs(site)


def test_page_model_paths_must_stay_in_allowed_folders(root, built):
    site, result = built
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    for i, (ref, allowed) in enumerate(cases(root).items()):
        html = (site / "site" / f"page{i}" / "index.html").read_text()
        warnings = [line for line in result.stderr.splitlines() if f"docs/page{i}.md:" in line]
        if allowed:
            assert warnings == [] and 'class="layerheat-item"' in html, (ref, warnings)
        else:
            assert len(warnings) == 1 and f"docs/page{i}.md:3: model path '{ref}' {OUTSIDE}" in warnings[0], ref
            assert "layerheat-error" in html and OUTSIDE in html, ref


def test_a_folder_removed_from_model_dirs_is_refused_even_with_a_cached_entry(root, built):
    site, _ = built
    shared = [i for i, ref in enumerate(cases(root)) if "shared" in ref]
    (site / "mkdocs.yml").write_text((site / "mkdocs.yml").read_text().replace('model_dirs: ["../shared"]', ""))
    result = mkdocs(site, "-d", str(site / "again"))
    assert result.returncode == 0, result.stderr
    for i in shared:
        assert f"docs/page{i}.md:3: model path" in result.stderr, result.stderr
        assert "layerheat-error" in (site / "again" / f"page{i}" / "index.html").read_text()
