"""The optimizer base class: parameter groups, per-parameter state, and checkpoints.

An optimizer turns gradients into parameter updates, ``p <- p - lr * direction(grad, state)``.
Parameters come in *groups* that share hyper-parameters (a lower lr for the pretrained body,
a higher one for a new head); each parameter owns lazily created state (momentum buffers,
moment estimates). ``state_dict`` has PyTorch's shape, with parameters named by their position
across all groups, so a checkpoint does not depend on object identities.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from backends import Backend, backend_of, get_backend
from minift.autograd import enable_grad, no_grad
from minift.tensor import Tensor


class Optimizer:
    """Base class: subclasses implement ``_update(p, grad, state, group)`` on raw arrays.

    Args:
        params: an iterable of Tensors, or of dicts ``{"params": [...], "lr": ..., ...}``
            whose keys override ``defaults`` for that group.
        defaults: the hyper-parameters every group starts from.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], defaults: dict) -> None:
        if isinstance(params, (Tensor, dict)):
            raise TypeError(
                "params must be an iterable of Tensors or of dicts, got a single "
                f"{type(params).__name__}; wrap it in a list"
            )
        self.defaults = dict(defaults)
        self.param_groups: list[dict] = []
        self.state: dict[Tensor, dict] = {}
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            hyper = ", ".join(f"{k}={v}" for k, v in sorted(group.items()) if k != "params")
            lines.append(f"  group {i}: {len(group['params'])} params, {hyper}")
        return "\n".join(lines + [")"])

    # --- groups -----------------------------------------------------------------------------
    def add_param_group(self, group: dict) -> None:
        """Add a group ``{"params": [...], **hyper}``; missing hyper-parameters take defaults."""
        if not isinstance(group, dict):
            raise TypeError(f"a param group must be a dict, got {type(group).__name__}")
        params = group.get("params")
        if params is None:
            raise ValueError("a param group needs a 'params' entry")
        params = [params] if isinstance(params, Tensor) else list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list in a param group")
        _check_params(params)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        group = {**self.defaults, **group, "params": params}
        self._check_group(group)
        self.param_groups.append(group)

    def _check_group(self, group: dict) -> None:
        """Reject impossible hyper-parameters; subclasses add their own checks."""
        if group["lr"] < 0:
            raise ValueError(f"invalid learning rate {group['lr']}: must be >= 0")
        if group.get("weight_decay", 0.0) < 0:
            raise ValueError(f"invalid weight_decay {group['weight_decay']}: must be >= 0")

    # --- the step ---------------------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradients: ``None`` (frees memory) or fresh zero arrays."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none or p.grad is None:
                    p.grad = None
                else:  # a new array: the old one may alias other gradients
                    p.grad = Tensor._wrap(p.backend.xp.zeros_like(p.grad.data), p.backend)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that requires a gradient and has one.

        Args:
            closure: optional function that recomputes the loss (run with gradients on).
        Returns:
            the closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        with no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None or not p.requires_grad:
                        continue
                    state = self.state.get(p, {})
                    self._update(p, p.grad.data, state, group)
                    if state:  # SGD without momentum keeps no state at all
                        self.state[p] = state
        return loss

    def _update(self, p: Tensor, grad: Any, state: dict, group: dict) -> None:
        raise TypeError(f"{type(self).__name__} must define _update(p, grad, state, group)")

    # --- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """``{"state": {index: {name: array or number}}, "param_groups": [...]}`` (PyTorch's shape).

        Arrays are the live state arrays, not copies (as in PyTorch): save them before the
        next ``step``. Parameters are numbered in order across the groups.
        """
        index = {id(p): i for i, p in enumerate(self._all_params())}
        groups = [{**{k: v for k, v in g.items() if k != "params"},
                   "params": [index[id(p)] for p in g["params"]]} for g in self.param_groups]
        state = {index[id(p)]: dict(s) for p, s in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyper-parameters and state; arrays are copied onto each parameter's backend."""
        if not isinstance(state_dict, dict) or {"state", "param_groups"} - state_dict.keys():
            raise ValueError("an optimizer state_dict needs the keys 'state' and 'param_groups'")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"loaded state_dict has {len(saved_groups)} parameter groups, "
                f"this optimizer has {len(self.param_groups)}"
            )
        for i, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"parameter group {i} has {len(saved['params'])} parameters in the "
                    f"state_dict but {len(group['params'])} in this optimizer"
                )
        params = self._all_params()
        saved_index = [i for g in saved_groups for i in g["params"]]
        by_index = dict(zip(saved_index, params))
        new_state = {}
        for key, entry in state_dict["state"].items():
            if int(key) not in by_index:
                raise ValueError(f"state_dict has state for parameter {key}, which no group holds")
            p = by_index[int(key)]
            new_state[p] = {name: _restore(value, p, name, key) for name, value in entry.items()}
        for saved, group in zip(saved_groups, self.param_groups):
            group.update({k: v for k, v in saved.items() if k != "params"})
        self.state = new_state

    def to(self, backend: str | Backend | None = None, dtype: Any = None) -> Optimizer:
        """Move the state arrays to ``backend`` and/or cast floating ones to ``dtype``.

        Call it after ``model.to(...)``: the parameters move in place, their state does not.
        """
        for state in self.state.values():
            for name, value in state.items():
                if not hasattr(value, "shape"):
                    continue
                if backend is not None:
                    value = get_backend(backend).asarray(backend_of(value).to_numpy(value))
                if dtype is not None and value.dtype.kind == "f":
                    value = value.astype(dtype)
                state[name] = value
        return self

    def _all_params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]


def _check_params(params: list) -> None:
    ids = set()
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"optimizer can only optimize Tensors, item {i} is {type(p).__name__}")
        if not p.is_leaf:
            raise ValueError(f"item {i} is not a leaf tensor (it has a graph); optimize leaves")
        if id(p) in ids:
            raise ValueError(f"parameter {i} appears twice in the same parameter group")
        ids.add(id(p))


def _restore(value: Any, p: Tensor, name: str, key: Any) -> Any:
    """A state entry for parameter ``p``: numbers stay numbers, arrays get p's shape and backend."""
    if not hasattr(value, "shape"):
        return value
    if value.shape == () and p.shape != ():
        return value.item()  # a step counter saved as a 0-d array
    if tuple(value.shape) != p.shape:
        raise ValueError(
            f"state {name!r} of parameter {key} has shape {tuple(value.shape)}, "
            f"but the parameter has shape {p.shape}"
        )
    source = backend_of(value)
    host = source.to_numpy(value) if source.name != p.backend.name else value
    array = p.backend.asarray(host, dtype=p.dtype)
    return array.copy() if array is value else array
