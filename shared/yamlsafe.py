"""Strict YAML decoding for files people write (tickets, config.yaml).

``msgspec.yaml`` uses PyYAML's safe loader, which silently keeps the last of
two equal keys (``title: a`` then ``title: b``). A person who wrote both meant
something; this loader refuses duplicate keys with the line of the second one,
then converts with msgspec (so type errors still name the field, ``$.priority``).
Only the YAML safe schema is used (no tags that construct objects).
"""

from __future__ import annotations

import datetime
from typing import Any, TypeVar

import msgspec
import yaml

try:
    from yaml import CSafeLoader as _Base
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as _Base  # type: ignore[assignment,unused-ignore]

T = TypeVar("T")


class _StrictLoader(_Base):  # type: ignore[misc,unused-ignore]
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base constructor reports it
                break
            if duplicate:
                raise msgspec.DecodeError(
                    f"duplicate key {str(key)!r} (line {key_node.start_mark.line + 1})"
                )
            seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def decode_yaml(data: bytes, type: type[T]) -> T:
    """Decode YAML ``data`` into ``type``, refusing duplicate mapping keys.

    Raises:
        msgspec.ValidationError: the document does not fit ``type`` (message ends
            with `` - at `$.field```, like msgspec's).
        msgspec.DecodeError: not valid YAML, or a duplicate key.
    """
    try:
        obj = yaml.load(data, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except (yaml.YAMLError, ValueError, LookupError, AttributeError) as exc:
        raise msgspec.DecodeError(" ".join(str(exc).split())) from None
    except RecursionError:
        raise msgspec.DecodeError("nested too deeply") from None
    return msgspec.convert(obj, type=type, builtin_types=(datetime.datetime, datetime.date))
