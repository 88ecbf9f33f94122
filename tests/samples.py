"""Constants shared by the fixtures of tests/conftest.py and the tests (a module of its own: the name
`conftest` is taken by more than one folder, so tests never import from it)."""

# Ordinary ASCII text: every token decodes to the exact piece of text it stands for.
SAMPLE_TEXT = "The lazy fox looks back at the quick dog, and the model counts 13 tokens."

# A chat template for the tiny Llama (the others have none): a fixed system turn, then the messages.
CHAT_TEMPLATE = (
    "<s>[system] Be brief.</s>"
    "{% for m in messages %}<s>[{{ m['role'] }}] {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>[assistant]{% endif %}"
)

MORE_ARCHS = ("neox", "qwen2", "gemma2")  # built by the `more_models` fixture
