"""Argument checks shared by the package: one wording for every integer, sequence id,
K/V array, token id and position range it validates, and the one ceiling division."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

import numpy as np


def is_int(value: object) -> bool:
    """True for Python and NumPy integers, False for bools (which Python counts as ints)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def require_int(name: str, value: object, minimum: int = 0) -> int:
    """`value` as an int, or `ValueError` naming `name` and the value if it is not an
    integer of at least `minimum`."""
    if not is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def require_seq_id(value: object, name: str = "seq_id") -> int:
    """`value` as a sequence id (a Python int), or `ValueError` naming `name`.

    A sequence id is a Python or NumPy integer and not a bool: ``0.0``, ``False`` and
    ``np.float64(0)`` compare equal to ``0`` and hash like it, so a dictionary of
    sequences would hand them sequence 0. Whether the id names a live sequence is the
    registry's question (`UnknownSequenceError`).
    """
    if type(value) is int:
        return value
    if not is_int(value):
        raise ValueError(
            f"{name} must be a sequence id (a Python or NumPy integer, not a bool), "
            f"got {value!r} ({type(value).__name__})"
        )
    return int(value)


def require_seq_ids(values: object, name: str = "seq_ids") -> list[int]:
    """`values` as a list of sequence ids (`require_seq_id` each, named ``name[i]``).

    Accepted: an iterable of ids (list, tuple, range, 1-D integer array). A single id,
    a string or anything not iterable is a `ValueError` naming `name`.
    """
    if isinstance(values, np.ndarray):
        if values.ndim != 1 or values.dtype.kind not in "iu":
            raise ValueError(
                f"{name} must be a 1-D integer array of sequence ids, got a {values.dtype} "
                f"array of shape {values.shape}"
            )
        return values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"{name} must be a sequence of sequence ids, got {values!r}")
    ids = list(values)
    for i, value in enumerate(ids):
        if type(value) is not int:
            ids[i] = require_seq_id(value, f"{name}[{i}]")
    return ids


def require_array(name: str, value: object, *, device_ok: bool = False) -> np.ndarray:
    """`value` as a NumPy array, or `ValueError` naming `name` if it is not an array.

    Accepted: a NumPy array, or an object that converts itself to one (``__array__``:
    a device array, a CPU tensor). None, lists and scalars are refused: K/V rows are
    arrays, and a list of numbers is a sign of a mix-up, not of K/V. With `device_ok`, a
    numba device array (``__cuda_ndarray__``, such as a zero-copy view of a GPU tensor)
    is returned as it is, not copied to the host: the kernels read it in place.
    """
    if isinstance(value, np.ndarray):
        return value
    if device_ok and getattr(value, "__cuda_ndarray__", False):
        return value
    if value is None or not hasattr(value, "__array__"):
        raise ValueError(f"{name} must be an array, got {type(value).__name__}")
    return np.asarray(value)


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for integers (``b > 0``): the blocks that `a` tokens occupy."""
    return -(-a // b)


def require_token_ids(token_ids: object, name: str = "token_ids") -> list[int]:
    """`token_ids` as a list of Python ints, or `ValueError` naming the offending value.

    Accepted: a sequence (list, tuple, range, ...) of Python or NumPy integers, or a 1-D
    NumPy integer array. Floats, strings, bools and anything else are refused: a
    truncated float would otherwise hit blocks cached for other tokens.
    """
    if isinstance(token_ids, np.ndarray):
        if token_ids.ndim != 1 or token_ids.dtype.kind not in "iu":
            raise ValueError(
                f"{name} must be a 1-D integer array, got a {token_ids.dtype} array of "
                f"shape {token_ids.shape}"
            )
        return token_ids.tolist()
    if isinstance(token_ids, (str, bytes)) or not isinstance(token_ids, Sequence):
        raise ValueError(f"{name} must be a sequence of integers, got {token_ids!r}")
    ids = list(token_ids)
    for i, t in enumerate(ids):
        if type(t) is not int:
            if not is_int(t):
                raise ValueError(f"{name} must hold integers, got {t!r} at index {i}")
            ids[i] = int(t)
    return ids


def require_prompt(
    num_tokens: object,
    token_ids: object,
    block_keys: Sequence[Hashable] | None,
    block_size: int,
) -> tuple[int, list[int] | None]:
    """Check a prompt given by length, token ids or block keys; ``(length, token ids)``.

    `num_tokens` must agree with `token_ids` when both are given; `block_keys` (at most
    one per block the prompt occupies, no key twice) excludes `token_ids`.
    """
    if token_ids is not None:
        token_ids = require_token_ids(token_ids)
        if num_tokens is not None and require_int("num_tokens", num_tokens) != len(token_ids):
            raise ValueError(f"num_tokens={num_tokens} disagrees with {len(token_ids)} token_ids")
        num_tokens = len(token_ids)
    if num_tokens is None:
        raise ValueError("give num_tokens or token_ids")
    n = num_tokens if type(num_tokens) is int and num_tokens >= 0 else require_int(
        "num_tokens", num_tokens
    )
    if block_keys is not None:
        if token_ids is not None:
            raise ValueError("give token_ids or block_keys, not both")
        if isinstance(block_keys, (str, bytes)) or not isinstance(
            block_keys, (Sequence, np.ndarray)
        ):
            raise ValueError(f"block_keys must be a sequence of keys, got {block_keys!r}")
        if len(set(block_keys)) != len(block_keys):
            raise ValueError("block_keys repeat a key: prefix-chained keys name distinct blocks")
        if len(block_keys) > cdiv(n, block_size):
            raise ValueError(
                f"{len(block_keys)} block_keys for {n} tokens, which fill only "
                f"{cdiv(n, block_size)} blocks of {block_size}"
            )
    return n, token_ids


def require_range(what: str, start: int, end: int, limit: int, hint: str = "") -> None:
    """`ValueError` unless `start` and `end` are integers (not bools) with
    ``0 <= start <= end <= limit`` (positions ``start .. end-1``)."""
    if not (is_int(start) and is_int(end)):
        raise ValueError(f"positions must be integers, got {start!r}..{end!r} for {what}")
    if not 0 <= start <= end <= limit:
        raise ValueError(
            f"positions {start}..{end} outside {what}'s {limit} tokens"
            + (f" ({hint})" if hint else "")
        )
