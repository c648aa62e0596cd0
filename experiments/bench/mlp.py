"""The lecture's two-layer ReLU net, trained side by side in funcnet, raw JAX, Flax, Haiku, Equinox and PyTorch.

    pip install -e '.[bench]'
    python experiments/bench/mlp.py                 # 4 min at load 3 (PyTorch's threads collapsing)
    python experiments/bench/mlp.py --quick         # ~20 s at load 1.5, noisy
    python experiments/bench/mlp.py --systems funcnet,jax --rounds 20

Workload: N=64 examples of D_in=1000 random features (one fixed batch, as in the lecture), H=100 hidden
ReLU units, D_out=10 random targets, mean squared error, Adam 1e-3. Every system starts from the SAME
initial weights (drawn once with NumPy, copied into each library's own parameter layout), so their
initial losses agree to float32 rounding; the script prints them. Figures: training steps/s in steady
state and the time to the first step (trace, compile and run one step of a freshly built step function;
for PyTorch its first eager step), each as a ratio to raw JAX.

Systems, each written the way that library's users write it:
  funcnet  fn.serial(hidden=fn.dense(100), act=fn.relu(), out=fn.dense(10)), per-example MSE,
           funcnet.train.state.create_train_state + funcnet.train.step.make_train_step (jit, state donated),
           the batch {"x", "y"} as every other system has it (no "mask": every example is real)
  jax      hand-written loss over a params dict, jax.value_and_grad, optax.adam, jax.jit (state donated)
  flax     flax.linen nn.Module (nn.Dense, nn.relu), flax.training.train_state.TrainState, jax.jit
           (state donated)
  haiku    hk.transform of hk.Linear layers, optax, jax.jit (params and optimizer state donated)
  equinox  eqx.nn.MLP, jax.vmap over the batch, eqx.filter_value_and_grad,
           eqx.filter_jit(donate="all-except-first") with the batch first (model and optimizer state donated)
  torch    nn.Sequential(nn.Linear, nn.ReLU, nn.Linear), F.mse_loss, torch.optim.Adam; threads = cores
  funcnet_masked  funcnet with a mask of ones in the batch, as Batches (and so fit) gives every batch: the
           means then divide by the mask's sum, what the engine's padded batches cost on a step this small

Every JAX system donates its training state to the step (funcnet's make_train_step does; donation is
worth ~10% here), so all of them reuse their buffers alike. Method: see _common.py (one process,
warm-up, rotated interleaved rounds, medians of per-round ratios, 50 ms of untimed JAX steps after a
PyTorch segment, no compilation inside a timed segment, the same malloc setting for all).
"""

from __future__ import annotations

import sys
from functools import partial

import _common as common
import _peers as peers

SYSTEMS = ("funcnet", "jax", "flax", "haiku", "equinox", "torch", "funcnet_masked")
N, D_IN, H, D_OUT, LEARNING_RATE = 64, 1000, 100, 10, 1e-3
LOSS_AFTER = 20  # every system's loss is also reported after this many steps (same data, same init)


