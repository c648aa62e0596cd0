"""The three kinds of model funcnet serves, as request handlers that need no model code.

Each handler reads requests and writes outputs around a compiled function it is given: the jitted model
of a reopened run (``funcnet predict RUN_DIR``), or a program of an exported artefact (``funcnet.deploy.load``,
``funcnet serve``). Both paths share this code, so they take the same requests and give the same outputs.

- ``Supervised``: feature vectors in (the run's standardisation applied), predictions out; with a
  classification loss also the label and the probabilities.
- ``CharLM``: a prime, length, temperature and seed in, generated text out (the prime echoed).
- ``TreeSentiment``: a PTB tree or a sentence in, the label distribution of the root and every node out.

Imports: numpy, jax and funcnet's tree parsing and scheduling only (see ``funcnet.deploy``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import jax
import numpy as np

from ..parse_trees import Tree, TreeParseError, Vocabulary, leaves, parse_tree
from ..tree_schedule import Buckets, TreeBatch, grouped_batch
from .requests import RequestError, padded, padded_size

MAX_LENGTH = 100_000  # characters one generation request may ask for
TREE_FIELDS = TreeBatch._fields  # the tree model's inputs, in order
# Trees are scheduled into these leaf and step counts (powers of two), so a stream of requests compiles a
# few programs: one per (trees, leaves, steps) size met, each a power of two.
TREE_BUCKETS = Buckets(tuple(2**k for k in range(3, 17)), tuple(2**k for k in range(2, 14)))


def standardized(preprocessing: Mapping[str, Any], name: str, value: Any) -> Any:
    """``value`` of input ``name`` as the model saw it in training: standardized if the run recorded so.

    >>> standardized({"standardize": {"x": {"mean": [1.0, 2.0], "std": [2.0, 4.0]}}}, "x", [[3.0, 6.0]])
    array([[1., 1.]], dtype=float32)
    """
    stats = preprocessing.get("standardize", {}).get(name)
    if stats is None:
        return value
    mean, std = np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32)
    return ((np.asarray(value, np.float32) - mean) / std).astype(np.float32)


class Supervised:
    """``{"x": [...]}`` (one key per model input), or a bare list for a model of one input, in; ``{"prediction":
    outputs}`` out, with a classification loss (``loss``) also ``label`` and ``probabilities``.

    ``inputs``: each input's name, one example's shape and its dtype; ``forward(*batched_inputs) -> outputs``.
    """

    def __init__(self, inputs: Mapping[str, tuple[Sequence[int], str]], preprocessing: Mapping[str, Any], loss: str,
                 forward: Callable[..., Any]):  # fmt: skip
        self.inputs = {name: (tuple(shape), np.dtype(dtype)) for name, (shape, dtype) in inputs.items()}
        self.preprocessing, self.loss, self.forward = preprocessing, loss, forward

    def prepare(self, request: Any) -> dict[str, np.ndarray]:
        names = list(self.inputs)
        if not isinstance(request, dict):
            if len(names) > 1:
                raise RequestError(f"expected an object with the inputs {names}, got {type(request).__name__}")
            request = {names[0]: request}
        unknown = sorted(set(request) - set(names))
        if unknown:
            raise RequestError(f"{unknown[0]}: not an input of the model; its inputs are {names}")
        prepared = {}
        for name, (shape, dtype) in self.inputs.items():
            if name not in request:
                raise RequestError(f"{name}: missing; the model's inputs are {names}")
            try:
                value = np.asarray(request[name], dtype=dtype)
            except (TypeError, ValueError, OverflowError):
                raise RequestError(f"{name}: expected numbers of dtype {dtype}, got {request[name]!r:.60}") from None
            if value.shape != shape:
                raise RequestError(f"{name}: expected shape {list(shape)}, got {list(value.shape)}")
            prepared[name] = standardized(self.preprocessing, name, value[None])[0]
        return prepared

    def predict(self, prepared: list[dict[str, np.ndarray]], batch_size: int) -> list[dict[str, Any]]:
        results = []
        for start in range(0, len(prepared), batch_size):
            chunk = prepared[start : start + batch_size]
            inputs = [padded([r[name] for r in chunk], batch_size)[0] for name in self.inputs]
            outputs = np.asarray(self.forward(*inputs))[: len(chunk)]
            results += self._describe(outputs)
        return results

    def example(self) -> Any:
        """The training means of standardized inputs (to 4 decimals; zeros for the others); a bare list for a
        model of one input."""
        stats = self.preprocessing.get("standardize", {})
        means = {name: np.broadcast_to(np.round(stats[name]["mean"], 4) if name in stats else np.zeros((), dtype),
                                       shape).tolist() for name, (shape, dtype) in self.inputs.items()}  # fmt: skip
        return next(iter(means.values())) if len(means) == 1 else means

    def _describe(self, outputs: np.ndarray) -> list[dict[str, Any]]:
        """One record per row of ``outputs`` (computed for the batch at once: it runs per request)."""
        fields = {"prediction": outputs.tolist()}
        if self.loss == "softmax_cross_entropy":
            probabilities = np.exp(outputs - outputs.max(-1, keepdims=True))
            probabilities /= probabilities.sum(-1, keepdims=True)
            fields.update(label=np.argmax(outputs, -1).tolist(), probabilities=probabilities.tolist())
        elif self.loss == "binary_cross_entropy":
            fields["probability"] = (1 / (1 + np.exp(-outputs))).tolist()
        return [dict(zip(fields, values, strict=True)) for values in zip(*fields.values(), strict=True)]


def encode_chars(chars: str, text: str) -> np.ndarray:
    """Character ids of ``text`` (``chars[i]`` is id ``i``; id 0, the unknown marker, for the others).

    >>> encode_chars("\\x00ab", "abz").tolist()
    [1, 2, 0]
    """
    table = {c: i for i, c in enumerate(chars) if i > 0}
    return np.fromiter((table.get(c, 0) for c in text), dtype=np.int32, count=len(text))


def decode_chars(chars: str, ids: Sequence[int]) -> str:
    """The characters of ``ids``; the unknown marker shows as ``?``.

    >>> decode_chars("\\x00ab", [2, 0, 1])
    'b?a'
    """
    return "".join("?" if i == 0 else chars[i] for i in np.asarray(ids).tolist())


def generation_steps(prime_len: int, length: int) -> int:
    """The program size (``steps``) that generates ``length`` characters after a prime of ``prime_len``: a power
    of two of at least 64, so primes and lengths share a few programs.

    >>> generation_steps(1, 400), generation_steps(10, 20)
    (512, 64)
    """
    needed = prime_len - 1 + length
    return max(64, 1 << (needed - 1).bit_length())


def generate_text(generate: Callable[..., Any], chars: str, *, length: int, temperature: float, prime: str,
                  seed: int, steps: int | None = None) -> str:  # fmt: skip
    """``length`` characters drawn after ``prime`` by ``generate(tokens [steps + 1], prime_len, temperature,
    key_data) -> drawn [steps]`` (``funcnet.experiments.charlm.generation``, jitted or exported)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    prime_ids = encode_chars(chars, prime or "\n")
    needed = len(prime_ids) - 1 + length
    steps = steps or generation_steps(len(prime_ids), length)
    if steps < needed:
        raise ValueError(f"steps={steps} is less than the prime's length - 1 + length = {needed}")
    tokens = np.zeros(steps + 1, np.int32)
    tokens[: len(prime_ids)] = prime_ids
    key_data = np.asarray(jax.random.key_data(jax.random.key(seed)))
    drawn = generate(tokens, np.int32(len(prime_ids)), np.float32(temperature), key_data)
    return decode_chars(chars, np.asarray(drawn)[len(prime_ids) - 1 : needed])


