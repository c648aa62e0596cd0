"""A character LSTM language model trained side by side in funcnet, raw JAX, Flax, Haiku, Equinox and PyTorch.

    pip install -e '.[bench]'
    python experiments/bench/charlstm.py            # 2.5 min measured at load 4 on 2 cores
    python experiments/bench/charlstm.py --quick    # ~28 s (10 systems: no funcnet_jvp, funcnet_rows), noisy
    python experiments/bench/charlstm.py --systems funcnet,jax,torch --rounds 10

Workload: vocabulary 65, embedding 64, one LSTM layer of 256, sequences of 100, batch 32, next-character
cross-entropy (mean over the batch and time), Adam 2e-3, zero initial carry every batch. The data are
8 fixed batches of uniformly random characters, cycled. Every system starts from the SAME initial weights
(drawn once with NumPy, copied into each library's layout: per-gate kernels for Flax, gates reordered and
the forget bias shifted for Haiku's LSTM, transposed for Equinox and PyTorch), so their initial losses
agree (about ln 65 = 4.174); the script prints them. Figures: training tokens/s (32 x 100 per step) in
steady state and the time to the first step (trace, compile, run), as ratios to raw JAX.

Systems, each written the way that library's users write it:
  funcnet  fn.serial(embed=fn.embed(65, 64, deferred=True), lstm=fn.rnn(fn.lstm_cell(256)), head=fn.dense(65)),
           funcnet.experiments.charlm.lm_loss, create_train_state + make_train_step (jit, state donated);
           deferred=True, as in funcnet.experiments.charlm: the LSTM folds the embedding into its input
           projection, (table @ w_ih + b)[ids] (fn.Embedded), the same function and params
  jax      the naive scanned cell: x @ Wx + h @ Wh with one [256, 1024] recurrent kernel, lax.scan over
           time-major inputs, optax.adam, jax.jit (state donated); also the "naive JAX cell" reference
  flax     flax.linen: nn.Embed, nn.RNN(nn.OptimizedLSTMCell(256)) (Flax's faster LSTM for hidden sizes
           up to ~2048, per its docs), nn.Dense; flax TrainState; jax.jit (state donated)
  haiku    hk.Embed, hk.LSTM(256) under hk.dynamic_unroll, hk.Linear; optax; jax.jit (state donated)
  equinox  eqx.nn.Embedding, eqx.nn.LSTMCell under lax.scan per sequence, jax.vmap over the batch,
           eqx.filter_value_and_grad, eqx.filter_jit(donate="all-except-first") with the batch first
  torch    nn.Embedding, nn.LSTM(batch_first=True) (oneDNN's fused LSTM on CPU), nn.Linear,
           F.cross_entropy, torch.optim.Adam; threads = cores
  funcnet_bf16  funcnet's model with mixed precision: fn.lstm_cell(256, compute_dtype="bfloat16") and
           fn.dense(65, compute_dtype="bfloat16") (funcnet.precision: matmul operands rounded to bfloat16,
           float32 products); params, states, gradients, loss and Adam stay float32
  torch_bf16  the torch system under torch.autocast("cpu", dtype=torch.bfloat16), PyTorch's mixed precision
           (its LSTM and Linear take bfloat16 operands; the loss and Adam stay float32): the fair peer of
           funcnet_bf16. Mixed systems start from the same weights; their losses differ from float32 by
           bfloat16 rounding (~1e-6 relative at this near-uniform start), checked to 1e-2.
  funcnet_jvp  funcnet's model with fn.lstm_cell(256, forward_mode=True): the LSTM's custom JVP (which
           forward mode also differentiates, and which looks the embedding rows up instead of folding them)
           instead of its default custom VJP; the price of forward mode
  funcnet_rows  funcnet's model with fn.embed(65, 64) (deferred=False): the rows looked up, then x @ w_ih over
           [batch * time, 64]; what the fold gains
  funcnet_cores, funcnet_bf16_cores  funcnet and funcnet_bf16 data-parallel over one CPU device per core:
           funcnet.train.cpu_devices() at start-up (for the whole process: every other JAX system still runs
           on device 0; --jax-cpu-devices 1 keeps JAX's one device, to check that the others do not move,
           experiments/results/cpu_devices.md), make_train_step on a mesh of all devices (the batch
           split across them, the gradients averaged), at most 2 steps in flight, as fit keeps them on such a mesh

Targets (issue 6): funcnet/jax >= 1.35 and funcnet/torch >= 0.8 tokens/s; the same two for funcnet_bf16,
and funcnet_bf16/torch_bf16 >= 0.8 (both mixed); the torch ones also for the _cores systems.

Every JAX system donates its training state to the step. Method: see _common.py.
"""

