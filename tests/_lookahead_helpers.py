"""Shared pieces of the Lookahead tests: a tiny model, its data, a quiet Trainer, and an
independent reference (Algorithm 1 of Zhang et al. as a plain PyTorch loop, no Lightning)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor, nn
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_ranger import RAdam

IN, HIDDEN, OUT = 4, 8, 2
VOCAB, WIDTH, LENGTH = 11, 8, 6


class TinyNet(nn.Module):
    """Linear -> tanh -> (BatchNorm) -> Linear. ``reorder`` registers the same layers, with the same
    names and values, in the opposite order (so ``named_parameters()`` lists them differently)."""

    def __init__(self, seed: int = 0, batch_norm: bool = False, reorder: bool = False) -> None:
        super().__init__()
        torch.manual_seed(seed)
        layers = {
            "inp": nn.Linear(IN, HIDDEN),
            "norm": nn.BatchNorm1d(HIDDEN) if batch_norm else nn.Identity(),
            "out": nn.Linear(HIDDEN, OUT),
        }
        order = list(layers)[::-1] if reorder else list(layers)
        self.layers = nn.ModuleDict({name: layers[name] for name in order})

    def forward(self, x: Tensor) -> Tensor:
        return self.layers["out"](self.layers["norm"](torch.tanh(self.layers["inp"](x))))


def make_data(n: int, seed: int = 1234) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN, generator=g)
    y = torch.stack([x[:, 0] * x[:, 1], torch.sin(x[:, 2]) - x[:, 3]], dim=1)
    return TensorDataset(x, y + 0.1 * torch.randn(n, OUT, generator=g))


def make_optimizer(name: str, params: Iterable[Tensor], lr: float) -> torch.optim.Optimizer:
    if name == "sgd":  # SGD with momentum
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "plain_sgd":  # stateless
        return torch.optim.SGD(params, lr=lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "radam":
        return RAdam(params, lr=lr)
    raise ValueError(name)


class Net(LightningModule):
    """Regression on :func:`make_data`; logs ``val_loss`` and ``test_loss``."""

    def __init__(
        self,
        optimizer: str = "radam",
        lr: float = 0.05,
        batch_size: int = 4,
        n_batches: int = 5,
        batch_norm: bool = False,
        reorder: bool = False,
        frozen: Sequence[str] = (),
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = TinyNet(seed, batch_norm, reorder)
        for name, p in self.net.named_parameters():
            p.requires_grad_(name not in frozen)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def loss(self, batch: Sequence[Tensor]) -> Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        return self.loss(batch)

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        self.log("val_loss", self.loss(batch))

    def test_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        self.log("test_loss", self.loss(batch))

    def predict_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        return self(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        return make_optimizer(self.hparams.optimizer, params, self.hparams.lr)

    def _loader(self, dataset: TensorDataset) -> DataLoader:
        world = self.trainer.world_size
        if world == 1:
            return DataLoader(dataset, batch_size=self.hparams.batch_size, shuffle=False)
        # Rank r takes samples r, r + world, ...: the ranks' batches i together are batch i of the
        # single-process run (Lightning's own sampler would shuffle).
        sampler = DistributedSampler(
            dataset, num_replicas=world, rank=self.trainer.global_rank, shuffle=False
        )
        return DataLoader(dataset, batch_size=self.hparams.batch_size // world, sampler=sampler)

    def train_dataloader(self) -> DataLoader:
        return self._loader(make_data(self.hparams.batch_size * self.hparams.n_batches))

    def val_dataloader(self) -> DataLoader:
        return self._loader(make_data(8, seed=99))

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()


class TwoOptimizerNet(Net):
    """Manual optimization with two optimizers, each stepping once per batch."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        optimizers = self.optimizers()
        loss = self.loss(batch)
        self.manual_backward(loss)
        for opt in optimizers:
            opt.step()
            opt.zero_grad()
        return loss

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:  # type: ignore[override]
        return two_optimizers(self.net, self.hparams.optimizer, self.hparams.lr)