class CharLM:
    """``{"prime": str, "length": int, "temperature": float, "seed": int}`` (each optional: ``defaults`` fill them;
    a bare string is a prime) in; ``{"prime": ..., "text": ...}`` out.

    ``chars``: the vocabulary (``chars[0]`` the unknown marker); ``generate``: as ``generate_text`` calls it.
    """

    FIELDS: ClassVar[dict[str, Any]] = {"prime": str, "length": int, "temperature": (int, float), "seed": int}

    def __init__(self, chars: str, defaults: Mapping[str, Any], generate: Callable[..., Any]):
        self.chars, self.defaults, self.generate = chars, dict(defaults), generate

    def prepare(self, request: Any) -> dict[str, Any]:
        if isinstance(request, str):
            request = {"prime": request}
        if not isinstance(request, dict):
            raise RequestError(f"expected an object with a prime, length, temperature or seed, got {request!r:.60}")
        for name, value in request.items():
            kind = self.FIELDS.get(name)
            if kind is None:
                near = difflib.get_close_matches(name, self.FIELDS, n=1)
                hint = f". Did you mean {near[0]!r}?" if near else ""
                raise RequestError(f"{name}: not a field of a sample request; its fields are {list(self.FIELDS)}{hint}")
            if not isinstance(value, kind) or isinstance(value, bool):
                raise RequestError(f"{name}: expected {_kind_name(kind)}, got {value!r:.60}")
        options = {**{k: self.defaults[k] for k in self.FIELDS}, **request}
        if not 1 <= options["length"] <= MAX_LENGTH:
            raise RequestError(f"length: expected an int from 1 to {MAX_LENGTH}, got {options['length']}")
        if not options["temperature"] > 0:
            raise RequestError(f"temperature: expected a number > 0, got {options['temperature']}")
        return options

    def example(self) -> dict[str, Any]:
        return {"prime": self.defaults["prime"], "length": min(self.defaults["length"], 100)}

    def predict(self, prepared: list[dict[str, Any]], batch_size: int) -> list[dict[str, Any]]:
        del batch_size  # one sequence at a time; lengths are bucketed (generation_steps)
        return [{"prime": r["prime"], "text": generate_text(self.generate, self.chars, **r)} for r in prepared]


