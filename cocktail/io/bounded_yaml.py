"""A YAML loader for files cocktail did not write: no anchors or aliases, bounded nesting, integers
no longer than Python converts.

PyYAML's safe loader builds no objects, but it expands aliases (a few hundred bytes of ``&a [*a, *a,
...]`` levels grow to gigabytes) and composes nested collections recursively (a deep one is a
``RecursionError``), and an integer of more digits than ``sys.get_int_max_str_digits()`` is a bare
``ValueError``. :class:`BoundedLoader` refuses all three with a :class:`YAMLLimitError` that
carries the line, so recipes and model cards are read in bounded time and memory.
"""

from __future__ import annotations

import sys

import yaml

MAX_DEPTH = 64  # nested mappings and lists; a recipe needs about 5


class YAMLLimitError(yaml.MarkedYAMLError):
    """YAML that is valid but outside what cocktail reads (an anchor, an alias, deep nesting)."""


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader without anchors and aliases, and with nesting at most ``MAX_DEPTH`` deep."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise YAMLLimitError(problem="YAML anchors and aliases (&name, *name) are not allowed: write the value out",
                                 problem_mark=event.start_mark)
        if self._depth >= MAX_DEPTH:
            raise YAMLLimitError(problem=f"nested more than {MAX_DEPTH} levels deep", problem_mark=event.start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node):
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # more digits than Python converts
            digits = sum(c.isdigit() for c in str(node.value))
            raise YAMLLimitError(problem=f"an integer of {digits} digits (at most {sys.get_int_max_str_digits()} "
                                         "are read)", problem_mark=node.start_mark) from None


BoundedLoader.add_constructor("tag:yaml.org,2002:int", BoundedLoader.construct_yaml_int)