def two_optimizers(net: TinyNet, name: str, lr: float) -> list[torch.optim.Optimizer]:
    first = list(net.layers["inp"].parameters())
    rest = [p for p in net.parameters() if all(p is not q for q in first)]
    return [make_optimizer(name, first, lr), make_optimizer(name, rest, lr)]


def poison(grad: Tensor) -> None:
    """Put a NaN in the first local element of ``grad`` (this rank's shard of a ``DTensor``)."""
    local = grad.to_local() if isinstance(grad, DTensor) else grad
    if local.numel():
        local.view(-1)[0] = float("nan")


class NaNGradientNet(Net):
    """``Net`` with a NaN in the gradient of ``layers.out.bias`` before optimizer step
    ``nan_at_step`` (1-based), on the ranks in ``nan_ranks``."""

    def __init__(
        self, nan_at_step: int = 6, nan_ranks: Sequence[int] = (0,), **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.nan_at_step = nan_at_step
        self.nan_ranks = tuple(nan_ranks)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        bias = self.net.layers["out"].bias
        step = self.trainer.global_step + 1
        if step == self.nan_at_step and self.trainer.global_rank in self.nan_ranks:
            assert bias.grad is not None
            poison(bias.grad)


class TiedLM(LightningModule):
    """A next-token model whose output projection is the embedding (``out.weight is
    emb.weight``), as in most language models."""

    def __init__(self, seed: int = 0, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(VOCAB, WIDTH)
        self.mix = nn.Linear(WIDTH, WIDTH)
        self.out = nn.Linear(WIDTH, VOCAB, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, tokens: Tensor) -> Tensor:
        return self.out(torch.tanh(self.mix(self.emb(tokens))))

    def loss(self, batch: list[Tensor]) -> Tensor:
        (tokens,) = batch
        logits = self(tokens[:, :-1])
        return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        return self.loss(batch)

    def validation_step(self, batch: list[Tensor], batch_idx: int) -> None:
        self.log("val_loss", self.loss(batch))

    def test_step(self, batch: list[Tensor], batch_idx: int) -> None:
        self.log("test_loss", self.loss(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return RAdam(self.parameters(), lr=self.hparams.lr)

    def train_dataloader(self) -> DataLoader:
        return tokens_loader(20, seed=1)

    def val_dataloader(self) -> DataLoader:
        return tokens_loader(8, seed=2)

    def test_dataloader(self) -> DataLoader:
        return tokens_loader(8, seed=2)


def tokens_loader(n: int, seed: int) -> DataLoader:
    """``n`` random sequences of ``LENGTH + 1`` tokens, in batches of 4 (8 for 8 or fewer)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (n, LENGTH + 1), generator=g)
    return DataLoader(TensorDataset(tokens), batch_size=4 if n > 8 else 8)


def make_trainer(tmp_path: Any, callbacks: list[Any], **kwargs: Any) -> Trainer:
    """A quiet single-device CPU trainer, no validation unless ``limit_val_batches`` is given."""
    defaults: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 2,
        "limit_val_batches": 0,
        "num_sanity_val_steps": 0,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": str(tmp_path),
    }
    return Trainer(callbacks=callbacks, **{**defaults, **kwargs})


def params(module: nn.Module) -> dict[str, Tensor]:
    """Detached copies of the parameters, by name."""
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def fast_and_slow(lookahead: Any, model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Copies of the module's fast and slow weights by name, while it holds the fast ones (after a
    ``final_weights="fast"`` fit); it holds the same fast weights afterwards."""
    fast = params(model)
    assert lookahead.show_slow_weights()
    slow = params(model)
    lookahead.show_fast_weights()
    assert_equal(params(model), fast)
    return fast, slow


def assert_close(actual: dict[str, Tensor], expected: dict[str, Tensor], atol: float) -> None:
    assert actual.keys() == expected.keys()
    for name in actual:
        diff = (actual[name].double() - expected[name].double()).abs().max().item()
        assert diff <= atol, f"{name}: max abs difference {diff} > {atol}"


def assert_equal(actual: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for name in actual:
        assert torch.equal(actual[name], expected[name]), name


def reference_lookahead(
    net: nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
    batches: Sequence[tuple[Tensor, Tensor]],
    *,
    epochs: int,
    k: int,
    alpha: float,
    accumulate: int = 1,
    forward_context: Callable[[], Any] = nullcontext,
    input_dtype: torch.dtype | None = None,
    before_step: Callable[[int], None] | None = None,
    before_epoch: Callable[[int], None] | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Lookahead (Algorithm 1) around ``optimizers`` in plain PyTorch; returns ``(fast, slow)``.

    An optimizer step happens every ``accumulate`` batches and at the last batch of an epoch (as in
    Lightning); the slow weights sync at the end of a batch once ``k`` steps were taken since the
    last sync. Slow weights of 16-bit parameters are float32. ``before_step(steps)``, if given, runs
    before each optimizer step with the number of steps taken so far (to inject a fault). A sync
    that finds a NaN or infinite fast weight resets the fast weights to the slow ones and empties
    the optimizers' state instead. ``before_epoch(epoch)``, if given, runs at each epoch's start
    (to unfreeze parameters); a parameter that has become trainable is tracked from the next sync
    on, its slow weights starting from its value there.
    """
    trainable = {n: p for n, p in net.named_parameters() if p.requires_grad}
    slow = {n: p.detach().to(_slow_dtype(p.dtype), copy=True) for n, p in trainable.items()}
    steps = synced = 0
    net.train()
    for epoch in range(epochs):
        if before_epoch is not None:
            before_epoch(epoch)
        for i, (x, y) in enumerate(batches):
            if input_dtype is not None:
                x, y = x.to(input_dtype), y.to(input_dtype)
            with forward_context():
                loss = nn.functional.mse_loss(net(x), y) / accumulate
            loss.backward()
            if (i + 1) % accumulate == 0 or i == len(batches) - 1:
                for opt in optimizers:
                    if before_step is not None:
                        before_step(steps)
                    opt.step()
                    opt.zero_grad()
                    steps += 1
            if steps - synced >= k:
                for n, p in net.named_parameters():
                    if p.requires_grad and n not in slow:
                        trainable[n] = p
                        slow[n] = p.detach().to(_slow_dtype(p.dtype), copy=True)
                finite = all(bool(torch.isfinite(p).all()) for p in trainable.values())
                with torch.no_grad():
                    for n, p in trainable.items():
                        if finite:
                            slow[n] += alpha * (p.to(slow[n].dtype) - slow[n])
                        p.copy_(slow[n])
                if not finite:
                    for opt in optimizers:
                        opt.state.clear()
                synced = steps
    fast = {n: p.detach().clone() for n, p in net.named_parameters()}
    return fast, {n: s.clone() for n, s in slow.items()}


def _slow_dtype(dtype: torch.dtype) -> torch.dtype:
    """The reference's dtype for slow weights: float32 for 16-bit parameters."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def batches_of(dataset: TensorDataset, batch_size: int) -> list[tuple[Tensor, Tensor]]:
    return [(x, y) for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False)]


def tiny_radam_reference(
    net: TinyNet, *, epochs: int, k: int, **hooks: Callable[[int], None] | None
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """:func:`reference_lookahead` of ``net`` under ``RAdam(lr=0.05)``, ``alpha=0.5``, on
    ``make_data(20)`` in batches of 4 (the data and optimizer of :class:`Net`'s default run),
    keyed as the LightningModule names the parameters (``net.`` prefix). ``hooks`` are
    ``before_step`` and ``before_epoch``."""
    from lightning_ranger import RAdam

    fast, slow = reference_lookahead(
        net,
        [RAdam(net.parameters(), lr=0.05)],
        batches_of(make_data(20), 4),
        epochs=epochs,
        k=k,
        alpha=0.5,
        **hooks,
    )
    return {f"net.{n}": t for n, t in fast.items()}, {f"net.{n}": t for n, t in slow.items()}