def make_data(seed: int):
    """The batch ``(x [N, D_in], y [N, D_out])`` and the shared initial weights, all NumPy float32."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, D_IN), dtype=np.float32)
    y = rng.standard_normal((N, D_OUT), dtype=np.float32)

    def uniform(shape, fan_in):
        return rng.uniform(-(fan_in**-0.5), fan_in**-0.5, shape).astype(np.float32)

    weights = {"w1": uniform((D_IN, H), D_IN), "b1": uniform((H,), D_IN)}
    weights |= {"w2": uniform((H, D_OUT), H), "b2": uniform((D_OUT,), H)}
    return (x, y), weights


# ---------------------------------------------------------------- systems


def funcnet_model():
    import funcnet as fn

    return fn.serial(hidden=fn.dense(H), act=fn.relu(), out=fn.dense(D_OUT))


def funcnet_loss(outputs, batch):
    """Per-example mean squared error (the engine averages over the batch)."""
    import jax.numpy as jnp

    return jnp.mean((outputs - batch["y"]) ** 2, axis=-1)


def funcnet_params(w):
    return {"hidden": {"kernel": w["w1"], "bias": w["b1"]}, "out": {"kernel": w["w2"], "bias": w["b2"]}}


def build_funcnet(data, weights, seed, name="funcnet", masked=False):
    import jax
    import numpy as np
    import optax

    from funcnet.train.state import batch_sharded

    (x, y), optimizer = data, optax.adam(LEARNING_RATE)
    step, state, mesh, init = peers.funcnet_train(
        funcnet_model(), funcnet_loss, optimizer, x, funcnet_params(weights), seed, name
    )
    batch = {"x": x, "y": y} | ({"mask": np.ones(N, np.float32)} if masked else {})
    batch = jax.device_put(batch, batch_sharded(mesh))
    system = peers.jax_system(
        name, step, state, [batch], cache_size=step.jitted._cache_size, loss_of=lambda m: m["loss"]
    )
    return system, init


def jax_step(weights):
    """The raw JAX step ``(state, (x, y)) -> (state, loss)`` (jitted, state donated) and its initial state."""
    import jax
    import jax.numpy as jnp
    import optax

    params = jax.tree.map(jnp.asarray, weights)
    optimizer = optax.adam(LEARNING_RATE)

    def loss_fn(p, x, y):
        h = jax.nn.relu(x @ p["w1"] + p["b1"])
        return jnp.mean((h @ p["w2"] + p["b2"] - y) ** 2)

    @partial(jax.jit, donate_argnums=0)
    def step(state, batch):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return step, (params, optimizer.init(params))


def build_jax(data, weights, seed):
    import jax.numpy as jnp

    del seed
    step, state = jax_step(weights)
    batch = tuple(jnp.asarray(a) for a in data)
    return peers.jax_system("jax", step, state, [batch], cache_size=step._cache_size), "shared"


def build_flax(data, weights, seed):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax
    from flax.training import train_state

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Dense(H, name="hidden")(x))
            return nn.Dense(D_OUT, name="out")(x)

    x, y = (jnp.asarray(a) for a in data)
    model = MLP()
    native = model.init(jax.random.key(seed), x)["params"]
    values = {"hidden": {"kernel": weights["w1"], "bias": weights["b1"]}}
    values["out"] = {"kernel": weights["w2"], "bias": weights["b2"]}
    params, init = peers.shared(native, values, "flax")
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.adam(LEARNING_RATE))

    @partial(jax.jit, donate_argnums=0)
    def train_step(state, batch):
        def loss_fn(params):
            return jnp.mean((state.apply_fn({"params": params}, batch["x"]) - batch["y"]) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), loss

    return peers.jax_system("flax", train_step, state, [{"x": x, "y": y}], cache_size=train_step._cache_size), init


def build_haiku(data, weights, seed):
    import haiku as hk
    import jax
    import jax.numpy as jnp
    import optax

    def forward(x):
        h = jax.nn.relu(hk.Linear(H, name="hidden")(x))
        return hk.Linear(D_OUT, name="out")(h)

    net = hk.without_apply_rng(hk.transform(forward))
    x, y = (jnp.asarray(a) for a in data)
    native = net.init(jax.random.key(seed), x)
    values = {"hidden": {"w": weights["w1"], "b": weights["b1"]}, "out": {"w": weights["w2"], "b": weights["b2"]}}
    params, init = peers.shared(native, values, "haiku")
    optimizer = optax.adam(LEARNING_RATE)

    def loss_fn(params, x, y):
        return jnp.mean((net.apply(params, x) - y) ** 2)

    @partial(jax.jit, donate_argnums=(0, 1))
    def update(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def step(state, batch):
        params, opt_state, loss = update(*state, *batch)
        return (params, opt_state), loss

    state = (params, optimizer.init(params))
    return peers.jax_system("haiku", step, state, [(x, y)], cache_size=update._cache_size), init


def build_equinox(data, weights, seed):
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    model = eqx.nn.MLP(D_IN, D_OUT, width_size=H, depth=1, activation=jax.nn.relu, key=jax.random.key(seed))
    native = (model.layers[0].weight, model.layers[0].bias, model.layers[1].weight, model.layers[1].bias)
    values = (weights["w1"].T, weights["b1"], weights["w2"].T, weights["b2"])
    leaves, init = peers.shared(native, values, "equinox")
    model = eqx.tree_at(
        lambda m: (m.layers[0].weight, m.layers[0].bias, m.layers[1].weight, m.layers[1].bias), model, leaves
    )
    optimizer = optax.adam(LEARNING_RATE)

    @eqx.filter_value_and_grad
    def loss_fn(model, x, y):
        return jnp.mean((jax.vmap(model)(x) - y) ** 2)

    @eqx.filter_jit(donate="all-except-first")  # donates the model and optimizer state, not the batch
    def update(batch, model, opt_state):
        loss, grads = loss_fn(model, *batch)
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    def step(state, batch):
        model, opt_state, loss = update(batch, *state)
        return (model, opt_state), loss

    state = (model, optimizer.init(eqx.filter(model, eqx.is_array)))
    batch = tuple(jnp.asarray(a) for a in data)
    return peers.jax_system("equinox", step, state, [batch], cache_size=update._cached._cache_size), init


def build_torch(data, weights, seed, device):
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(D_IN, H), nn.ReLU(), nn.Linear(H, D_OUT)).to(device)
    with torch.no_grad():
        for layer, w, b in ((model[0], "w1", "b1"), (model[2], "w2", "b2")):
            layer.weight.copy_(torch.from_numpy(weights[w].T.copy()))
            layer.bias.copy_(torch.from_numpy(weights[b]))
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        return loss

    batch = tuple(torch.from_numpy(a).to(device) for a in data)
    return peers.torch_system("torch", step, [batch], device), "shared"


BUILDERS = {
    "funcnet": build_funcnet,
    "jax": build_jax,
    "flax": build_flax,
    "haiku": build_haiku,
    "equinox": build_equinox,
    "funcnet_masked": partial(build_funcnet, name="funcnet_masked", masked=True),
}


# ---------------------------------------------------------------- main


def parse_args(argv):
    p = common.parser(__doc__.splitlines()[0], SYSTEMS, rounds=10)
    p.add_argument("--first-step-repeats", type=int, default=None, help="fresh builds timed per system (default 3)")
    args = common.parse(p, argv, SYSTEMS)
    args.rounds = args.rounds or (3 if args.quick else 10)
    args.first_step_repeats = args.first_step_repeats or (1 if args.quick else 3)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    malloc = common.start(args)
    data, weights = make_data(args.seed)
    builders = peers.system_builders(args, BUILDERS, build_torch, data, weights, args.seed)
    setup = {"N": N, "D_in": D_IN, "H": H, "D_out": D_OUT, "loss": "mse", "optimizer": f"adam {LEARNING_RATE}"}
    peers.run_workload(
        "mlp",
        args,
        malloc,
        builders,
        setup=setup,
        loss_after=LOSS_AFTER,
        expected_loss=None,
        repeats=args.first_step_repeats,
        segment_seconds=0.25 if args.quick else 0.5,
        steps_range=(5, 5000),
        jax_targets=True,
        warm_build=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
