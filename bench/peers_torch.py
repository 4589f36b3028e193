"""The peers in PyTorch: the same meta-learning workloads, ms per meta-iteration on this CPU.

Run by ``bench/peers.py`` with the peers' own environment (torch CPU + learn2learn 0.2.0, built
from its source release by ``bash scripts/install_peers.sh``), never the project's; one workload
per process, its times printed as one JSON line:

    .venv-peers/bin/python bench/peers_torch.py --workload l2l_maml2_pool --threads 1

Workloads (inputs 28x28x1 in the uint8 range, scaled by 1/255 like the pipeline's Rescaling):

* ``l2l_maml2`` / ``l2l_fomaml``: ``l2l.algorithms.MAML(OmniglotCNN(5), lr=0.4)`` second /
  first order, 5-way 1-shot, 5 queries per class, meta-batch 8 (a ``clone()`` + ``adapt()`` per
  task, ``(query_loss / 8).backward()``), Adam 1e-3. NB: learn2learn's ``OmniglotCNN`` is the
  MAML paper's Omniglot net: 3x3 convolutions with STRIDE 2 and no max-pooling (28 -> 14 -> 7 ->
  4 -> 2, then a spatial mean), about 3.7x fewer conv FLOPs than the pipeline's conv4.
* ``l2l_maml2_pool`` / ``l2l_fomaml_pool``: the same through learn2learn, on the pipeline's
  architecture (``ConvBase(max_pool=True)``: 3x3 'same' conv, batch norm, ReLU, 2x2 max-pool,
  28 -> 14 -> 7 -> 3 -> 1, flatten, linear head): the like-for-like comparison.
* ``protonet``: plain torch, the pipeline's conv4 without head, one 20-way 1-shot episode with
  5 queries per class (support and query embedded as separate batches: their own batch
  statistics), prototypes = class means, logits = -squared Euclidean distance, CE, Adam.
* ``sinusoid_maml2``: plain torch second-order MAML on the 1-40-40-1 ReLU MLP, meta-batch 25,
  K=10 support and 10 query points, inner SGD 0.01 (1 step), Adam 1e-3: a Python loop over
  tasks with ``torch.autograd.grad(create_graph=True)``; ``sinusoid_maml2_vmap`` is the same
  maths batched over tasks with ``torch.func`` (``vmap`` of ``grad``).

Timing: ``--iters`` meta-iterations after ``--warmup``, each timed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F


def load_learn2learn():
    """Import learn2learn 0.2.0 with torchvision's PyPI wheel on a CPU-only torch.

    The only torchvision wheels on PyPI for Linux are CUDA builds: their ``_C`` extension
    does not load against the CPU torch (it links libtorch_cuda), and torchvision 0.28 then
    fails at import, registering fake kernels for ``torchvision::nms``/``qnms``, which do not
    exist. learn2learn imports torchvision (datasets, transforms), never its C++ ops; defining
    those two op schemas first lets the import finish. With a CPU torchvision build (PyTorch's
    own CPU index) the extension loads and nothing is defined here.
    """
    spec = importlib.util.find_spec("torchvision")
    if spec is not None and spec.submodule_search_locations:
        so = os.path.join(spec.submodule_search_locations[0], "_C.so")
        try:
            torch.ops.load_library(so)
        except OSError:
            lib = torch.library.Library("torchvision", "DEF")
            lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            load_learn2learn.keep = lib  # the definitions live as long as the library object
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import learn2learn

    return learn2learn


TASKS, WAYS, QUERIES, INNER_LR = 8, 5, 5, 0.4
PN_WAYS = 20


def omniglot_batch(gen: torch.Generator, n_images: int, tasks: int = TASKS):
    return torch.randint(0, 256, (tasks, n_images, 1, 28, 28), generator=gen).float()


# --- MAML through learn2learn ----------------------------------------------------------------


def l2l_maml(l2l, first_order: bool, pooled: bool):
    torch.manual_seed(0)
    if pooled:
        model = torch.nn.Sequential(
            l2l.nn.Lambda(lambda x: x.view(-1, 1, 28, 28) / 255.0),
            l2l.vision.models.cnn4.ConvBase(hidden=64, channels=1, max_pool=True, layers=4),
            l2l.nn.Flatten(),
            torch.nn.Linear(64, WAYS))
    else:
        cnn = l2l.vision.models.OmniglotCNN(WAYS)
        model = torch.nn.Sequential(l2l.nn.Lambda(lambda x: x / 255.0), cnn)
    maml = l2l.algorithms.MAML(model, lr=INNER_LR, first_order=first_order)
    opt = torch.optim.Adam(maml.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(0)
    sx, qx = omniglot_batch(gen, WAYS), omniglot_batch(gen, WAYS * QUERIES)
    sy = torch.arange(WAYS).repeat(TASKS, 1)
    qy = torch.arange(WAYS).repeat_interleave(QUERIES).repeat(TASKS, 1)

    def step():
        opt.zero_grad()
        total = 0.0
        for t in range(TASKS):
            learner = maml.clone()
            learner.adapt(F.cross_entropy(learner(sx[t]), sy[t]))
            loss = F.cross_entropy(learner(qx[t]), qy[t]) / TASKS
            loss.backward()
            total += loss.item()
        opt.step()
        return total

    return step


# --- ProtoNets in plain torch ----------------------------------------------------------------


class Conv4(torch.nn.Module):
    """The pipeline's conv4 without head: 4 x [conv 3x3 same, BN (batch stats, eps 1e-3),
    ReLU, max-pool 2], flatten -> 64."""

    def __init__(self):
        super().__init__()
        layers, c = [], 1
        for _ in range(4):
            layers += [torch.nn.Conv2d(c, 64, 3, padding=1), torch.nn.BatchNorm2d(64, eps=1e-3),
                       torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
            c = 64
        self.body = torch.nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x / 255.0).flatten(1)


def protonet():
    torch.manual_seed(0)
    net = Conv4()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(1)
    sx = omniglot_batch(gen, PN_WAYS, 1)[0]
    qx = omniglot_batch(gen, PN_WAYS * QUERIES, 1)[0]
    sy = torch.arange(PN_WAYS)
    qy = torch.arange(PN_WAYS).repeat_interleave(QUERIES)

    def step():
        opt.zero_grad()
        s, q = net(sx), net(qx)
        protos = torch.zeros(PN_WAYS, s.shape[1]).index_add_(0, sy, s) / torch.bincount(
            sy, minlength=PN_WAYS)[:, None]
        logits = -((q[:, None, :] - protos[None]) ** 2).sum(-1)
        loss = F.cross_entropy(logits, qy)
        loss.backward()
        opt.step()
        return loss.item()

    return step


# --- sinusoid MAML in plain torch ------------------------------------------------------------


def sinusoid_data(tasks=25, k=10, q=10, seed=0):
    rng = np.random.default_rng(seed)
    amp, phase = rng.uniform(0.1, 5, (tasks, 1, 1)), rng.uniform(0, np.pi, (tasks, 1, 1))
    xs, xq = rng.uniform(-5, 5, (tasks, k, 1)), rng.uniform(-5, 5, (tasks, q, 1))
    f = lambda x: amp * np.sin(x + phase)  # noqa: E731
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return t(xs), t(f(xs)), t(xq), t(f(xq))


def mlp_params():
    torch.manual_seed(0)
    layers = [torch.nn.Linear(1, 40), torch.nn.Linear(40, 40), torch.nn.Linear(40, 1)]
    return [p for layer in layers for p in (layer.weight, layer.bias)]


def mlp(params, x):
    w1, b1, w2, b2, w3, b3 = params
    h = F.relu(F.linear(x, w1, b1))
    h = F.relu(F.linear(h, w2, b2))
    return F.linear(h, w3, b3)


def sinusoid_maml(lr=0.01):
    params = mlp_params()
    opt = torch.optim.Adam(params, 1e-3)
    xs, ys, xq, yq = sinusoid_data()

    def step():
        opt.zero_grad()
        total = 0.0
        for t in range(xs.shape[0]):
            grads = torch.autograd.grad(F.mse_loss(mlp(params, xs[t]), ys[t]), params,
                                        create_graph=True)
            fast = [p - lr * g for p, g in zip(params, grads, strict=True)]
            loss = F.mse_loss(mlp(fast, xq[t]), yq[t]) / xs.shape[0]
            loss.backward()
            total += loss.item()
        opt.step()
        return total

    return step


def sinusoid_maml_vmap(lr=0.01):
    from torch.func import grad, vmap

    params = mlp_params()
    opt = torch.optim.Adam(params, 1e-3)
    xs, ys, xq, yq = sinusoid_data()

    def task_loss(p, x, y):
        return F.mse_loss(mlp(p, x), y)

    def adapted_loss(p, xs_, ys_, xq_, yq_):
        g = grad(task_loss)(p, xs_, ys_)
        return task_loss([w - lr * gw for w, gw in zip(p, g, strict=True)], xq_, yq_)

    batched = vmap(adapted_loss, in_dims=(None, 0, 0, 0, 0))

    def step():
        opt.zero_grad()
        loss = batched(params, xs, ys, xq, yq).mean()
        loss.backward()
        opt.step()
        return loss.item()

    return step


WORKLOADS = {
    "l2l_maml2": lambda l2l: l2l_maml(l2l, False, False),
    "l2l_fomaml": lambda l2l: l2l_maml(l2l, True, False),
    "l2l_maml2_pool": lambda l2l: l2l_maml(l2l, False, True),
    "l2l_fomaml_pool": lambda l2l: l2l_maml(l2l, True, True),
    "protonet": lambda l2l: protonet(),
    "sinusoid_maml2": lambda l2l: sinusoid_maml(),
    "sinusoid_maml2_vmap": lambda l2l: sinusoid_maml_vmap(),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS))
    parser.add_argument("--check", action="store_true", help="import the peers, print versions")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    l2l = load_learn2learn()
    if args.check or not args.workload:
        print(f"torch {torch.__version__}, learn2learn {l2l.__version__}")
        return
    step = WORKLOADS[args.workload](l2l)
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        step()
        times.append(1000 * (time.perf_counter() - start))
    print(json.dumps({"ms": times, "torch": torch.__version__, "learn2learn": l2l.__version__}))


if __name__ == "__main__":
    main()
