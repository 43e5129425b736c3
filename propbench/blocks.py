"""The blocks of a model: the unit of depth.

Real networks are lists of repeated blocks with a stream passing between them: timm's
``blocks.N``, torchvision's ``layer1.N`` .. ``layer4.N``, Hugging Face's ``h.N`` and
``encoder.layer.N``. :func:`find_blocks` finds them by one rule: among the children of every
``nn.ModuleList`` and ``nn.Sequential`` that are themselves containers (a leaf is a layer,
not a block), the class with the most instances, in registration order, if it has at least
two. A ResNet's BasicBlocks spread over four stages are its 8 blocks; a ConvNeXt's
ConvNeXtBlocks (not its 4 stages) are its blocks; a VGG, whose ``features`` are leaves, has
none.

:func:`select_blocks` also takes the blocks by name: a list of module paths (or modules),
or one glob matched against every module path, of which the outermost matches are kept
(``"layer*.*"`` gives ``layer1.0`` .. ``layer4.1``, not their convolutions).
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any, Optional

from torch import nn

from propbench.errors import ProbeError

AUTO = "auto"


def find_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The repeated blocks of ``model`` as (path, module), in registration order; [] if no
    container holds two blocks of one class."""
    by_class: dict[type, list[tuple[str, nn.Module]]] = {}
    for path, container in model.named_modules():
        if not isinstance(container, (nn.ModuleList, nn.Sequential)):
            continue
        for name, child in container.named_children():
            if list(child.children()):
                by_class.setdefault(type(child), []).append((f"{path}.{name}" if path else name, child))
    best = max(by_class.values(), key=len, default=[])
    return best if len(best) >= 2 else []


def _outermost(found: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    kept: list[tuple[str, nn.Module]] = []
    for path, module in found:  # named_modules order: a parent comes before its children
        if not any(path.startswith(outer + ".") for outer, _ in kept):
            kept.append((path, module))
    return kept


def select_blocks(model: nn.Module, blocks: Any) -> list[tuple[str, nn.Module]]:
    """The blocks ``blocks`` names: ``"auto"`` (:func:`find_blocks`), None/False/[] (none),
    a glob string, or a list of module paths or modules."""
    if blocks is None or blocks is False:
        return []
    named = dict(model.named_modules())
    if isinstance(blocks, str):
        if blocks == AUTO:
            return find_blocks(model)
        found = _outermost([(p, m) for p, m in named.items() if p and fnmatchcase(p, blocks)])
        if not found:
            raise ProbeError(f"blocks={blocks!r}: matches no module path; paths look like "
                             f"{_examples(model)}")
        return found
    paths = {m: p for p, m in named.items()}
    chosen = []
    for item in blocks:
        if isinstance(item, nn.Module):
            if item not in paths:
                raise ProbeError(f"blocks: {type(item).__name__} is not a submodule of the model")
            chosen.append((paths[item], item))
        elif item in named and item:
            chosen.append((item, named[item]))
        else:
            raise ProbeError(f"blocks: no module at {item!r}; paths look like {_examples(model)}")
    for path, _ in chosen:
        inner = [p for p, _ in chosen if p.startswith(path + ".")]
        if inner:
            raise ProbeError(f"blocks: {inner[0]!r} lies inside the block {path!r}; blocks do not nest")
    return chosen


def _examples(model: nn.Module, count: int = 4) -> str:
    found = find_blocks(model)
    paths = [p for p, _ in found] or [p for p, _ in model.named_children()]
    return ", ".join(paths[:count]) + (", ..." if len(paths) > count else "")


def block_summary(blocks: list[tuple[str, nn.Module]]) -> Optional[str]:
    """'12 x GPT2Block (h.0 .. h.11)', or None without blocks."""
    if not blocks:
        return None
    classes = sorted({type(m).__name__ for _, m in blocks})
    span = blocks[0][0] if len(blocks) == 1 else f"{blocks[0][0]} .. {blocks[-1][0]}"
    return f"{len(blocks)} x {'/'.join(classes)} ({span})"
