"""Module and Parameter: a tree of layers that knows its own weights.

A ``Module`` registers what is assigned to it: a ``Parameter`` (a Tensor that is trained), a
child ``Module``, or (through ``register_buffer``) a Tensor that is state but not trained, such
as BatchNorm's running statistics. From that registry come the dotted names
(``blocks.0.attn.q_proj.weight``), ``parameters()`` for the optimizer, ``state_dict()`` /
``load_state_dict()`` for checkpoints, ``train()`` / ``eval()``, and ``to(backend, dtype)``.
The names, orders and semantics are PyTorch's, so a learner can move between the two.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from backends import Backend, backend_of, get_backend
from minift.tensor import Tensor, get_default_backend, get_default_dtype


class Parameter(Tensor):
    """A Tensor that a Module trains: ``requires_grad=True`` unless told otherwise.

    ``Parameter(data)`` shares ``data``'s array when it is a Tensor or an array of a backend.
    """

    def __init__(self, data: Any, requires_grad: bool = True, backend=None, dtype=None) -> None:
        if isinstance(data, Tensor) and backend is None:
            backend = data.backend
        super().__init__(data, requires_grad=requires_grad, backend=backend, dtype=dtype)

    def __repr__(self) -> str:
        return "Parameter" + super().__repr__()[len("Tensor") :]


def new_parameter(shape: tuple, dtype: Any = None, backend: Any = None) -> Parameter:
    """An uninitialised Parameter on ``backend`` (default: the default backend and dtype)."""
    be = get_backend(backend) if backend is not None else get_default_backend()
    return Parameter(be.empty(tuple(shape), dtype=dtype or get_default_dtype()), backend=be)


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict(strict=False)`` did not match, as PyTorch returns it."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class Module:
    """Base class of every layer and model: subclass it, assign children, define ``forward``."""

    def __init__(self) -> None:
        # object.__setattr__ because our own __setattr__ needs these registries to exist
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    # --- registration -----------------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        registries = self.__dict__.get("_parameters")
        if registries is None and isinstance(value, (Parameter, Module)):
            raise AttributeError(
                f"cannot assign {name!r} before Module.__init__() runs; "
                f"call super().__init__() first in {type(self).__name__}.__init__"
            )
        if isinstance(value, Parameter):
            self.register_parameter(name, value)
        elif isinstance(value, Module):
            self.register_module(name, value)
        elif registries is not None and name in self._parameters:
            if value is not None:
                raise TypeError(
                    f"cannot assign {type(value).__name__} to parameter {name!r} of "
                    f"{type(self).__name__} (a Parameter or None is expected)"
                )
            self._parameters[name] = None
        elif registries is not None and name in self._buffers:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(
                    f"buffer {name!r} takes a Tensor or None, got {type(value).__name__}"
                )
            self._buffers[name] = value
        elif registries is not None and name in self._modules:
            if value is not None:
                raise TypeError(
                    f"cannot assign {type(value).__name__} to child module {name!r} of "
                    f"{type(self).__name__} (a Module or None is expected)"
                )
            self._modules[name] = None
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails; read __dict__ directly so that copy/pickle,
        # which probe attributes before __init__ ran, never recurse.
        state = self.__dict__
        for registry in ("_parameters", "_buffers", "_modules"):
            if registry in state and name in state[registry]:
                return state[registry][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        for registry in (self._parameters, self._buffers, self._modules):
            if name in registry:
                del registry[name]
                self._non_persistent.discard(name)
                return
        object.__delattr__(self, name)

    def _claim(self, name: str, keep: dict) -> None:
        """Check ``name`` and remove it from the other registries and the plain attributes.

        Its entry in ``keep`` stays, so that replacing a child keeps its place in the order.
        """
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(
                f"a registered name must be a non-empty string without '.', got {name!r}"
            )
        if name in self.__dict__:
            object.__delattr__(self, name)
        for registry in (self._parameters, self._buffers, self._modules):
            if registry is not keep:
                registry.pop(name, None)
        self._non_persistent.discard(name)

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Add a Parameter (or None, a declared but absent one) under ``name``."""
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(
                f"parameter {name!r} must be a Parameter or None, got {type(param).__name__}"
            )
        self._claim(name, self._parameters)
        self._parameters[name] = param

    def register_buffer(self, name: str, tensor: Tensor | None, persistent: bool = True) -> None:
        """Add state that is not trained (running statistics, masks, caches).

        Persistent buffers go into ``state_dict``; non-persistent ones only move with ``to``.
        """
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(
                f"buffer {name!r} must be a Tensor or None, got {type(tensor).__name__}"
            )
        self._claim(name, self._buffers)
        self._buffers[name] = tensor
        if not persistent:
            self._non_persistent.add(name)

    def register_module(self, name: str, module: Module | None) -> None:
        """Add a child module under ``name`` (what ``self.name = module`` does)."""
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"child {name!r} must be a Module or None, got {type(module).__name__}")
        self._claim(name, self._modules)
        self._modules[name] = module

    add_module = register_module

    # --- traversal --------------------------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, Module]]:
        for name, module in self._modules.items():
            if module is not None:
                yield name, module

    def children(self) -> Iterator[Module]:
        for _, module in self.named_children():
            yield module

    def named_modules(
        self, prefix: str = "", memo: set | None = None
    ) -> Iterator[tuple[str, Module]]:
        """Every module in the tree, this one first (as ``prefix``), each one once."""
        memo = set() if memo is None else memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name, memo)

    def modules(self) -> Iterator[Module]:
        for _, module in self.named_modules():
            yield module

    def _named_members(self, registry: str, recurse: bool) -> Iterator[tuple[str, Tensor]]:
        seen = set()  # a tensor shared by two modules (tied weights) is yielded once
        modules = self.named_modules() if recurse else [("", self)]
        for prefix, module in modules:
            for name, value in getattr(module, registry).items():
                if value is None or id(value) in seen:
                    continue
                seen.add(id(value))
                yield (f"{prefix}.{name}" if prefix else name), value

    def named_parameters(self, recurse: bool = True) -> Iterator[tuple[str, Parameter]]:
        """Dotted names and Parameters; a shared Parameter appears once, under its first name."""
        return self._named_members("_parameters", recurse)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, param in self.named_parameters(recurse):
            yield param

    def named_buffers(self, recurse: bool = True) -> Iterator[tuple[str, Tensor]]:
        return self._named_members("_buffers", recurse)

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        for _, buffer in self.named_buffers(recurse):
            yield buffer

    def get_submodule(self, target: str) -> Module:
        """The module at dotted path ``target`` ("" is this module)."""
        module = self
        for i, part in enumerate(target.split(".") if target else []):
            child = module._modules.get(part)
            if child is None:
                path = ".".join(target.split(".")[:i]) or type(self).__name__
                raise AttributeError(f"{path} has no submodule {part!r} (looking for {target!r})")
            module = child
        return module

    def apply(self, fn: Callable[[Module], Any]) -> Module:
        """Call ``fn`` on every child (recursively), then on this module; returns self."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    # --- modes and training state ---------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        """Training mode (dropout active, BatchNorm uses batch statistics) for the whole tree."""
        for module in self.modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self) -> Module:
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        """Turn gradients on or off for every parameter; turning off also drops stale grads,
        so that no optimizer moves a frozen parameter and frozen ones cost no gradient memory."""
        for param in self.parameters():
            param.requires_grad_(requires_grad)
            if not requires_grad:
                param.grad = None
        return self

    def freeze(self) -> Module:
        return self.requires_grad_(False)

    def unfreeze(self) -> Module:
        return self.requires_grad_(True)

    def zero_grad(self) -> None:
        """Drop every parameter's gradient (set to None, PyTorch's default)."""
        for param in self.parameters():
            param.grad = None

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of scalars in the parameters, each shared Parameter counted once."""
        return sum(
            math.prod(p.shape) for p in self.parameters() if p.requires_grad or not trainable_only
        )

    # --- state dict -------------------------------------------------------------------------
    def state_dict(self, prefix: str = "") -> dict[str, Tensor]:
        """Name -> Tensor (detached, sharing the arrays), in PyTorch's order and naming.

        Each module contributes its parameters, then its persistent buffers, then its children
        in the order they were assigned. A module reachable under two names (tied weights)
        appears under both, as in PyTorch.
        """
        state: dict[str, Tensor] = {}
        for name, param in self._parameters.items():
            if param is not None:
                state[prefix + name] = param.detach()
        for name, buffer in self._buffers.items():
            if buffer is not None and name not in self._non_persistent:
                state[prefix + name] = buffer.detach()
        for name, child in self.named_children():
            state.update(child.state_dict(prefix=f"{prefix}{name}."))
        return state

    def _state_targets(self, prefix: str = "") -> dict[str, Tensor]:
        """Like ``state_dict`` but the live Parameters and buffers themselves."""
        targets = {prefix + n: p for n, p in self._parameters.items() if p is not None}
        targets.update(
            {
                prefix + n: b
                for n, b in self._buffers.items()
                if b is not None and n not in self._non_persistent
            }
        )
        for name, child in self.named_children():
            targets.update(child._state_targets(prefix=f"{prefix}{name}."))
        return targets

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> IncompatibleKeys:
        """Copy values (Tensors or arrays) into the parameters and buffers, keeping their identity.

        Everything is checked first: with ``strict`` a missing or unexpected key is an error, and
        a shape mismatch always is; all problems are listed in one error and nothing is assigned.
        Values are copied and converted to each target's backend and dtype.

        Returns:
            ``(missing_keys, unexpected_keys)``, both empty when ``strict`` succeeds.
        """
        targets = self._state_targets()
        missing = [k for k in targets if k not in state]
        unexpected = [k for k in state if k not in targets]
        problems = [
            f"shape mismatch for {k!r}: checkpoint {_shape_of(k, v)}, model {targets[k].shape}"
            for k, v in state.items()
            if k in targets and _shape_of(k, v) != targets[k].shape
        ]
        if strict:
            problems = (
                ([f"missing keys: {missing}"] if missing else [])
                + ([f"unexpected keys: {unexpected}"] if unexpected else [])
                + problems
            )
        if problems:
            raise RuntimeError(
                f"error(s) in loading state_dict for {type(self).__name__} (nothing was loaded):\n  "
                + "\n  ".join(problems)
            )
        arrays = {k: _converted(v, targets[k]) for k, v in state.items() if k in targets}
        for key, array in arrays.items():
            targets[key].data = array
        return IncompatibleKeys(missing, unexpected)

    # --- moving -----------------------------------------------------------------------------
    def to(self, backend: str | Backend | None = None, dtype: Any = None) -> Module:
        """Move parameters, gradients and buffers in place to ``backend`` and/or cast floating
        ones to ``dtype``. Parameter objects stay the same, so an optimizer still holds them;
        move its state too with ``optimizer.to(...)``.

        ``module.to("float64")`` is read as a dtype, like PyTorch's ``module.to(torch.float64)``.
        """
        if isinstance(backend, str) and backend in ("float16", "float32", "float64"):
            backend, dtype = None, backend
        target = get_backend(backend) if backend is not None else None
        seen = set()
        for module in self.modules():
            for tensor in [*module._parameters.values(), *module._buffers.values()]:
                if tensor is None or id(tensor) in seen:
                    continue
                seen.add(id(tensor))
                _move(tensor, target, dtype)
                if tensor.grad is not None:
                    _move(tensor.grad, target, dtype)
        return self

    def float(self) -> Module:
        return self.to(dtype="float32")

    def double(self) -> Module:
        return self.to(dtype="float64")

    # --- calling and printing ---------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        forward = getattr(type(self), "forward", None)
        if forward is None:
            raise TypeError(f"{type(self).__name__} defines no forward() and cannot be called")
        return forward(self, *args, **kwargs)

    def extra_repr(self) -> str:
        """The one-line settings shown inside ``Name(...)``; layers override it."""
        return ""

    def __repr__(self) -> str:
        lines = self.extra_repr().split("\n") if self.extra_repr() else []
        for name, child in self._modules.items():
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"({name}): {body}")
        if not lines:
            return f"{type(self).__name__}()"
        if len(lines) == 1 and not self._modules:
            return f"{type(self).__name__}({lines[0]})"
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"


def _shape_of(key: str, value: Any) -> tuple:
    if not hasattr(value, "shape"):
        raise TypeError(
            f"load_state_dict: {key!r} is a {type(value).__name__}, not a Tensor or array"
        )
    return tuple(value.shape)


def _converted(value: Any, target: Tensor) -> Any:
    """``value`` as a fresh array on ``target``'s backend with its dtype (never aliasing it)."""
    source = value.data if isinstance(value, Tensor) else value
    owner = value.backend if isinstance(value, Tensor) else backend_of(source)
    if owner is not target.backend and owner.name == "cuda":
        source = owner.to_numpy(source)  # CuPy arrays reach other backends through the host
    array = target.backend.asarray(source, dtype=target.dtype)
    return array.copy() if array is source else array


def _move(tensor: Tensor, target: Backend | None, dtype: Any) -> None:
    """Replace ``tensor``'s array with one on ``target`` (and ``dtype`` if it is floating)."""
    cast = dtype if dtype is not None and tensor.dtype.kind == "f" else None
    moved = tensor.to(target, dtype=cast)
    tensor.data, tensor.backend = moved.data, moved.backend
