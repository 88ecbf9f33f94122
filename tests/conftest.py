"""Tiny, randomly initialised models built locally (no hub, no network), saved where `refs.resolve` finds them.

Three architectures cover the cases the package distinguishes:

* ``llama``: a causal decoder with grouped-query attention and a final RMSNorm (``LlamaForCausalLM``);
* ``gpt2``: a causal decoder with a final LayerNorm and ``Conv1D`` projections (``GPT2LMHeadModel``);
* ``bert``: a bidirectional encoder without a final norm (``BertModel``).

Each directory also holds a tokenizer trained here with the `tokenizers` library.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir
from samples import CHAT_TEMPLATE, MORE_ARCHS

# Nothing written into the working tree: no example database, and hypothesis's other files in a temp dir.
_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="layerheat-hypothesis-")
atexit.register(shutil.rmtree, _HYPOTHESIS_HOME, ignore_errors=True)
set_hypothesis_home_dir(_HYPOTHESIS_HOME)
settings.register_profile("layerheat", database=None)
settings.load_profile("layerheat")

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A and B = 8 + 5 = 13. The correct choice is (D) 13.",
    "Attention heads look back at earlier tokens in a causal model.",
    "An encoder lets every token attend to every other token.",
    "Heatmaps show one row per layer and one column per token.",
    "The residual stream grows as layers add their updates to it.",
    "Language models predict the next token from the previous ones.",
    "Numbers like 1, 2, 3, 42 and 1000 are tokenized into pieces.",
    "She sells sea shells by the sea shore; the shells she sells are sea shells.",
    "Markdown pages contain fenced code blocks with a layerheat body.",
] * 4


# A large initializer range makes attention peaked and heads different from each other,
# so that averaging over the wrong axis or the wrong queries changes the numbers visibly.
INIT_RANGE = 0.4


@dataclass(frozen=True)
class TinyModel:
    arch: str
    path: Path
    causal: bool
    num_layers: int
    raw_tokenizer: object  # the `tokenizers.Tokenizer` the model's tokenizer was built from


def _byte_level_bpe(specials: list[str], bos: str | None):
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _wordpiece():
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tok


def _build(arch: str, root: Path) -> TinyModel:
    import torch
    from transformers import PreTrainedTokenizerFast

    path = root / arch
    torch.manual_seed({"llama": 0, "gpt2": 1, "bert": 2}[arch])
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        raw = _byte_level_bpe(["<s>", "</s>", "<unk>"], bos="<s>")
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
        tokenizer.chat_template = CHAT_TEMPLATE
        config = LlamaConfig(
            vocab_size=raw.get_vocab_size(),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            initializer_range=INIT_RANGE,
            bos_token_id=raw.token_to_id("<s>"),
            eos_token_id=raw.token_to_id("</s>"),
            tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(config)
        causal = True
    elif arch == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        raw = _byte_level_bpe(["<|endoftext|>"], bos=None)
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=raw, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
        )
        eot = raw.token_to_id("<|endoftext|>")
        config = GPT2Config(
            vocab_size=raw.get_vocab_size(),
            n_positions=128,
            n_embd=32,
            n_layer=3,
            n_head=4,
            initializer_range=INIT_RANGE,
            bos_token_id=eot,
            eos_token_id=eot,
        )
        model = GPT2LMHeadModel(config)
        causal = True
    elif arch == "bert":
        from transformers import BertConfig, BertModel

        raw = _wordpiece()
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=raw,
            unk_token="[UNK]",
            sep_token="[SEP]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            mask_token="[MASK]",
        )
        config = BertConfig(
            vocab_size=raw.get_vocab_size(),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=128,
            initializer_range=INIT_RANGE,
            pad_token_id=raw.token_to_id("[PAD]"),
        )
        model = BertModel(config)
        causal = False
    else:  # pragma: no cover
        raise ValueError(arch)
    _randomize_norms(model)
    model.eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return TinyModel(arch, path, causal, 3, raw)


def _randomize_norms(model) -> None:
    """Norm layers start as the identity (weight 1, bias 0); give them random affine parameters.

    Otherwise every post-LayerNorm hidden state of BERT has norm sqrt(hidden) and every
    final-norm output of the decoders has nearly the same norm, which would hide mistakes.
    """
    import torch

    with torch.no_grad():
        for _name, module in model.named_modules():
            if "norm" in type(module).__name__.lower():
                if getattr(module, "weight", None) is not None:
                    module.weight.copy_(1 + 0.5 * torch.randn_like(module.weight))
                if getattr(module, "bias", None) is not None:
                    module.bias.copy_(0.2 * torch.randn_like(module.bias))


ARCHS = ("llama", "gpt2", "bert")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, TinyModel]:
    """All three tiny models, built once per test session."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: _build(arch, root) for arch in ARCHS}


@pytest.fixture(scope="session")
def llama_model(tiny_models) -> TinyModel:
    return tiny_models["llama"]