from __future__ import annotations

import math
import sys
from functools import partial

import _common as common
import _peers as peers

SYSTEMS = (
    "funcnet",
    "jax",
    "flax",
    "haiku",
    "equinox",
    "torch",
    "funcnet_bf16",
    "torch_bf16",
    "funcnet_jvp",
    "funcnet_rows",
    "funcnet_cores",
    "funcnet_bf16_cores",
)
VOCAB, EMBED, HIDDEN, SEQUENCE, BATCH, LEARNING_RATE = 65, 64, 256, 100, 32, 2e-3
NUM_BATCHES = 8
LOSS_AFTER = 3  # every system's loss is also reported after this many steps (same data, same init)
TARGETS = (  # issue 6: (system, other, threshold on system/other tokens/s)
    ("funcnet", "jax", 1.35),
    ("funcnet", "torch", 0.8),
    ("funcnet_bf16", "jax", 1.35),
    ("funcnet_bf16", "torch", 0.8),
    ("funcnet_bf16", "torch_bf16", 0.8),
    ("funcnet_cores", "torch", 0.8),
    ("funcnet_bf16_cores", "torch_bf16", 0.8),
)


def make_data(seed: int, num_batches: int = NUM_BATCHES):
    """``num_batches`` batches ``(x [B, T], y [B, T])`` of int32 ids and the shared initial weights (NumPy).

    Gates are in the order i, f, g, o; ``b`` starts at 1 in the forget block and 0 elsewhere.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, (num_batches, BATCH, SEQUENCE + 1), dtype=np.int32)
    batches = [(a[:, :-1].copy(), a[:, 1:].copy()) for a in ids]
    bound = HIDDEN**-0.5

    def uniform(shape):
        return rng.uniform(-bound, bound, shape).astype(np.float32)

    b = np.zeros(4 * HIDDEN, np.float32)
    b[HIDDEN : 2 * HIDDEN] = 1.0
    weights = {
        "embed": rng.standard_normal((VOCAB, EMBED), dtype=np.float32),
        "w_ih": uniform((EMBED, 4 * HIDDEN)),
        "w_hh": uniform((HIDDEN, 4 * HIDDEN)),
        "b": b,
        "w_out": uniform((HIDDEN, VOCAB)),
        "b_out": np.zeros(VOCAB, np.float32),
    }
    return batches, weights


def gates(w, order: str):
    """Reorders the gate blocks of the last axis from ``ifgo`` to ``order``."""
    import numpy as np

    blocks = dict(zip("ifgo", np.split(w, 4, axis=-1), strict=True))
    return np.concatenate([blocks[g] for g in order], axis=-1)


# ---------------------------------------------------------------- systems


def funcnet_model(compute_dtype=None, forward_mode=False, deferred=True):
    import funcnet as fn

    return fn.serial(
        embed=fn.embed(VOCAB, EMBED, deferred=deferred),
        lstm=fn.rnn(fn.lstm_cell(HIDDEN, compute_dtype=compute_dtype, forward_mode=forward_mode)),
        head=fn.dense(VOCAB, compute_dtype=compute_dtype),
    )


def funcnet_loss(logits, batch):
    """funcnet's char LM loss: per-sequence mean cross-entropy (and bits per character)."""
    from funcnet.experiments.charlm import lm_loss

    return lm_loss(logits, batch)


def funcnet_params(w):
    return {
        "embed": {"embedding": w["embed"]},
        "lstm": {"w_ih": w["w_ih"], "w_hh": w["w_hh"], "b": w["b"]},
        "head": {"kernel": w["w_out"], "bias": w["b_out"]},
    }


