"""YAML reading for the CLI: duplicate keys refused, CloudFormation tags kept as plain data."""

from __future__ import annotations

from typing import Any

import yaml


class DuplicateKeyError(yaml.MarkedYAMLError):
    """The same key twice in one mapping; its mark is the second one's line and column."""


def describe(error: yaml.YAMLError) -> str:
    """A YAML error in one line for the person fixing the file: `line L, column C: what is wrong`."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    context = getattr(error, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}{f' ({context})' if context and context not in problem else ''}"


class StrictLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """A safe loader that refuses a mapping with the same key twice (the last one would win silently).

    libyaml's parser where PyYAML has it (its wheels do): many times the pure-Python one on large
    files. The constructors are PyYAML's own either way, so the duplicate-key refusal holds for both.
    """


class _PureStrictLoader(yaml.SafeLoader):
    """StrictLoader on the pure-Python parser: its errors name the line and the problem more precisely."""


def _mapping(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    result: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in result:
            raise DuplicateKeyError(problem=f"duplicate key {key!r} (also at line {_line_of(key, node)})",
                                    problem_mark=key_node.start_mark)
        result[key] = loader.construct_object(value_node, deep=deep)
    return result


def _line_of(key: Any, node: yaml.MappingNode) -> int:
    """The line of `key`'s first occurrence in the mapping."""
    for key_node, _ in node.value:
        if key_node.value == key or key_node.value == str(key):
            return key_node.start_mark.line + 1
    return node.start_mark.line + 1


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_PureStrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


class TemplateLoader(StrictLoader):
    """Reads template.yaml: `!Ref X` becomes {"Ref": "X"}, `!GetAtt A.B` {"Fn::GetAtt": [A, B]}, …"""


def _tag(loader: TemplateLoader, suffix: str, node: yaml.Node) -> Any:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = _mapping(loader, node, deep=True)
    return {name: value}


TemplateLoader.add_multi_constructor("!", _tag)


def load(text: str) -> Any:
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except DuplicateKeyError:
        raise
    except yaml.YAMLError as fast:
        # Only a broken file gets here: read it again to say what is wrong as the pure-Python parser does.
        try:
            yaml.load(text, Loader=_PureStrictLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as precise:
            raise precise from None
        raise fast from None


def load_template(text: str) -> Any:
    return yaml.load(text, Loader=TemplateLoader)  # noqa: S506 - a SafeLoader subclass