def _kind_name(kind: Any) -> str:
    return {str: "a string", int: "an int", (int, float): "a number"}[kind]


def right_branching(words: list[str]) -> Tree:
    """``a (good film)``: a sentence as a binary tree (labels 2, unused).

    >>> right_branching(["a", "good", "film"]).children[1].children[0].token
    'good'
    """
    tree = Tree(2, token=words[-1])
    for word in reversed(words[:-1]):
        tree = Tree(2, (Tree(2, token=word), tree))
    return tree


def _all_nodes(tree: Tree) -> list[Tree]:
    return [tree, *(node for child in tree.children for node in _all_nodes(child))]


class TreeSentiment:
    """``{"tree": "(3 (2 a) (3 good))"}`` (a PTB tree; its labels are not used) or ``{"sentence": "a good film"}``
    (split at spaces into a right-branching binary tree); a bare string is a tree if it starts with ``(``, else a
    sentence. Out: the root's ``label`` and ``probabilities`` and every node's (``nodes``, pre-order, with ``text``).

    ``tokens``: the vocabulary; ``width``: the schedule's width the model trained with, the least width of a
    served batch; ``forward(*fields)``: the model on one group of scheduled trees (``TREE_FIELDS``, each with a
    leading group axis of 1) -> logits ``[1, rows, classes]``. A batch of B trees (padded to a power of two) is
    scheduled ``max(B, width)`` wide: B sentences take as many steps as the deepest one (one node of each per
    step), so batching does not lengthen the scan. ``forward`` takes any width (the exported program's is symbolic).
    """

    def __init__(self, tokens: Sequence[str], width: int, forward: Callable[..., Any]):
        self.vocab = Vocabulary.from_tokens(tokens)
        self.width, self.forward = width, forward

    def prepare(self, request: Any) -> Tree:
        if isinstance(request, str):
            request = {"tree" if request.lstrip().startswith("(") else "sentence": request}
        if not isinstance(request, dict) or len(set(request) & {"tree", "sentence"}) != 1 or len(request) != 1:
            raise RequestError('expected {"tree": "(3 (2 a) (3 good))"} or {"sentence": "a good film"}')
        if "tree" in request:
            try:
                tree = parse_tree(str(request["tree"]))
            except TreeParseError as error:
                raise RequestError(f"tree: {error}") from None
        else:
            words = str(request["sentence"]).split()
            if not words:
                raise RequestError("sentence: expected at least one word, got none")
            tree = right_branching(words)
        wide = [n for n in _all_nodes(tree) if len(n.children) > 2]
        if wide:
            raise RequestError(f"tree: a node has {len(wide[0].children)} children; the Tree-LSTM is binary")
        return tree

    def example(self) -> dict[str, str]:
        """A sentence of the first words of the vocabulary."""
        return {"sentence": " ".join(self.vocab.tokens[1:4])}

    def predict(self, prepared: list[Tree], batch_size: int) -> list[dict[str, Any]]:
        outputs = []
        for start in range(0, len(prepared), batch_size):
            trees = prepared[start : start + batch_size]
            size = padded_size(len(trees), batch_size)
            batch = grouped_batch(trees, self.vocab, groups=1, trees_per_group=size, width=max(size, self.width),
                                  buckets=tree_buckets(trees, size))  # fmt: skip
            logits = np.asarray(self.forward(*[batch[f] for f in TREE_FIELDS]))[0]
            probabilities = np.exp(logits - logits.max(-1, keepdims=True))
            probabilities /= probabilities.sum(-1, keepdims=True)
            rows = _Rows(batch, probabilities)
            for t, tree in enumerate(trees):
                nodes = rows.outputs(tree, int(batch["roots"][0, t]))
                outputs.append({"label": nodes[0]["label"], "probabilities": nodes[0]["probabilities"], "nodes": nodes})
        return outputs