@pytest.fixture(scope="session")
def gpt2_model(tiny_models) -> TinyModel:
    return tiny_models["gpt2"]


@pytest.fixture(scope="session")
def bert_model(tiny_models) -> TinyModel:
    return tiny_models["bert"]


@pytest.fixture(scope="session", params=ARCHS)
def tiny_model(request, tiny_models) -> TinyModel:
    """Each architecture in turn."""
    return tiny_models[request.param]


@pytest.fixture(scope="session")
def loaded_models(tiny_models):
    """`models.load` of each tiny model, loaded once per session (the package's code path)."""
    from mkdocs_layerheat import models, refs

    return {arch: models.load(refs.resolve(str(m.path))) for arch, m in tiny_models.items()}


@pytest.fixture(scope="session")
def loaded(tiny_model, loaded_models):
    """The package's `LoadedModel` for the current architecture."""
    return loaded_models[tiny_model.arch]


@pytest.fixture(scope="session")
def reference_models(tiny_models):
    """The same weights loaded independently of the package: plain classes, eager attention, float32."""
    import torch
    from transformers import BertModel, GPT2LMHeadModel, LlamaForCausalLM

    classes = {"llama": LlamaForCausalLM, "gpt2": GPT2LMHeadModel, "bert": BertModel}
    out = {}
    for arch, m in tiny_models.items():
        model = classes[arch].from_pretrained(m.path, attn_implementation="eager", dtype=torch.float32)
        out[arch] = model.eval()
    return out


@pytest.fixture(scope="session")
def reference_model(tiny_model, reference_models):
    return reference_models[tiny_model.arch]




def _build_more(arch: str, root: Path, llama: TinyModel) -> TinyModel:
    """Three more decoder families, with the tiny Llama's tokenizer: the structures the package must find generically.

    GPT-NeoX: parallel residual (attention and MLP both read the block input), fused QKV, partial rotary.
    Qwen2: grouped-query attention with biases. Gemma2: "sandwich" norms around each sublayer, attention
    and final-logit soft-capping, sliding-window attention.
    """
    import torch
    from transformers import AutoTokenizer

    common = {
        "vocab_size": llama.raw_tokenizer.get_vocab_size(), "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 3, "num_attention_heads": 4, "max_position_embeddings": 128,
        "initializer_range": INIT_RANGE,
    }
    torch.manual_seed({"neox": 3, "qwen2": 4, "gemma2": 5}[arch])
    if arch == "neox":
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

        model = GPTNeoXForCausalLM(GPTNeoXConfig(**common, use_parallel_residual=True, rotary_pct=0.5))
    elif arch == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM

        model = Qwen2ForCausalLM(Qwen2Config(**common, num_key_value_heads=2, tie_word_embeddings=False))
    else:
        from transformers import Gemma2Config, Gemma2ForCausalLM

        config = Gemma2Config(
            **common, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, sliding_window=6,
            attn_logit_softcapping=5.0, final_logit_softcapping=3.0, pad_token_id=None,
        )
        model = Gemma2ForCausalLM(config)
    _randomize_norms(model)
    model.eval()
    path = root / arch
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(llama.path).save_pretrained(path)
    return TinyModel(arch, path, True, 3, llama.raw_tokenizer)


@pytest.fixture(scope="session")
def more_models(tmp_path_factory, tiny_models) -> dict[str, TinyModel]:
    root = tmp_path_factory.mktemp("more-models")
    return {arch: _build_more(arch, root, tiny_models["llama"]) for arch in MORE_ARCHS}


@pytest.fixture(autouse=True)
def _no_warm_worker(monkeypatch):
    """A developer's LAYERHEAT_WORKER must not make tests hand their work to a worker process (test_worker.py asks)."""
    monkeypatch.delenv("LAYERHEAT_WORKER", raising=False)


@pytest.fixture(scope="session")
def demo_model():
    """The demo model (SmolLM2-135M-Instruct), loaded once for every test that reads it."""
    from mkdocs_layerheat import models, refs

    demo = Path(__file__).resolve().parent.parent / ".models" / "SmolLM2-135M-Instruct"
    if not (demo / "config.json").is_file():
        pytest.fail(f"the demo model is missing at {demo}: run `make model` (make test does)")
    return models.load(refs.resolve(str(demo)))


@pytest.fixture
def one_page(tmp_path, llama_model):
    """A page rendered in-process by a bare `markdown.Markdown` with the extension, as markdown-exec's tests do:
    `one_page(text, **options) -> html`, the tiny Llama as `tiny`, the page named `docs/index.md`."""
    import markdown

    def render(text: str, *extensions: str, **options) -> str:
        config = {"models": {"tiny": str(llama_model.path)}, "base_dir": str(tmp_path), "page": "docs/index.md",
                  **options}
        md = markdown.Markdown(extensions=[*extensions, "layerheat"], extension_configs={"layerheat": config})
        return md.convert(text)

    return render
