"""Each example's gradient of its term of the few-shot loss, one example at a time, with a bounded graph.

A Fisher needs every example's gradient on its own (squared before it is summed), and an example's
term can read many texts: an encoder's query is scored against every passage of its in-batch group.
Differentiating a whole group at once keeps the graph of all its texts (about 1 GB for ten 256-token
texts through bge-base); here the graph kept at once is bounded by
:data:`~cocktail.modeling.footprint.GRAPH_BUDGET` (estimated with
:func:`~cocktail.modeling.footprint.graph_bytes`), GradCache-style (Gao et al. 2021):

1. a unit's rows (:meth:`~cocktail.fewshot.losses.Prepared.gradient_units`) are packed into chunks
   whose graph fits the budget;
2. when one chunk holds them all, it runs once with its graph, and each example's term is
   differentiated through it (the graph kept until the unit's last example);
3. otherwise every chunk runs without a graph; each example's term is differentiated with respect to
   the rows' outputs only (cheap: they are embeddings or scores); then each chunk whose outputs the
   term reads runs again with its graph and is differentiated with that output gradient, one chunk at a
   time, the parameters' ``.grad`` summing the chunks. By the chain rule the sum is the term's gradient.

Step 3 runs each chunk once more per example than step 2 would (a forward pass is about a third of a
forward and backward pass), and keeps one chunk's graph instead of the unit's. After each chunk the
heap's free pages go back to the system: a chunk's activations are smaller than glibc's mmap threshold,
and the holes they left added up to about 250 MB over an example's chunks (2 x bge-base, 256 tokens).
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from cocktail.fewshot.losses import GradientUnit, Prepared
from cocktail.modeling.placement import release_heap


def example_gradients(model: torch.nn.Module, prepared: Prepared, params: list[torch.nn.Parameter],
                      fits: Callable[[int, int], bool]) -> Iterator[None]:
    """For each example in turn, leaves the gradient of its loss term in ``params``' ``.grad`` (which
    must be ``None`` on entry) and yields; the caller reads the gradients and sets them back to ``None``.
    ``fits(rows, longest)``: whether the graph of ``rows`` texts of ``longest`` tokens fits the budget."""
    for unit in prepared.gradient_units():
        chunks = prepared.chunks_of(unit.rows, fits)
        if len(chunks) == 1:
            yield from _through_one_graph(model, prepared, unit, chunks[0], params)
        else:
            yield from _chunk_by_chunk(model, prepared, unit, chunks, params)


def _in_row_order(chunks: list[tuple[list[int], torch.Tensor]]) -> torch.Tensor:
    """The chunks' outputs stacked in the unit's row order (chunks hold rows sorted by length)."""
    positions = torch.tensor([p for members, _ in chunks for p in members])
    stacked = torch.cat([outputs for _, outputs in chunks])
    return stacked[torch.argsort(positions.to(stacked.device))]


def _through_one_graph(model, prepared: Prepared, unit: GradientUnit, chunk, params) -> Iterator[None]:
    members, tensors = chunk
    outputs = _in_row_order([(members, prepared.row_outputs(model, tensors))])
    losses = unit.losses(outputs)
    last = losses.numel() - 1
    for i in range(last + 1):
        torch.autograd.backward(losses[i], inputs=params, retain_graph=i < last)
        yield
    del outputs, losses  # the unit's graph goes before the next unit's forward pass


def _chunk_by_chunk(model, prepared: Prepared, unit: GradientUnit, chunks, params) -> Iterator[None]:
    with torch.no_grad():
        outputs = _in_row_order([(members, prepared.row_outputs(model, tensors)) for members, tensors in chunks])
    outputs.requires_grad_(True)
    losses = unit.losses(outputs)
    last = losses.numel() - 1
    for i in range(last + 1):
        (upstream,) = torch.autograd.grad(losses[i], outputs, retain_graph=i < last)
        for members, tensors in chunks:
            part = upstream[torch.tensor(members, device=upstream.device)]
            if not bool(part.any()):
                continue  # a chunk this term does not read (another query of the group): its gradient is zero
            chunk_outputs = prepared.row_outputs(model, tensors)
            torch.autograd.backward(chunk_outputs, part, inputs=params)
            del chunk_outputs  # one chunk's graph at a time
            release_heap()  # its activations (under the mmap threshold) freed back, not left in the heap
        yield
