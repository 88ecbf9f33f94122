"""The warm worker: misses handed to a local process that keeps the model loaded, with the numbers of the build itself.

Every test stops the workers it started (the `workers` fixture), and checks that their processes are gone.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from test_cache_workflow import site_of

from mkdocs_layerheat import plan, worker
from mkdocs_layerheat.spec import parse_spec

TEXTS = ["The quick dog looks back at the lazy fox.", "The model counts 13 tokens, then 42 more."]


def gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            if os.waitpid(pid, os.WNOHANG) != (0, 0):  # a child of this process (not the case when detached)
                return True
        except ChildProcessError:
            pass
        time.sleep(0.05)
    return False


@pytest.fixture
def workers():
    """Cache folders whose worker must be stopped after the test; fails the test if one survives."""
    folders: list[Path] = []
    yield folders
    survivors = []
    for folder in folders:
        pid = worker.running(folder)
        worker.stop(folder)
        if pid is not None and not gone(pid):
            os.kill(pid, 9)
            survivors.append(pid)
    assert not survivors, f"workers left running: {survivors}"


def specs_for(alias: str, metrics: list[str], texts=TEXTS) -> list:
    return [parse_spec(f"model: {alias}\ntext: '{text}'\nmetric: {metric}") for text in texts for metric in metrics]


def assert_identical(ours, theirs) -> None:
    for spec in theirs:
        a, b = ours[spec].heatmap, theirs[spec].heatmap
        assert a is not None and b is not None, (ours[spec].error, theirs[spec].error)
        assert a.values.dtype == b.values.dtype and a.values.shape == b.values.shape
        assert a.values.tobytes() == b.values.tobytes(), spec  # bit for bit, NaNs included
        for f in dataclasses.fields(a):
            if f.name != "values":
                assert getattr(a, f.name) == getattr(b, f.name), f.name


@pytest.mark.parametrize("arch, metrics", [
    ("llama", ["attention", "hidden-norm", "logit-lens", "attn-norm"]),
    ("bert", ["attention", "attention-entropy", "update"]),
])
def test_worker_numbers_are_bit_identical_to_the_build_s_own(tmp_path, tiny_models, workers, arch, metrics):
    model = tiny_models[arch].path
    remote = plan.Settings({"tiny": str(model)}, tmp_path, tmp_path / "remote", warm_worker=60)
    local = plan.Settings({"tiny": str(model)}, tmp_path, tmp_path / "local")
    workers.append(remote.cache_dir)
    first = specs_for("tiny", metrics)
    from_worker = plan.run(first, remote)
    assert all(o.computed for o in from_worker.values()), [o.error for o in from_worker.values()]
    pid = worker.running(remote.cache_dir)
    assert pid is not None and pid != os.getpid()
    assert_identical(from_worker, plan.run(first, local))
    # an edit: the worker reuses the model it kept; the entries it wrote read back identically
    edited = specs_for("tiny", metrics, ["An edited text about 7 lazy foxes."])
    again = plan.run(first + edited, remote)
    assert worker.running(remote.cache_dir) == pid
    assert all(again[s].computed for s in edited) and not any(again[s].computed for s in first)
    assert_identical(again, plan.run(first + edited, local))
    assert all(o.heatmap is not None for o in again.values())  # cached ones are read from the shared cache


def test_edit_then_build_uses_the_warm_worker_and_never_imports_torch(tmp_path, llama_model, workers):
    site = site_of(tmp_path / "site", llama_model.path)
    workers.append(site / ".cache" / "layerheat")
    env = {"PATH": "/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1", "LAYERHEAT_WORKER": "120"}
    first = subprocess.run([sys.executable, "-m", "mkdocs", "build"], capture_output=True, text=True, cwd=site,
                           env=env, timeout=300)  # returns although the worker it started keeps running
    assert first.returncode == 0 and "2 heatmaps, 0 cached, 2 computed" in first.stderr, first.stderr
    pid = worker.running(site / ".cache" / "layerheat")
    assert pid is not None
    assert (site / ".cache" / "layerheat" / "worker" / ".gitignore").read_text() == "*\n"
    page = site / "docs" / "index.md"
    page.write_text(page.read_text().replace("The model counts tokens.", "The model counts 12 tokens."))
    probe = (
        "import sys, json, logging\nlogging.basicConfig(level=logging.INFO)\n"
        "from mkdocs.commands.build import build\nfrom mkdocs.config import load_config\n"
        "build(load_config('mkdocs.yml'))\nprint(json.dumps('torch' in sys.modules or 'transformers' in sys.modules))"
    )
    second = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=site, env=env,
                            timeout=300)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip().splitlines()[-1] == "false"  # the build process itself loaded nothing
    assert "2 heatmaps, 1 cached, 1 computed" in second.stderr
    assert "(load 0.0 s" in second.stderr  # the worker's log line: the model was still loaded
    assert worker.running(site / ".cache" / "layerheat") == pid
    assert (site / "site" / "index.html").read_text().count('class="layerheat-item"') == 2
    layerheat = [str(Path(sys.executable).parent / "layerheat"), "worker"]
    status = subprocess.run(layerheat + ["status"], capture_output=True, text=True, cwd=site, env=env)
    assert status.stdout.strip() == f"worker running, process {pid}", status.stderr
    stopped = subprocess.run(layerheat + ["stop"], capture_output=True, text=True, cwd=site, env=env)
    assert stopped.stdout.strip() == "worker stopped" and gone(pid), stopped.stderr
    status = subprocess.run(layerheat + ["status"], capture_output=True, text=True, cwd=site, env=env)
    assert status.stdout.strip() == "no worker running"


def test_a_worker_running_other_code_is_replaced_and_never_used(tmp_path, llama_model, workers, monkeypatch):
    settings = plan.Settings({"tiny": str(llama_model.path)}, tmp_path, tmp_path / "cache", warm_worker=60)
    local = plan.Settings({"tiny": str(llama_model.path)}, tmp_path, tmp_path / "local")
    workers.append(settings.cache_dir)
    specs = specs_for("tiny", ["attention"])
    plan.run(specs[:1], settings)
    old = worker.running(settings.cache_dir)
    monkeypatch.setattr(worker, "token", lambda: "code that no worker runs")  # as after editing the package
    outcomes = plan.run(specs, settings)  # the old worker and its replacement both answer "stale" and exit
    assert gone(old)
    assert worker.running(settings.cache_dir) is None
    assert outcomes[specs[1]].computed and not outcomes[specs[0]].computed
    plan.run(specs[:1], local)  # the same batches as above (texts batched together may differ in the last bit)
    assert_identical(outcomes, plan.run(specs, local))  # computed in this process instead


def test_unreachable_worker_falls_back_to_computing_here(tmp_path, llama_model, workers, monkeypatch):
    settings = plan.Settings({"tiny": str(llama_model.path)}, tmp_path, tmp_path / "cache", warm_worker=60)
    local = plan.Settings({"tiny": str(llama_model.path)}, tmp_path, tmp_path / "local")
    workers.append(settings.cache_dir)
    monkeypatch.setattr(worker, "_spawn", lambda *a: subprocess.Popen([sys.executable, "-c", "pass"]))
    specs = specs_for("tiny", ["attention", "hidden-norm"])
    outcomes = plan.run(specs, settings)
    assert all(o.computed for o in outcomes.values())
    assert worker.running(settings.cache_dir) is None
    assert_identical(outcomes, plan.run(specs, local))


def test_worker_exits_when_idle_and_when_its_cache_is_removed(tmp_path, llama_model, workers):
    spec = specs_for("tiny", ["hidden-norm"])[:1]
    idle = plan.Settings({"tiny": str(llama_model.path)}, tmp_path, tmp_path / "idle", warm_worker=3)
    cleared = plan.Settings({"tiny": str(llama_model.path)}, tmp_path, tmp_path / "cleared", warm_worker=600)
    workers.extend([idle.cache_dir, cleared.cache_dir])
    assert plan.run(spec, idle)[spec[0]].computed
    first = worker.running(idle.cache_dir)  # a ping is not a request: it does not keep the worker alive
    assert plan.run(spec, cleared)[spec[0]].computed
    second = worker.running(cleared.cache_dir)
    assert first and second and first != second
    shutil.rmtree(cleared.cache_dir)  # `layerheat cache clear`
    assert gone(first, timeout=15) and gone(second, timeout=15)
    assert not (idle.cache_dir / "worker" / "socket").exists()


@pytest.mark.parametrize("option, env, expected", [
    (0, None, 0), (300, None, 300), (0, "600", 600), (300, "0", 0), (0, "on", 600), (120, "on", 120),
    (120, "off", 0), (0, "", 0),
])
def test_idle_seconds_from_option_and_environment(option, env, expected, monkeypatch):
    if env is None:
        monkeypatch.delenv("LAYERHEAT_WORKER", raising=False)
    else:
        monkeypatch.setenv("LAYERHEAT_WORKER", env)
    assert worker.idle_seconds(option) == expected


def test_a_cache_path_too_long_for_a_socket_puts_the_socket_in_the_temporary_folder(tmp_path, llama_model, workers):
    settings = plan.Settings({"tiny": str(llama_model.path)}, tmp_path, tmp_path / ("deep" * 30) / "cache",
                             warm_worker=60)
    workers.append(settings.cache_dir)
    assert worker.socket_path(settings.cache_dir).parent == Path(tempfile.gettempdir())
    spec = specs_for("tiny", ["hidden-norm"])[:1]
    assert plan.run(spec, settings)[spec[0]].computed
    pid = worker.running(settings.cache_dir)
    assert pid is not None
    shutil.rmtree(settings.cache_dir)  # the key goes with the cache: the worker exits, its socket with it
    assert gone(pid, timeout=15)
    assert not worker.socket_path(settings.cache_dir).exists()
