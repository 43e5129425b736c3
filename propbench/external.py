"""What probing a model someone else wrote needs beyond the hooks: calling it with the inputs
it takes, choosing the tensor to backpropagate from what it returns, refusing what cannot be
measured, and leaving the model exactly as it was found.

- Inputs: a dict is passed as keyword arguments, a tuple as positional ones, anything else
  as the one argument.
- Outputs: a tensor is the output; from a dict, a ``transformers`` ``ModelOutput`` (an
  ordered dict), a tuple or a list the ``output`` key (a name or an index) or callable picks
  it, by default the first tensor -- ``last_hidden_state`` of a base model, ``logits`` of one
  with a head (``loss`` is absent without labels).
- Refused with one line (:class:`propbench.errors.ProbeError`): a model on the meta device
  (its weights hold no values) and one without any floating-point parameter.
- ``torch.compile``'d models are probed through the module they wrap (hooks on the compiled
  graph would not fire).
- :func:`unchanged`: the training mode of every module, every ``requires_grad`` flag and
  every buffer (BatchNorm running statistics and their counters, updated by a forward pass
  in train mode) are restored after the pass.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Optional, Union

import torch
from torch import nn

from propbench.errors import ProbeError

OutputKey = Optional[Union[str, int, Callable[[Any], torch.Tensor]]]


def original(model: nn.Module) -> nn.Module:
    """The module a ``torch.compile``'d model wraps (the model itself otherwise)."""
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) and type(model).__name__ == "OptimizedModule" else model


def check_model(model: Any) -> None:
    """ProbeError (one line) for what has nothing to measure."""
    if not isinstance(model, nn.Module):
        raise ProbeError(f"probe needs an nn.Module, got {type(model).__name__}")
    parameters = list(model.parameters())
    if any(t.is_meta for t in [*parameters, *model.buffers()]):
        raise ProbeError("probe: the model is on the meta device (its weights hold no values); "
                         "materialize it first, e.g. model.to_empty(device='cpu') and initialize it")
    if not any(p.is_floating_point() for p in parameters):
        raise ProbeError(f"probe: {type(model).__name__} has no floating-point parameter, so "
                         "no gradient to measure")


def call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def _tensors(output: Any) -> list[tuple[str, torch.Tensor]]:
    if isinstance(output, Mapping):
        items = [(str(k), v) for k, v in output.items()]
    elif isinstance(output, (tuple, list)):
        items = [(f"[{i}]", v) for i, v in enumerate(output)]
    else:
        return []
    return [(k, v) for k, v in items if isinstance(v, torch.Tensor)]


def first_tensor(output: Any) -> Optional[torch.Tensor]:
    """The output itself if it is a tensor, else the first tensor of a dict or sequence."""
    if isinstance(output, torch.Tensor):
        return output
    found = _tensors(output)
    return found[0][1] if found else None


def pick_output(output: Any, key: OutputKey = None) -> tuple[torch.Tensor, str]:
    """(the tensor to backpropagate, its name) -- see the module's doc."""
    kind = type(output).__name__
    if callable(key):
        picked = key(output)
        name = getattr(key, "__name__", "output")
    elif key is not None:
        if isinstance(output, torch.Tensor):
            raise ProbeError(f"output={key!r}: the model returned a tensor, not a {type(key).__name__}-indexed {kind}")
        try:
            picked = output[key]
        except (KeyError, IndexError, TypeError):
            names = ", ".join(k for k, _ in _tensors(output)) or "none"
            raise ProbeError(f"output={key!r}: no such entry in the model's {kind}; its tensors: {names}") from None
        name = str(key)
    elif isinstance(output, torch.Tensor):
        return output, "output"
    else:
        found = _tensors(output)
        if not found:
            raise ProbeError(f"probe: the model returned {kind} with no tensor in it; "
                             "pick one with output=callable")
        name, picked = found[0]
    if not isinstance(picked, torch.Tensor):
        raise ProbeError(f"output={name}: is {type(picked).__name__}, not a tensor")
    return picked, name


@contextmanager
def unchanged(model: nn.Module) -> Iterator[None]:
    """Restore the modules' training modes, the parameters' ``requires_grad`` and every
    buffer's value on leaving (see the module's doc)."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():  # every one: kernels update running statistics without a trace
            for buffer, saved in buffers:
                buffer.copy_(saved)
        for module, training in modes:
            if module.training != training:
                module.training = training
        for parameter, flag in flags:
            if parameter.requires_grad != flag:
                parameter.requires_grad_(flag)
