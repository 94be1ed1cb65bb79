"""A static allowlist check of a checkpoint's pickle, before ``torch.load`` sees it.

``torch.load(weights_only=True)`` is the primary guard; this is a second, independent one that
does not depend on process-wide state (``torch.serialization.add_safe_globals`` called by any
other code would widen what ``weights_only`` accepts). The opcodes are only *parsed*
(``pickletools.genops``), never executed. Every global the pickle names must be one a plain
state_dict needs: ``collections.OrderedDict``, torch storages and dtypes, and the
``torch._utils`` tensor/parameter rebuild functions.
"""

from __future__ import annotations

import pickletools

import torch

_ALLOWED = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"),
    ("torch", "device"),
}
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
_FORBIDDEN_OPS = {"EXT1", "EXT2", "EXT4", "OBJ"}  # extension registry / class instantiation by stack
_NEUTRAL_OPS = {"FRAME", "PROTO"}  # touch neither stack nor memo


def _allowed(module: str, name: str) -> bool:
    if (module, name) in _ALLOWED:
        return True
    if module == "torch" and (name.endswith("Storage") or isinstance(getattr(torch, name, None), torch.dtype)):
        return True
    return False


def disallowed_global(data: bytes) -> str | None:
    """The first global (``module.name``) or opcode outside the allowlist, or None if all is plain data.

    Unparseable pickles and globals whose names cannot be resolved statically are reported too:
    when in doubt, refuse.
    """
    memo: dict[int, object] = {}
    recent: list[object] = []  # values pushed by string/get ops (None for anything else)
    try:
        for op, arg, _pos in pickletools.genops(data):
            name = op.name
            if name in _FORBIDDEN_OPS:
                return f"opcode {name}"
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                if not _allowed(module, attr):
                    return f"{module}.{attr}"
                recent.append(None)
            elif name == "STACK_GLOBAL":
                if len(recent) < 2 or not all(isinstance(v, str) for v in recent[-2:]):
                    return "an unresolvable global"
                module, attr = recent[-2], recent[-1]
                if not _allowed(module, attr):  # type: ignore[arg-type]
                    return f"{module}.{attr}"
                recent.append(None)
            elif name in _STRING_OPS:
                recent.append(arg.decode("latin-1") if isinstance(arg, bytes) else arg)
            elif name in _GET_OPS:
                recent.append(memo.get(arg))
            elif name in _PUT_OPS:
                memo[arg] = recent[-1] if recent else None
            elif name == "MEMOIZE":
                memo[len(memo)] = recent[-1] if recent else None
            elif name in _NEUTRAL_OPS:
                pass
            else:
                recent.append(None)
            del recent[:-4]
    except Exception as exc:  # noqa: BLE001 - malformed pickles are refused, whatever the parser says
        return f"malformed pickle data ({type(exc).__name__})"
    return None
