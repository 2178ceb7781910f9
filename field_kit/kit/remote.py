"""Commands the operator's laptop runs on a node, from a template of the operator's own
(``ssh {node} sudo systemctl kill ...``): split like a shell would, then each word formatted, so
a node id never becomes more or fewer words."""

from __future__ import annotations

import shlex
import string
from collections.abc import Mapping


class TemplateError(ValueError):
    """A command template that cannot be used (an unknown placeholder, unbalanced quotes)."""


def format_argv(template: str, option: str, values: Mapping[str, str]) -> list[str]:
    """``template``'s words with ``values`` put in; ``option`` names it in errors."""
    try:
        words = shlex.split(template)
        fields = {
            f for w in words for _t, f, _s, _c in string.Formatter().parse(w) if f is not None
        }
    except ValueError as exc:
        raise TemplateError(f"{option} {template!r}: {exc}") from exc
    unknown = sorted(fields - set(values))
    if unknown:
        known = ", ".join(f"{{{p}}}" for p in values)
        given = ", ".join(f"{{{u}}}" for u in unknown)
        raise TemplateError(
            f"{option} {template!r}: unknown placeholder(s) {given}; "
            f"known: {known} (write a literal brace as {{{{ or }}}})"
        )
    if not words:
        raise TemplateError(f"{option} is empty")
    try:
        return [w.format(**values) for w in words]
    except ValueError as exc:  # a bad format spec: {node:d}
        raise TemplateError(f"{option} {template!r}: {exc}") from exc
