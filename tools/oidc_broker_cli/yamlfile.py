"""YAML reading for the CLI: duplicate keys refused, CloudFormation tags kept as plain data."""

from __future__ import annotations

from typing import Any

import yaml


class DuplicateKeyError(yaml.YAMLError):
    pass


class StrictLoader(yaml.SafeLoader):
    """A safe loader that refuses a mapping with the same key twice (the last one would win silently)."""


def _mapping(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    result: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in result:
            raise DuplicateKeyError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
        result[key] = loader.construct_object(value_node, deep=deep)
    return result


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


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
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass


def load_template(text: str) -> Any:
    return yaml.load(text, Loader=TemplateLoader)  # noqa: S506 - a SafeLoader subclass
