"""Containers: Sequential, ModuleList, ModuleDict.

They hold children under the names PyTorch gives them ("0", "1", ... for the lists, the keys for
the dict), so that state dict keys such as ``blocks.3.attn.q_proj.weight`` match PyTorch's and
Hugging Face's checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from minift.nn.module import Module


class ModuleList(Module):
    """A list of modules, registered as children "0", "1", ...; it has no forward.

    Deleting or inserting renumbers the children, as PyTorch does.
    """

    def __init__(self, modules: Iterable[Module] | None = None) -> None:
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def _index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(
                f"index {index} is out of range for {type(self).__name__} of length {n}"
            )
        return index % n

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return ModuleList(list(self._modules.values())[index])
        return list(self._modules.values())[self._index(index)]

    def __setitem__(self, index: int, module: Module) -> None:
        self.register_module(list(self._modules)[self._index(index)], module)

    def __delitem__(self, index: int) -> None:
        remaining = [m for i, m in enumerate(self._modules.values()) if i != self._index(index)]
        self._modules.clear()
        self.extend(remaining)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def append(self, module: Module) -> ModuleList:
        self.register_module(str(len(self)), module)
        return self

    def extend(self, modules: Iterable[Module]) -> ModuleList:
        for module in modules:
            self.append(module)
        return self

    def insert(self, index: int, module: Module) -> None:
        items = list(self._modules.values())
        items.insert(index, module)
        self._modules.clear()
        self.extend(items)


class Sequential(ModuleList):
    """Children applied in order: ``Sequential(a, b, c)(x) == c(b(a(x)))``.

    ``Sequential(OrderedDict(name=module, ...))`` names the children instead of numbering them.
    """

    def __init__(self, *modules: Module | Mapping[str, Module]) -> None:
        if len(modules) == 1 and isinstance(modules[0], Mapping):
            super().__init__()
            for name, module in modules[0].items():
                self.register_module(name, module)
        else:
            super().__init__(modules)

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return Sequential(dict(list(self._modules.items())[index]))
        return super().__getitem__(index)

    def forward(self, x: Any) -> Any:
        for module in self._modules.values():
            x = module(x)
        return x


class ModuleDict(Module):
    """A dict of modules; its keys are the children's names."""

    def __init__(self, modules: Mapping[str, Module] | None = None) -> None:
        super().__init__()
        if modules is not None:
            self.update(modules)

    def __getitem__(self, key: str) -> Module:
        if key not in self._modules:
            raise KeyError(f"{key!r} is not in this ModuleDict (keys: {list(self._modules)})")
        return self._modules[key]

    def __setitem__(self, key: str, module: Module) -> None:
        self.register_module(key, module)

    def __delitem__(self, key: str) -> None:
        del self._modules[key]

    def __contains__(self, key: str) -> bool:
        return key in self._modules

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def keys(self) -> Iterable[str]:
        return self._modules.keys()

    def values(self) -> Iterable[Module]:
        return self._modules.values()

    def items(self) -> Iterable[tuple[str, Module]]:
        return self._modules.items()

    def update(self, modules: Mapping[str, Module]) -> None:
        for key, module in modules.items():
            self.register_module(key, module)
