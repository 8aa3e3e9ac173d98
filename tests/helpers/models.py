"""The modules the tests train: :class:`TinyNet` and the regression ``Net`` around it (with two
optimizers, a NaN gradient, FSDP2 sharding), and a tied-embedding language model."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from helpers.data import IN, OUT, VOCAB, make_data, tokens_loader
from lightning_ranger import RAdam

HIDDEN, WIDTH = 8, 8


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


def regression_module(base: type, name: str) -> type:
    """A class ``name``: the regression ``Net`` on ``base``, the ``LightningModule`` of
    ``lightning.pytorch`` or of ``pytorch_lightning``: the same layers, data and optimizer under
    either namespace."""

    class Net(base):  # type: ignore[valid-type, misc]
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
            # Rank r takes samples r, r + world, ...: the ranks' batches i together are batch i of
            # the single-process run (Lightning's own sampler would shuffle).
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

    Net.__name__ = Net.__qualname__ = name
    return Net


#: Regression on :func:`make_data` (logs ``val_loss`` and ``test_loss``) as a
#: ``lightning.pytorch.LightningModule``.
Net = regression_module(LightningModule, "Net")


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


class ShardedNet(Net):
    """FSDP2: each linear layer and the root are sharded over the data-parallel mesh."""

    def configure_model(self) -> None:
        if isinstance(self, FSDPModule):  # sharded by an earlier fit or evaluation of the trainer
            return
        mesh = self.device_mesh["data_parallel"]
        for layer in (self.net.layers["inp"], self.net.layers["out"]):
            fully_shard(layer, mesh=mesh)
        fully_shard(self, mesh=mesh)


class RootShardedNet(Net):
    """FSDP2 with the root as the only unit: it holds every parameter, and FSDP2 keeps a root's
    parameters unsharded after a forward without backward (an evaluation)."""

    def configure_model(self) -> None:
        if not isinstance(self, FSDPModule):
            fully_shard(self, mesh=self.device_mesh["data_parallel"])


class ShardedNaNGradientNet(NaNGradientNet):
    """FSDP2 as :class:`ShardedNet`, with the NaN gradient of :class:`NaNGradientNet` (in the
    local shard of the ranks that get it)."""

    configure_model = ShardedNet.configure_model


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


class ShardedTiedLM(TiedLM):
    """FSDP2: the tied language model sharded as one unit (its embedding and output layer share a
    tensor)."""

    def configure_model(self) -> None:
        fully_shard(self, mesh=self.device_mesh["data_parallel"])
