"""Names of the three forms of LION attention (docs/lion.md §1.3–1.5) and of 'auto': one canonical set, the
spellings each model family publishes, and the one alias table that maps any spelling to the canonical name."""
from __future__ import annotations

# canonical: what lion_attention's dispatch reads; 'auto' picks the attention or the chunk form by the sequence length
# (lion.form_choice)
FORMS = ("attention", "rnn", "chunk", "auto")
ALIASES = {"parallel": "attention", "recurrent": "rnn"}  # accepted wherever a form is named, case-insensitively
# each family's published spellings, in FORMS' order (vision: timm models' ``format``; MLM: the configs' ``form``)
PUBLISHED_FORMS = {"vision": ("Attention", "RNN", "Chunk", "Auto"), "mlm": ("parallel", "rnn", "chunk", "auto")}


def canonical_form(form: str) -> str:
    """The canonical name of any spelling of a form (case-insensitive, aliases included)."""
    key = str(form).lower()
    key = ALIASES.get(key, key)
    if key not in FORMS:
        raise ValueError(f"form must be one of {', '.join(map(repr, FORMS))} (case-insensitive; aliases "
                         f"{', '.join(map(repr, ALIASES))}), got {form!r}")
    return key


def published_form(form: str, family: str) -> str:
    """``family``'s spelling of ``form``, given in any spelling (case-insensitive, aliases included)."""
    spellings = PUBLISHED_FORMS[family]
    try:
        return spellings[FORMS.index(canonical_form(form))]
    except ValueError:
        raise ValueError(f"form must be one of {list(spellings)} (case-insensitive; also "
                         f"{sorted((set(FORMS) | set(ALIASES)) - set(spellings))}), got {form!r}") from None