def tree_buckets(trees: Sequence[Tree], size: int) -> Buckets:
    """The shapes a batch of ``trees`` padded to ``size`` is scheduled at: ``size`` times the longest tree's
    leaves (to a power of two, at least 4) leaf slots, and ``TREE_BUCKETS``' steps. A batch of sentences then
    takes a shape set by its size and its longest sentence alone, so a warm-up of one request per length
    compiles every shape a stream of such requests meets.

    >>> from funcnet.parse_trees import parse_tree
    >>> tree_buckets([parse_tree("(2 (2 a) (2 (2 b) (2 c)))"), parse_tree("(2 d)")], 2).leaves
    (8,)
    """
    longest = max(len(leaves(tree)) for tree in trees)
    return Buckets((size * max(4, 1 << (longest - 1).bit_length()),), TREE_BUCKETS.steps)


class _Rows:
    """Every node's outputs, read from its buffer row (``funcnet.tree_schedule``'s layout) of a scheduled batch."""

    def __init__(self, batch: Mapping[str, np.ndarray], probabilities: np.ndarray):
        self.leaf_slots, self.width = batch["leaf_tokens"].shape[1], batch["children"].shape[2]
        self.children, self.child_mask = batch["children"][0], batch["child_mask"][0]
        self.labels = probabilities.argmax(-1).tolist()
        self.rounded = np.round(probabilities.astype(float), 4).tolist()

    def outputs(self, tree: Tree, root: int) -> list[dict[str, Any]]:
        """Pre-order ``{"text", "label", "probabilities"}`` of ``tree``'s nodes (no recursion: deep trees)."""
        order, stack = [], [(tree, root)]
        while stack:
            node, row = stack.pop()
            order.append((node, row))
            if node.children:
                step, slot = divmod(row - self.leaf_slots, self.width)
                kids = self.children[step, slot][self.child_mask[step, slot] > 0].tolist()
                stack.extend(reversed(list(zip(node.children, kids, strict=True))))
        text: dict[int, str] = {}
        for node, _ in reversed(order):  # children before their parents
            text[id(node)] = " ".join(text[id(c)] for c in node.children) if node.children else node.token
        return [{"text": text[id(n)], "label": self.labels[r], "probabilities": self.rounded[r]} for n, r in order]


KINDS = ("supervised", "char_lm", "tree_sentiment", "nmn")


def build(kind: str, config: Mapping[str, Any], preprocessing: Mapping[str, Any],
          programs: Mapping[str, Callable[..., Any]]) -> Any:  # fmt: skip
    """The handler of a ``kind`` of model from its ``config`` (what ``funcnet export`` records in the manifest's
    ``"handler"``), its run's preprocessing and its compiled ``programs`` (by name: ``forward``, ``generate``).

    >>> handler = build("supervised", {"inputs": {"x": {"shape": [2], "dtype": "float32"}}, "loss": "mse"}, {},
    ...                 {"forward": lambda x: x.sum(-1, keepdims=True)})
    >>> handler.predict([handler.prepare([1.0, 2.0])], batch_size=8)
    [{'prediction': [3.0]}]
    """
    if kind == "supervised":
        inputs = {name: (spec["shape"], spec["dtype"]) for name, spec in config["inputs"].items()}
        return Supervised(inputs, preprocessing, config["loss"], programs["forward"])
    if kind == "char_lm":
        return CharLM(config["chars"], config["defaults"], programs["generate"])
    if kind == "tree_sentiment":
        return TreeSentiment(config["tokens"], config["width"], programs["forward"])
    if kind == "nmn":
        from .visual_questions import VisualQuestions  # it builds on this module's tree_buckets

        return VisualQuestions(config["words"], config["width"], config["image_shape"], programs["forward"])
    raise ValueError(f"unknown kind {kind!r}; funcnet serves {list(KINDS)}")
