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

# Markup and template syntax that must show as these characters everywhere (tests/fault, tests/browser)
ATTACKS = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "{{ 7*7 }}", "{% raw %}"]
NASTY = " ".join(ATTACKS)
# The first block of an injection page: the attacks in the text, title and caption
NASTY_BLOCK = f"""\
```layerheat
model: tiny
text: |
  {NASTY}
metric: attention
title: '{NASTY}'
caption: '{NASTY}'
```
"""
