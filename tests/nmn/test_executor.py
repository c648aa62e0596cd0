"""The compiled layout executor against the define-by-run oracle: outputs and gradients on mixed batches, no
leaks from padding, one trace per bucket shape; layouts that cannot run are refused naming the question."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnet.datasets.shapes import WORDS, shapes_questions
from funcnet.experiments import nmn_task
from funcnet.layers.nmn import Modules, grid_cells, interpret, layout_executor
from funcnet.layouts import LayoutError, LayoutVocab, body_tree, layout_batch, parse_layout
from funcnet.train.tree_batches import TreeBatches
from funcnet.tree_schedule import Buckets

VOCAB = LayoutVocab.create(WORDS)
MODULES = Modules.create(VOCAB, hidden=16)
EXECUTOR = layout_executor(MODULES, VOCAB)
# every module, depths 2 to 8: exists(find), and(find, find), relations chained twice, or at the top
MIXED = [e.layout for e in shapes_questions(40, seed=11)] + [
    parse_layout("exists(find[blue])"),
    parse_layout("exists(or(transform[below](find[red]), transform[right_of](and(find[green], find[square]))))"),
]
TOL = 1e-5  # float32; the executor sums and multiplies the same values in other groupings


def _setup(count):
    cells = jax.random.normal(jax.random.key(1), (count, 9, 12))
    params, _ = EXECUTOR.init(jax.random.key(0), cells, layout_batch(MIXED[:1], VOCAB, width=4))
    # a trained model's attention is near 0 or 1; random weights keep it near 0.5, where min/max pick
    # between near-equal values: scale the find weights up so the choices are clear
    params["find"]["out"] = params["find"]["out"] * 8
    return params, cells


def _oracle(params, cells, layouts):
    return jnp.stack([interpret(MODULES, params, cells[i], layout, VOCAB) for i, layout in enumerate(layouts)])


@pytest.mark.parametrize("width", [3, 16])
def test_executor_equals_the_oracle_in_outputs_and_gradients(width):
    assert {m.module for layout in MIXED for m in _nodes(layout)} == {"find", "transform", "and", "or", "exists"}
    params, cells = _setup(len(MIXED))
    batch = layout_batch(MIXED, VOCAB, width=width)._asdict()
    run = jax.jit(lambda p, c, b: EXECUTOR.apply(p, {}, c, b)[0])
    np.testing.assert_allclose(run(params, cells, batch), _oracle(params, cells, MIXED), atol=TOL)
    weights = jax.random.normal(jax.random.key(2), (len(MIXED), 2))  # a loss that weighs every logit differently
    grads = jax.grad(lambda p, c: (run(p, c, batch) * weights).sum(), argnums=(0, 1))(params, cells)
    expected = jax.grad(lambda p, c: (_oracle(p, c, MIXED) * weights).sum(), argnums=(0, 1))(params, cells)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(got, want, atol=TOL, rtol=1e-4)


def _nodes(layout):
    return [layout, *(node for child in layout.children for node in _nodes(child))]


def test_padding_cannot_leak_into_real_layouts():
    params, cells = _setup(len(MIXED) + 6)
    tight = layout_batch(MIXED, VOCAB, width=5)
    roomy = layout_batch(MIXED, VOCAB, width=5, num_layouts=len(MIXED) + 6, buckets=Buckets((512,), (64,)))
    assert roomy.leaf_tokens.shape[0] > tight.leaf_tokens.shape[0] and roomy.children.shape[0] > tight.children.shape[0]
    run = jax.jit(lambda p, c, b: EXECUTOR.apply(p, {}, c, b)[0])
    np.testing.assert_allclose(run(params, cells, roomy._asdict())[: len(MIXED)], run(params, cells, tight._asdict()),
                               atol=TOL)  # fmt: skip
    # the padding layouts' images and the padded slots get no gradient from the real layouts' answers
    grad = jax.grad(lambda c: run(params, c, roomy._asdict())[: len(MIXED)].sum())(cells)
    assert float(jnp.abs(grad[len(MIXED) :]).max()) == 0.0 and float(jnp.abs(grad[: len(MIXED)]).max()) > 0


def test_one_trace_per_bucket_over_many_batches():
    examples = shapes_questions(640, seed=4)
    batches = TreeBatches([body_tree(e.layout, VOCAB) for e in examples], VOCAB.find, 32, width=16,
                          extras={"image": np.stack([e.image for e in examples])})  # fmt: skip
    model, traces = grid_cells(3, 12, 16), []
    cells_params, _ = model.init(jax.random.key(0), jnp.zeros((1, 30, 30, 3)))

    @jax.jit
    def answer(params, image, fields):
        traces.append(1)
        cells, _ = model.apply(cells_params, {}, image)
        return EXECUTOR.apply(params, {}, cells, fields)[0]

    params, _ = _setup(1)
    shapes = set()
    for epoch in range(2):
        for batch in batches.epoch(epoch):
            fields = {k: batch[k][0] for k in nmn_task.FIELDS}
            shapes.add((fields["leaf_tokens"].shape, fields["children"].shape))
            answer(params, batch["image"][0], fields).block_until_ready()
    assert len(traces) == len(shapes) <= 4  # auto_buckets: two leaf sizes by two step counts at most


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("exists(find[purple])", "question 1 \\('is there a purple shape\\?'\\): find has no word 'purple'"),
        ("exists(and(find[red]))", "question 1 (.*): and takes 2 input\\(s\\), got 1"),
        ("exists(count(find[red]))", "question 1 (.*): unknown module 'count'"),
        ("exists(transform[near](find[red]))", "question 1 (.*): transform has no word 'near'"),
        ("and(find[red], find[circle])", "question 1 (.*): the layout's root must be exists"),
        ("exists(exists(find[red]))", "question 1 (.*): exists answers; it can only be the root"),
        ("exists(and[red](find[red], find[circle]))", "question 1 (.*): and takes no word"),
    ],
)
def test_a_layout_that_cannot_run_is_refused_naming_the_question(layout, message):
    where = ["question 0 ('is there a red shape?')", "question 1 ('is there a purple shape?')"]
    with pytest.raises(LayoutError, match=message):
        layout_batch([parse_layout("exists(find[red])"), parse_layout(layout)], VOCAB, width=4, where=where)


def test_a_malformed_layout_text_says_where():
    with pytest.raises(LayoutError, match="expected ',' or '\\)' after find\\[red\\]"):
        parse_layout("exists(and(find[red] find[circle]))")
