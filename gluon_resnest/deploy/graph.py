"""One way to rewrite an MXNet symbol through its JSON graph, shared by every graph pass.

A symbol's JSON holds ``nodes`` (each ``{'op', 'name', 'attrs', 'inputs'}``, an input being an
entry ``[node index, output index, version]``), the indices of its variables (``arg_nodes``)
and its outputs (``heads``). A pass reads the old nodes, appends the new graph's nodes in
topological order with :meth:`Graph.add` (or copies an old one with :meth:`Graph.keep`), maps
old indices to new ones in :attr:`Graph.index`, and builds the result with
:meth:`Graph.to_symbol`.
"""
from __future__ import annotations

import json
from typing import Any

import mxnet as mx

__all__ = ['Graph']

Entry = list  # [node index, output index, version]


class Graph:
    """The old graph of a symbol (read-only) and a new graph being built from it.

    Attributes:
        nodes: The old nodes.
        heads: The old output entries.
        consumers: Old node index -> indices of the nodes reading it (-1 for a graph output).
        new_nodes: The new graph's nodes so far.
        index: Old node index -> the index of the node that replaces it in the new graph.
    """

    def __init__(self, symbol: mx.sym.Symbol) -> None:
        graph = json.loads(symbol.tojson())
        self.nodes: list[dict[str, Any]] = graph['nodes']
        self.heads: list[Entry] = graph['heads']
        self._attrs = graph.get('attrs', {})
        self.consumers: dict[int, list[int]] = {}
        for i, node in enumerate(self.nodes):
            for entry in node['inputs']:
                self.consumers.setdefault(entry[0], []).append(i)
        for entry in self.heads:
            self.consumers.setdefault(entry[0], []).append(-1)
        self.new_nodes: list[dict[str, Any]] = []
        self.index: dict[int, int] = {}

    def op(self, i: int) -> str:
        """Operator of old node ``i`` (``'null'`` for a variable)."""
        return self.nodes[i]['op']

    def attrs(self, i: int) -> dict[str, str]:
        """Attributes of old node ``i`` (strings, as MXNet writes them)."""
        return self.nodes[i].get('attrs', {})

    def add(self, node: dict[str, Any]) -> int:
        """Append a node to the new graph; its new index."""
        self.new_nodes.append(node)
        return len(self.new_nodes) - 1

    def variable(self, name: str) -> Entry:
        """Append a new variable (a weight); the entry that reads it."""
        return [self.add({'op': 'null', 'name': name, 'inputs': []}), 0, 0]

    def remap(self, entry: Entry) -> Entry:
        """An old entry as an entry of the new graph."""
        return [self.index[entry[0]], entry[1], entry[2]]

    def keep(self, i: int) -> int:
        """Copy old node ``i`` unchanged (inputs remapped) into the new graph; its new index."""
        node = self.nodes[i]
        self.index[i] = self.add(dict(node, inputs=[self.remap(e) for e in node['inputs']]))
        return self.index[i]

    def to_symbol(self) -> mx.sym.Symbol:
        """The new graph, its outputs being the old heads remapped."""
        graph = {'nodes': self.new_nodes,
                 'arg_nodes': [i for i, n in enumerate(self.new_nodes) if n['op'] == 'null'],
                 'heads': [self.remap(e) for e in self.heads],
                 'attrs': self._attrs}
        return mx.sym.load_json(json.dumps(graph))
