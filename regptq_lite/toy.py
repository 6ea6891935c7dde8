"""The paper's toy study (PAPER.md section 2): a regressor and a classifier of the same size.

- Regressor: a 4-layer MLP that maps the coefficients (a, b, c) of a quadratic equation with two
  real roots to its roots (r1 <= r2), trained with an L1 loss (the paper's L_p distance, p = 1).
  The paper only says "data from a quadratic equation"; the roots are our choice of target.
- Classifier: a 4-layer MLP on Iris (``data/iris.csv``), trained with cross-entropy.
Both have hidden width 24: 1346 and 1395 parameters, at most 600 per layer.

Degradation is measured on a common scale, "the share of the task lost": for the regressor the
relative absolute error sum|r^ - r| / sum|r - median(r)| (1 = no better than a constant), for the
classifier the error rate (2/3 = chance). Everything is seeded; the same call gives the same numbers.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

from .quantizers import UniformQuantizer

IRIS_CSV = Path(__file__).resolve().parent.parent / "data" / "iris.csv"
HIDDEN = 24
TASKS = ("regressor", "classifier")
SIGMAS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3)


@dataclass
class ToyTask:
    """A trained toy model with its data."""

    name: str
    model: nn.Sequential
    x: torch.Tensor
    y: torch.Tensor
    loss: str = "l1"

    def loss_fn(self, out: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The training loss (on ``y``, default the task's targets): L1 or L2 for the regressor, CE otherwise."""
        y = self.y if y is None else y
        if self.name == "classifier":
            return F.cross_entropy(out, y)
        return F.l1_loss(out, y) if self.loss == "l1" else F.mse_loss(out, y)

    def task_loss(self, model: nn.Module | None = None) -> float:
        """The training loss of ``model`` (default: the trained one) on the task's data."""
        with torch.no_grad():
            return self.loss_fn((model or self.model)(self.x)).item()

    def error(self, model: nn.Module | None = None) -> float:
        """Share of the task lost: relative absolute error (regressor) or error rate (classifier)."""
        with torch.no_grad():
            out = (model or self.model)(self.x)
        if self.name == "regressor":
            return ((out - self.y).abs().sum() / (self.y - self.y.median(0).values).abs().sum()).item()
        return (out.argmax(1) != self.y).float().mean().item()

    def constant_error(self) -> float:
        """``error`` of the best constant prediction, where the scale reads "no better than a constant": 1 for the
        regressor (its targets' median, by the definition of ``error``), 1 - the commonest class's share for the
        classifier (2/3 on Iris)."""
        if self.name == "regressor":
            return 1.0
        return 1.0 - torch.bincount(self.y).max().item() / len(self.y)


def mlp(n_in: int, n_out: int, hidden: int = HIDDEN) -> nn.Sequential:
    """Four linear layers with ReLU between them."""
    return nn.Sequential(
        nn.Linear(n_in, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, n_out),
    )  # fmt: skip


