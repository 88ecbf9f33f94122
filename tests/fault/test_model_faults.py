"""Issue 7: a model that raises in its forward pass, one that runs out of memory, and one without attention weights:
each fails only its own blocks, with one warning at the fence, and leaves nothing in the cache."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from sites import make_site, mkdocs

from mkdocs_layerheat import plan

# The tiny Llama, failing as real models do: its activations do not fit past `oom_above` tokens (a real
# allocation that the CPU allocator refuses), and a bug breaks the forward pass when token `fail_on` is present.
MODELING = '''
import torch
from transformers import LlamaForCausalLM


class FaultyForCausalLM(LlamaForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        self.register_forward_pre_hook(self.fault, with_kwargs=True)

    def fault(self, module, args, kwargs):
        ids = kwargs["input_ids"]
        if ids.shape[-1] > self.config.oom_above:
            torch.empty(1 << 50)  # 4 PiB
        if (ids == self.config.fail_on).any():
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (7x32 and 48x32)")
'''
LONG = "The quick brown fox jumps over the lazy dog, and the lazy dog looks back at the quick brown fox."
BLOCKS = [  # (body, message fragment of its warning, or None for a good block)
    ("model: faulty\ntext: The quick dog looks back.\nmetric: attention\n", None),
    ("model: faulty\ntext: The fox ~ sleeps.\nmetric: hidden-norm\n", "forward pass failed: mat1 and mat2 shapes"),
    (f"model: faulty\ntext: '{LONG}'\nmetric: attention\n", "out of memory running this text on device 'cpu'"),
    ("model: faulty\ntext: The lazy fox sleeps.\nmetric: hidden-norm\n", None),
    (f"model: tiny\ntext: '{LONG} ~'\nmetric: attention\n", None),
    ("model: mamba\ntext: The lazy fox sleeps.\nmetric: attention\n", "metric 'attention' needs attention weights, but MambaForCausalLM has no attention layers"),
    ("model: mamba\ntext: The lazy fox sleeps.\nmetric: hidden-norm\n", None),
]
PAGE = "# Page\n\n" + "".join(f"```layerheat\n{body}```\n\nParagraph {i}.\n\n" for i, (body, _) in enumerate(BLOCKS))
FENCES = [n for n, line in enumerate(PAGE.splitlines(), 1) if line == "```layerheat"]
BAD = sum(message is not None for _, message in BLOCKS)


def faulty_model(source, target):
    from transformers import AutoTokenizer

    shutil.copytree(source, target)
    (target / "modeling_faulty.py").write_text(MODELING)
    config = json.loads((target / "config.json").read_text())
    fail_on = AutoTokenizer.from_pretrained(target).convert_tokens_to_ids("~")
    config.update(architectures=["FaultyForCausalLM"], oom_above=16, fail_on=fail_on,
                  auto_map={"AutoModelForCausalLM": "modeling_faulty.FaultyForCausalLM"})
    (target / "config.json").write_text(json.dumps(config))


def mamba_model(tokenizer_source, target):
    """A tiny state-space model: blocks without any attention."""
    from transformers import AutoTokenizer, MambaConfig, MambaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    config = MambaConfig(vocab_size=len(tokenizer), hidden_size=32, state_size=4, num_hidden_layers=2, conv_kernel=2,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    MambaForCausalLM(config).save_pretrained(target)
    tokenizer.save_pretrained(target)


@pytest.fixture(scope="module")
def built(tmp_path_factory, llama_model):
    root = tmp_path_factory.mktemp("model-faults")
    faulty_model(llama_model.path, root / "faulty")
    mamba_model(llama_model.path, root / "mamba")
    models = {"tiny": str(llama_model.path), "faulty": str(root / "faulty"), "mamba": str(root / "mamba")}
    site = make_site(root / "site", {"index.md": PAGE}, models, trust_remote_code=["faulty"])
    env = {"HF_HOME": str(root / "hf")}  # where transformers copies the remote code
    return site, mkdocs(site, env=env), mkdocs(site, "-d", str(site / "again"), env=env)


def test_only_the_faulty_blocks_fail(built):
    site, first, _ = built
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr
    # nothing but MkDocs' lines: transformers' own notices (Mamba's kernel fallback) only with -v
    assert all(line.startswith(("INFO", "WARNING", "DEBUG")) for line in first.stderr.splitlines()), first.stderr
    html = (site / "site" / "index.html").read_text()
    assert html.count('class="layerheat-item"') == len(BLOCKS) - BAD, first.stderr
    assert html.count("layerheat-error") == BAD
    for i in range(len(BLOCKS)):
        assert f"Paragraph {i}." in html


@pytest.mark.parametrize("index", [i for i, (_, message) in enumerate(BLOCKS) if message])
def test_one_warning_at_the_fence(built, index):
    _, result, _ = built
    warnings = [line for line in result.stderr.splitlines() if "docs/index.md:" in line]
    assert len(warnings) == BAD, result.stderr
    mine = [line for line in warnings if f"docs/index.md:{FENCES[index]}: " in line]
    assert len(mine) == 1 and BLOCKS[index][1] in mine[0], result.stderr


def test_out_of_memory_says_what_to_change(built):
    _, result, _ = built
    warning = next(line for line in result.stderr.splitlines() if "out of memory" in line)
    for advice in ("shorten the text", "max_tokens (now 4096)", "another device", "device_map: auto"):
        assert advice in warning


def test_nothing_wrong_in_the_cache(built):
    site, first, again = built
    entries = list((site / ".cache" / "layerheat").glob("??/*.npz"))
    assert len(entries) == len(BLOCKS) - BAD
    assert again.returncode == 0, again.stderr
    assert f"{len(BLOCKS)} heatmaps, {len(BLOCKS) - BAD} cached, 0 computed, {BAD} failed" in again.stderr
    def warnings(result):
        return [re.sub(r"^.*?docs/", "", line) for line in result.stderr.splitlines() if "docs/index.md:" in line]

    assert warnings(first) == warnings(again)


def test_a_device_that_does_not_exist_is_a_warning_per_block(tmp_path, llama_model):
    page = "# P\n\n```layerheat\nmodel: tiny\ntext: hello\n```\n"
    site = make_site(tmp_path / "site", {"index.md": page}, {"tiny": str(llama_model.path)}, device="nosuch")
    result = mkdocs(site)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "docs/index.md:3: " in line]
    assert len(warnings) == 1 and "cannot load model 'tiny': " in warnings[0], result.stderr
    assert "layerheat-error" in (site / "site" / "index.html").read_text()


@pytest.mark.parametrize("error", [
    lambda torch: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    lambda torch: MemoryError(),
    lambda torch: RuntimeError("MPS backend out of memory (MPS allocated: 9 GB)"),
])
def test_out_of_memory_is_recognised_also_when_wrapped(error):
    import torch

    from mkdocs_layerheat.extract import ExtractionError

    exc = error(torch)
    assert plan._out_of_memory(exc)
    wrapped = ExtractionError("forward pass failed: ...")
    wrapped.__cause__ = exc
    assert plan._out_of_memory(wrapped)
    assert not plan._out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