def build_funcnet(
    batches, weights, seed, name="funcnet", compute_dtype=None, forward_mode=False, deferred=True, all_devices=False
):
    import jax
    import optax

    from funcnet.train.batch_feed import max_in_flight
    from funcnet.train.state import batch_sharded

    optimizer = optax.adam(LEARNING_RATE)
    model = funcnet_model(compute_dtype, forward_mode, deferred)
    step, state, mesh, init = peers.funcnet_train(
        model, funcnet_loss, optimizer, batches[0][0], funcnet_params(weights), seed, name, all_devices
    )
    sharding = batch_sharded(mesh)
    data = [jax.device_put({"x": x, "y": y}, sharding) for x, y in batches]  # no mask: every example is real
    in_flight = max_in_flight(mesh, prefetching=False) if mesh.size > 1 else 0  # fit's bound on such a mesh
    system = peers.jax_system(
        name, step, state, data, cache_size=step.jitted._cache_size, loss_of=lambda m: m["loss"], in_flight=in_flight
    )
    return system, (init if compute_dtype is None or init != "shared" else "shared, bf16")


def jax_step(weights):
    """The naive scanned cell's step ``(state, (x, y)) -> (state, loss)`` (jitted, state donated) and its state."""
    import jax
    import jax.numpy as jnp
    import optax
    from jax import lax

    params = jax.tree.map(jnp.asarray, weights)
    optimizer = optax.adam(LEARNING_RATE)

    def loss_fn(p, x, y):
        xs = jnp.swapaxes(jnp.take(p["embed"], x, axis=0), 0, 1)  # [T, B, E]

        def cell(carry, x_t):
            h, c = carry
            z = x_t @ p["w_ih"] + h @ p["w_hh"] + p["b"]
            i, f, g, o = jnp.split(z, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        zeros = jnp.zeros((x.shape[0], HIDDEN))
        _, hs = lax.scan(cell, (zeros, zeros), xs)  # [T, B, H]
        logits = jnp.swapaxes(hs, 0, 1) @ p["w_out"] + p["b_out"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @partial(jax.jit, donate_argnums=0)
    def step(state, batch):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return step, (params, optimizer.init(params))


def build_jax(batches, weights, seed):
    import jax.numpy as jnp

    del seed
    step, state = jax_step(weights)
    data = [(jnp.asarray(x), jnp.asarray(y)) for x, y in batches]
    return peers.jax_system("jax", step, state, data, cache_size=step._cache_size), "shared"


def build_flax(batches, weights, seed):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax
    from flax.training import train_state

    class CharLSTM(nn.Module):
        @nn.compact
        def __call__(self, ids):
            x = nn.Embed(VOCAB, EMBED, name="embed")(ids)
            h = nn.RNN(nn.OptimizedLSTMCell(HIDDEN, name="cell"))(x)
            return nn.Dense(VOCAB, name="head")(h)

    data = [{"x": jnp.asarray(x), "y": jnp.asarray(y)} for x, y in batches]
    model = CharLSTM()
    native = model.init(jax.random.key(seed), data[0]["x"])["params"]
    values = {"embed": {"embedding": weights["embed"]}, "head": {"kernel": weights["w_out"], "bias": weights["b_out"]}}
    w_ih, w_hh, b = (dict(zip("ifgo", _split4(weights[k]), strict=True)) for k in ("w_ih", "w_hh", "b"))
    values["cell"] = {f"i{g}": {"kernel": w_ih[g]} for g in "ifgo"}
    values["cell"] |= {f"h{g}": {"kernel": w_hh[g], "bias": b[g]} for g in "ifgo"}
    params, init = peers.shared(native, values, "flax")
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.adam(LEARNING_RATE))

    @partial(jax.jit, donate_argnums=0)
    def train_step(state, batch):
        def loss_fn(params):
            logits = state.apply_fn({"params": params}, batch["x"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), loss

    return peers.jax_system("flax", train_step, state, data, cache_size=train_step._cache_size), init


def _split4(w):
    import numpy as np

    return np.split(w, 4, axis=-1)


def build_haiku(batches, weights, seed):
    import haiku as hk
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    def forward(ids):
        x = hk.Embed(VOCAB, EMBED, name="embed")(ids)
        core = hk.LSTM(HIDDEN, name="lstm")
        h, _ = hk.dynamic_unroll(core, x, core.initial_state(ids.shape[0]), time_major=False)
        return hk.Linear(VOCAB, name="head")(h)

    net = hk.without_apply_rng(hk.transform(forward))
    data = [(jnp.asarray(x), jnp.asarray(y)) for x, y in batches]
    native = net.init(jax.random.key(seed), data[0][0])
    forget = np.zeros(4 * HIDDEN, np.float32)
    forget[HIDDEN : 2 * HIDDEN] = 1.0  # hk.LSTM adds 1 to the forget gate itself
    values = {
        "embed": {"embeddings": weights["embed"]},
        "lstm/linear": {
            "w": gates(np.concatenate([weights["w_ih"], weights["w_hh"]]), "igfo"),
            "b": gates(weights["b"] - forget, "igfo"),
        },
        "head": {"w": weights["w_out"], "b": weights["b_out"]},
    }
    params, init = peers.shared(native, values, "haiku")
    optimizer = optax.adam(LEARNING_RATE)

    def loss_fn(params, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(net.apply(params, x), y).mean()

    @partial(jax.jit, donate_argnums=(0, 1))
    def update(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def step(state, batch):
        params, opt_state, loss = update(*state, *batch)
        return (params, opt_state), loss

    state = (params, optimizer.init(params))
    return peers.jax_system("haiku", step, state, data, cache_size=update._cache_size), init


def build_equinox(batches, weights, seed):
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax
    from jax import lax

    class CharLSTM(eqx.Module):
        embed: eqx.nn.Embedding
        cell: eqx.nn.LSTMCell
        head: eqx.nn.Linear

        def __init__(self, key):
            k_embed, k_cell, k_head = jax.random.split(key, 3)
            self.embed = eqx.nn.Embedding(VOCAB, EMBED, key=k_embed)
            self.cell = eqx.nn.LSTMCell(EMBED, HIDDEN, key=k_cell)
            self.head = eqx.nn.Linear(HIDDEN, VOCAB, key=k_head)

        def __call__(self, ids):  # one sequence [T] -> logits [T, V]
            def scan_fn(carry, x):
                carry = self.cell(x, carry)
                return carry, carry[0]

            zeros = jnp.zeros(HIDDEN)
            _, hs = lax.scan(scan_fn, (zeros, zeros), jax.vmap(self.embed)(ids))
            return jax.vmap(self.head)(hs)

    model = CharLSTM(jax.random.key(seed))

    def where(m):
        return (m.embed.weight, m.cell.weight_ih, m.cell.weight_hh, m.cell.bias, m.head.weight, m.head.bias)

    w = weights
    values = (w["embed"], w["w_ih"].T, w["w_hh"].T, w["b"], w["w_out"].T, w["b_out"])
    leaves, init = peers.shared(where(model), values, "equinox")
    model = eqx.tree_at(where, model, leaves)
    optimizer = optax.adam(LEARNING_RATE)

    @eqx.filter_value_and_grad
    def loss_fn(model, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(jax.vmap(model)(x), y).mean()

    @eqx.filter_jit(donate="all-except-first")  # donates the model and optimizer state, not the batch
    def update(batch, model, opt_state):
        loss, grads = loss_fn(model, *batch)
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    def step(state, batch):
        model, opt_state, loss = update(batch, *state)
        return (model, opt_state), loss

    data = [(jnp.asarray(x), jnp.asarray(y)) for x, y in batches]
    state = (model, optimizer.init(eqx.filter(model, eqx.is_array)))
    return peers.jax_system("equinox", step, state, data, cache_size=update._cached._cache_size), init


def build_torch(batches, weights, seed, device, autocast=False):
    import contextlib

    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(seed)

    class CharLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, EMBED)
            self.lstm = nn.LSTM(EMBED, HIDDEN, batch_first=True)
            self.head = nn.Linear(HIDDEN, VOCAB)

        def forward(self, ids):
            h, _ = self.lstm(self.embed(ids))
            return self.head(h)

    model = CharLSTM().to(device)
    values = {
        "embed.weight": weights["embed"],
        "lstm.weight_ih_l0": weights["w_ih"].T,
        "lstm.weight_hh_l0": weights["w_hh"].T,
        "lstm.bias_ih_l0": weights["b"],
        "lstm.bias_hh_l0": np.zeros_like(weights["b"]),
        "head.weight": weights["w_out"].T,
        "head.bias": weights["b_out"],
    }
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in values.items()})
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)

    def mixed():  # PyTorch's mixed precision: bfloat16 operands for the LSTM and Linear, float32 weights
        return torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        with mixed():
            logits = model(x)
        loss = F.cross_entropy(logits.float().reshape(-1, VOCAB), y.reshape(-1))
        loss.backward()
        optimizer.step()
        return loss

    data = [tuple(torch.from_numpy(a).long().to(device) for a in batch) for batch in batches]
    name = "torch_bf16" if autocast else "torch"
    return peers.torch_system(name, step, data, device), ("shared, bf16" if autocast else "shared")


BUILDERS = {
    "funcnet": build_funcnet,
    "funcnet_bf16": partial(build_funcnet, name="funcnet_bf16", compute_dtype="bfloat16"),
    "funcnet_jvp": partial(build_funcnet, name="funcnet_jvp", forward_mode=True),
    "funcnet_rows": partial(build_funcnet, name="funcnet_rows", deferred=False),
    "funcnet_cores": partial(build_funcnet, name="funcnet_cores", all_devices=True),
    "funcnet_bf16_cores": partial(build_funcnet, name="funcnet_bf16_cores", compute_dtype="bfloat16", all_devices=True),
    "jax": build_jax,
    "flax": build_flax,
    "haiku": build_haiku,
    "equinox": build_equinox,
}


# ---------------------------------------------------------------- main


def torch_bf16_unavailable(device: str) -> str | None:
    """Why PyTorch cannot run its LSTM under bfloat16 autocast here (oneDNN builds one for CPUs with bfloat16
    instructions only), or None if it can."""
    import torch

    where = "cuda" if device == "gpu" else "cpu"
    try:
        with torch.autocast(where, dtype=torch.bfloat16):
            torch.nn.LSTM(4, 4, batch_first=True).to(where)(torch.zeros(1, 2, 4, device=where))
    except RuntimeError as error:
        return f"PyTorch's bfloat16 LSTM does not run on this {where}: {str(error).splitlines()[0][:120]}"
    return None


def parse_args(argv):
    p = common.parser(__doc__.splitlines()[0], SYSTEMS, rounds=6, quick_skips=("funcnet_jvp", "funcnet_rows"))
    p.add_argument("--first-step-repeats", type=int, default=None, help="fresh builds timed per system (default 3)")
    p.add_argument("--jax-cpu-devices", type=int, default=None, help="JAX CPU devices (default: one per core)")
    args = common.parse(p, argv, SYSTEMS)
    args.rounds = args.rounds or (2 if args.quick else 6)
    args.first_step_repeats = args.first_step_repeats or (1 if args.quick else 3)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    malloc = common.start(args)
    if "torch_bf16" in args.systems and (reason := torch_bf16_unavailable(args.device)):
        args.systems.remove("torch_bf16")
        print(f"NOTE: skipping torch_bf16: {reason}", flush=True)
        common.emit(figure="skipped", system="torch_bf16", reason=reason)
    devices = 1
    if args.device == "cpu":  # before anything starts JAX's backend; for the whole process
        from funcnet.train import cpu_devices

        devices = cpu_devices(args.jax_cpu_devices)
    batches, weights = make_data(args.seed)
    builders = peers.system_builders(args, BUILDERS, build_torch, batches, weights, args.seed)
    setup = {"vocab": VOCAB, "embed": EMBED, "hidden": HIDDEN, "sequence": SEQUENCE, "batch": BATCH}
    setup["jax_cpu_devices"] = devices
    peers.run_workload(
        "charlstm",
        args,
        malloc,
        builders,
        setup=setup | {"optimizer": f"adam {LEARNING_RATE}"},
        loss_after=LOSS_AFTER,
        expected_loss=round(math.log(VOCAB), 4),
        repeats=args.first_step_repeats,
        segment_seconds=0.25 if args.quick else 1.0,
        steps_range=(2, 200),
        per_step=BATCH * SEQUENCE,
        unit="tokens/s",
        ratio_targets=TARGETS,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