def quadratic_data(n: int = 2000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Coefficients (a, b, c) of a x^2 + b x + c = 0 with roots r1 <= r2 in [-2, 2], and the roots."""
    g = torch.Generator().manual_seed(seed)
    roots = (torch.rand(n, 2, generator=g) * 4 - 2).sort(dim=1).values
    a = torch.rand(n, 1, generator=g) * 1.5 + 0.5
    b = -a * roots.sum(1, keepdim=True)
    c = a * roots.prod(1, keepdim=True)
    return torch.cat([a, b, c], dim=1), roots


def iris_data() -> tuple[torch.Tensor, torch.Tensor]:
    """Iris features (standardised) and class indices, from the shipped CSV."""
    if not IRIS_CSV.is_file():
        raise FileNotFoundError(f"missing data file {IRIS_CSV}")
    table = np.loadtxt(IRIS_CSV, delimiter=",", comments="#", skiprows=4, dtype=np.float32)
    x = torch.from_numpy(table[:, :4])
    return (x - x.mean(0)) / x.std(0), torch.from_numpy(table[:, 4]).long()


def train_task(name: str, seed: int = 0, epochs: int = 1500, loss: str = "l1") -> ToyTask:
    """Train the regressor (``loss`` l1 or l2) or the classifier (full batch, Adam lr 3e-3, cosine decay)."""
    if name not in TASKS:
        raise ValueError(f"unknown toy task {name!r}; expected one of {', '.join(TASKS)}")
    if loss not in ("l1", "l2"):
        raise ValueError(f"unknown regression loss {loss!r}; expected l1 or l2")
    torch.manual_seed(seed)
    if name == "regressor":
        x, y = quadratic_data(seed=seed)
        model = mlp(3, 2)
    else:
        x, y = iris_data()
        model = mlp(4, 3)
    task = ToyTask(name, model, x, y, loss)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    for _ in range(epochs):
        loss = task.loss_fn(model(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    return task


def weights(model: nn.Module) -> list[torch.Tensor]:
    """The weight matrices (not biases) of the linear layers."""
    return [m.weight.detach() for m in model.modules() if isinstance(m, nn.Linear)]


def with_weights(model: nn.Module, new: list[torch.Tensor]) -> nn.Module:
    """A copy of ``model`` whose linear weights are replaced by ``new``."""
    twin = copy.deepcopy(model)
    for layer, w in zip([m for m in twin.modules() if isinstance(m, nn.Linear)], new):
        layer.weight.data.copy_(w)
    return twin


def noise(shape: torch.Size, sigma: float, kind: str, generator: torch.Generator) -> torch.Tensor:
    """N(0, sigma) ("soft" quantization) or U[-sigma, sigma) ("hard" rounding) noise."""
    if kind == "gaussian":
        return torch.randn(shape, generator=generator) * sigma
    if kind == "uniform":
        return (torch.rand(shape, generator=generator) * 2 - 1) * sigma
    raise ValueError(f"unknown noise {kind!r}; expected gaussian or uniform")


def noise_sensitivity(
    task: ToyTask, sigmas: tuple[float, ...] = SIGMAS, kind: str = "gaussian", draws: int = 20, seed: int = 0
) -> list[list[float]]:
    """[[sigma, degradation], ...]: the mean increase of ``task.error`` when every weight gets noise."""
    g = torch.Generator().manual_seed(seed)
    clean = task.error()
    out = []
    for s in sigmas:
        errors = [
            task.error(with_weights(task.model, [w + noise(w.shape, s, kind, g) for w in weights(task.model)]))
            for _ in range(draws)
        ]
        out.append([float(s), float(np.mean(errors)) - clean])
    return out


def symmetric_grid(w: torch.Tensor, bits: int, ratio: float) -> UniformQuantizer:
    """A symmetric per-tensor b-bit quantizer whose range is ``ratio`` x max |w|."""
    q = UniformQuantizer(bits, channel_axis=None, symmetric=True)
    q.init(w * ratio)
    return q


def quantize_all(task: ToyTask, bits: int, ratio: float) -> nn.Module:
    """Every weight matrix on a symmetric per-tensor grid clipped at ``ratio`` x max |w|."""
    with torch.no_grad():
        return with_weights(task.model, [symmetric_grid(w, bits, ratio)(w) for w in weights(task.model)])


def mse_clip(w: torch.Tensor, bits: int = 4) -> tuple[float, float]:
    """The range (lowest, highest level) of the MSE-optimal symmetric per-tensor grid for ``w``."""
    with torch.no_grad():
        best = min(np.linspace(0.1, 1.0, 91), key=lambda r: (symmetric_grid(w, bits, r)(w) - w).pow(2).mean().item())
    q = symmetric_grid(w, bits, float(best))
    s, z = q.scale.item(), q.zero_point.item()
    return -z * s, (q.qmax - z) * s


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    """torch.func's first use imports a deprecated torch.jit helper; its FutureWarning is noise here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        yield


def diagonal_fisher(task: ToyTask) -> torch.Tensor:
    """Diagonal empirical Fisher: the mean over samples of the squared per-sample gradients."""
    params = {name: p.detach() for name, p in task.model.named_parameters()}

    def sample_loss(p: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return task.loss_fn(torch.func.functional_call(task.model, p, (x[None],)), y[None])

    with _quiet_jit():
        grads = torch.func.vmap(torch.func.grad(sample_loss), in_dims=(None, 0, 0))(params, task.x, task.y)
    return torch.cat([grads[name].pow(2).mean(0).flatten() for name in params])


def exact_hessian(task: ToyTask) -> torch.Tensor:
    """The exact Hessian of the task loss with respect to all parameters (small nets only)."""
    names = [name for name, _ in task.model.named_parameters()]
    shapes = [p.shape for p in task.model.parameters()]
    sizes = [p.numel() for p in task.model.parameters()]

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        tensors = {n: c.reshape(s) for n, c, s in zip(names, torch.split(flat, sizes), shapes)}
        return task.loss_fn(torch.func.functional_call(task.model, tensors, (task.x,)))

    with _quiet_jit():
        return torch.func.hessian(loss_of)(_flat(task.model))


def scale_sweep(task: ToyTask, bits: int = 4, ratios: np.ndarray | None = None) -> dict:
    """Weight MSE, task loss and error, diagonal-Fisher and exact-Hessian proxies against the clip ratio.

    The proxies score the parameter change dw = w^ - w: Fisher sum(F_ii dw_i^2), Hessian dw^T H dw.
    ``argmin`` gives, for every column, the clip ratio that minimises it; ``rank_corr`` the Spearman
    correlation of each criterion with the task loss over the sweep (1: it orders the clips as the task does).
    """
    ratios = np.linspace(0.1, 1.0, 37) if ratios is None else ratios
    flat = _flat(task.model)
    fisher = diagonal_fisher(task)
    hessian = exact_hessian(task)
    rows = []
    for r in ratios:
        qmodel = quantize_all(task, bits, float(r))
        dw = _flat(qmodel) - flat
        rows.append(
            {
                "ratio": float(r),
                "weight_mse": float(
                    np.mean([(a - b).pow(2).mean().item() for a, b in zip(weights(qmodel), weights(task.model))])
                ),
                "task_loss": task.task_loss(qmodel),
                "error": task.error(qmodel),
                "fisher": float((fisher * dw.pow(2)).sum()),
                "hessian": float(dw @ hessian @ dw),
            }
        )
    keys = ("weight_mse", "task_loss", "fisher", "hessian")
    task = [row["task_loss"] for row in rows]
    return {
        "bits": bits,
        "rows": rows,
        "argmin": {k: min(rows, key=lambda row: row[k])["ratio"] for k in keys},
        "rank_corr": {k: float(spearmanr([row[k] for row in rows], task)[0]) for k in keys if k != "task_loss"},
    }


def excess_kurtosis(x: torch.Tensor) -> float:
    """Fourth standardised moment minus 3: 0 for a Gaussian, 3 for a Laplace law, -1.2 for a uniform one."""
    x = x.flatten().double()
    z = (x - x.mean()) / x.std()
    return float(z.pow(4).mean() - 3)


def rectified_gaussian_kurtosis() -> float:
    """Excess kurtosis of max(0, Z), Z ~ N(0, 1): what a ReLU makes of Gaussian pre-activations (about 2.41), the
    reference for a post-ReLU activation's tails. From the raw moments E[X^k] of the half-normal part."""
    phi = 1 / math.sqrt(2 * math.pi)  # E[X]; E[X^2] = 1/2, E[X^3] = 2 phi, E[X^4] = 3/2
    m1, m2, m3, m4 = phi, 0.5, 2 * phi, 1.5
    var = m2 - m1**2
    fourth = m4 - 4 * m1 * m3 + 6 * m1**2 * m2 - 3 * m1**4
    return fourth / var**2 - 3


def fit_laws(x: torch.Tensor) -> dict[str, float]:
    """Maximum-likelihood Laplace (median, mean |x - median|) and Gaussian fits; mean log-likelihoods."""
    x = x.flatten().double()
    loc, b = x.median(), (x - x.median()).abs().mean()
    mu, sd = x.mean(), x.std(unbiased=False)
    laplace = -torch.log(2 * b) - (x - loc).abs() / b
    gauss = -0.5 * torch.log(2 * torch.pi * sd**2) - (x - mu) ** 2 / (2 * sd**2)
    return {
        "laplace_loc": float(loc),
        "laplace_b": float(b),
        "gauss_mean": float(mu),
        "gauss_std": float(sd),
        "loglik_laplace": float(laplace.mean()),
        "loglik_gauss": float(gauss.mean()),
    }


def distribution_stats(x: torch.Tensor, bits: int = 4) -> dict:
    """Kurtosis, Laplace/Gaussian fits, the MSE-optimal ``bits``-bit clip and the share of values it cuts."""
    lo, hi = mse_clip(x, bits)
    return {
        "kurtosis": excess_kurtosis(x),
        **fit_laws(x),
        "clip": [lo, hi],
        "clipped": float(((x < lo) | (x > hi)).float().mean()),
    }


def weight_stats(task: ToyTask, bits: int = 4) -> list[dict]:
    """Per layer: ``distribution_stats`` of its weights."""
    return [{"layer": i, **distribution_stats(w, bits)} for i, w in enumerate(weights(task.model))]


def noise_table(tasks: dict[str, ToyTask], sigmas: tuple[float, ...] = SIGMAS, draws: int = 20, seed: int = 0) -> dict:
    """{task: {"uniform" | "gaussian" | "uniform_same_std": [[sigma, degradation], ...]}}.

    ``uniform_same_std`` draws U[-sqrt(3) s, sqrt(3) s), whose standard deviation equals the Gaussian's s.
    """
    same_std = tuple(s * 3**0.5 for s in sigmas)
    return {
        name: {
            "uniform": noise_sensitivity(t, sigmas, "uniform", draws, seed),
            "gaussian": noise_sensitivity(t, sigmas, "gaussian", draws, seed),
            "uniform_same_std": [
                [s, d] for s, (_, d) in zip(sigmas, noise_sensitivity(t, same_std, "uniform", draws, seed))
            ],
        }
        for name, t in tasks.items()
    }


def noise_margins(noise: dict, tasks: dict[str, ToyTask]) -> dict[str, list[float]]:
    """Per kind of noise (uniform, gaussian) of ``noise_table``, at each s > 0: the regressor's share of its task
    lost minus the classifier's, each divided by what a constant prediction scores (``ToyTask.constant_error``);
    positive where the regressor loses more."""
    scale = {name: 1 / tasks[name].constant_error() for name in ("regressor", "classifier")}
    return {
        kind: [
            r * scale["regressor"] - c * scale["classifier"]
            for (s, r), (_, c) in zip(noise["regressor"][kind], noise["classifier"][kind])
            if s > 0
        ]
        for kind in ("uniform", "gaussian")
    }


def noise_order(noise: dict) -> dict[str, dict[float, bool]]:
    """Per task of ``noise_table``, at each s > 0: whether uniform noise of the Gaussian's standard deviation
    (``uniform_same_std``) hurts more than the Gaussian."""
    return {
        task: {s: u > g for (s, u), (_, g) in zip(table["uniform_same_std"], table["gaussian"]) if s > 0}
        for task, table in noise.items()
    }


def summary(seed: int = 0, draws: int = 20) -> dict:
    """The headline figures of the toy study, as printed by ``python -m regptq_lite toy --json``.

    Beyond the paper: ``noise[...]["uniform_same_std"]`` (see ``noise_table``) and ``scale["regressor_l2"]``,
    the scale sweep of a regressor trained with an L2 loss (an L1 loss is piecewise linear: its Hessian says little).
    """
    tasks = {name: train_task(name, seed) for name in TASKS}
    result: dict = {"seed": seed, "draws": draws, "sigmas": list(SIGMAS)}
    result["parameters"] = {name: sum(p.numel() for p in t.model.parameters()) for name, t in tasks.items()}
    result["clean_error"] = {name: t.error() for name, t in tasks.items()}
    result["noise"] = noise_table(tasks, SIGMAS, draws, seed)
    sweeps = {name: scale_sweep(t) for name, t in tasks.items()}
    sweeps["regressor_l2"] = scale_sweep(train_task("regressor", seed, loss="l2"))
    result["scale"] = {
        name: {
            "mse_opt": s["argmin"]["weight_mse"],
            "task_opt": s["argmin"]["task_loss"],
            "fisher_opt": s["argmin"]["fisher"],
            "hessian_opt": s["argmin"]["hessian"],
            "rank_corr": s["rank_corr"],
        }
        for name, s in sweeps.items()
    }
    stats = {name: weight_stats(t) for name, t in tasks.items()}
    result["kurtosis"] = {name: float(np.mean([row["kurtosis"] for row in rows[1:-1]])) for name, rows in stats.items()}
    result["weights"] = stats
    return result
