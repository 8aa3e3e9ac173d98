r"""Lookahead (Zhang et al., 2019) as an optimizer that wraps any other: for plain PyTorch loops,
Lightning Fabric and torch's FSDP2, where no Lightning callback runs."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer

from lightning_ranger._validation import check_choice, check_int, check_real
from lightning_ranger.optim._lookahead_state import (
    SLOW_KEY,
    STEP_KEY,
    copies_from,
    split_state_dict,
    with_slow_weights,
)
from lightning_ranger.optim.lookahead import local_tensor
from lightning_ranger.optim.slow_copies import SlowCopies

__all__ = ["SLOW_KEY", "STEP_KEY", "Lookahead"]


class Lookahead(Optimizer):
    r"""Lookahead around any optimizer: slow weights that follow its fast weights every ``k`` steps.

    `Lookahead Optimizer: k steps forward, 1 step back <https://arxiv.org/abs/1907.08610>`_ keeps
    slow weights ``phi`` beside the fast weights ``theta`` that ``optimizer`` moves, and after
    every ``k``-th step:

    .. code-block:: text

        phi   <- phi + alpha (theta - phi)
        theta <- phi

    Use it in a plain PyTorch or Lightning Fabric loop; inside a Lightning ``Trainer`` use the
    :class:`~lightning_ranger.callbacks.lookahead.Lookahead` callback (not both: the ``Trainer``
    refuses that). Both run the same code (:class:`~lightning_ranger.optim.slow_copies.SlowCopies`).

    - *An optimizer*: ``param_groups``, ``state``, ``defaults``, ``zero_grad``,
      ``add_param_group`` and the hooks are the inner optimizer's, so lr schedulers,
      ``torch.amp.GradScaler``, ``fabric.setup_optimizers`` and torch's distributed-checkpoint
      helpers see one ordinary optimizer.
    - *When*: the slow weights start as a copy of the parameters when the first ``step()`` begins
      (the paper's ``phi_0 = theta_0``), so the first sync already interpolates. A step that
      ``GradScaler`` skips for inf/NaN gradients does not count, also when a fused inner optimizer
      receives the scaler's ``found_inf``. Parameters added with ``add_param_group`` get slow
      weights from their values then.
    - *Which weights*: slow weights of float16/bfloat16 parameters are float32; those of
      ``DTensor`` parameters (FSDP2) are ``DTensor``\ s of the same placements, one shard per
      rank. Evaluate on the slow weights inside ``with optimizer.slow_weights(model):``; leave
      them in the model at the end with :meth:`keep_slow_weights`.
    - *Faults*: before each sync the fast weights are checked for NaN and infinity, on every rank
      when ``torch.distributed`` is initialized. With ``on_nonfinite="restore"`` the fast weights
      restart from the slow ones, the inner optimizer's ``state`` is emptied, :attr:`restores`
      counts it and rank 0 warns; ``"raise"`` raises ``FloatingPointError`` naming the parameter.
    - *Checkpoints*: ``state_dict()`` is the inner optimizer's, with the slow weights as the
      per-parameter entry ``"lookahead_slow_buff"`` and the steps taken as the param-group key
      ``"lookahead_step"`` (timm's names: its ``Lookahead`` state dicts load here and back). Only
      tensors and plain containers, in ``state`` and ``param_groups``: ``torch.load(...,
      weights_only=True)`` and ``torch.distributed.checkpoint`` (``get_optimizer_state_dict``)
      keep everything, and a resume continues bit for bit, from the middle of a cycle too.

    Args:
        optimizer: the inner optimizer, any ``torch.optim.Optimizer`` but a ``Lookahead``.
        k: number of steps between syncs, a positive int. Default: ``6``.
        alpha: slow-weight step size, in ``(0, 1]``. Default: ``0.5``.
        on_nonfinite: ``"restore"`` the fast weights from the slow ones when a sync finds a NaN or
            infinite fast weight, or ``"raise"``. Default: ``"restore"``.

    Raises:
        TypeError: if ``optimizer`` is not an ``Optimizer``, ``k`` not an int, ``alpha`` not a real
            number, or ``on_nonfinite`` not a string.
        ValueError: if ``optimizer`` is a ``Lookahead`` already, ``k < 1``, ``alpha`` is outside
            ``(0, 1]``, or ``on_nonfinite`` is unknown.
        FloatingPointError: at a sync with ``on_nonfinite="raise"``, if a fast weight is NaN or
            infinite (on any rank).

    Example::

        >>> import torch
        >>> from lightning_ranger import RAdam
        >>> model = torch.nn.Linear(4, 1)
        >>> optimizer = Lookahead(RAdam(model.parameters(), lr=1e-2), k=6, alpha=0.5)
        >>> for _ in range(12):
        ...     model(torch.randn(8, 4)).square().mean().backward()
        ...     optimizer.step()
        ...     optimizer.zero_grad()
        >>> with optimizer.slow_weights(model):
        ...     loss = model(torch.randn(8, 4)).square().mean()

    """

    def __init__(
        self,
        optimizer: Optimizer,
        k: int = 6,
        alpha: float = 0.5,
        on_nonfinite: Literal["restore", "raise"] = "restore",
    ) -> None:
        if isinstance(optimizer, Lookahead):
            raise ValueError(
                "`optimizer` is a `Lookahead` already; wrap the inner optimizer once "
                "(`Lookahead(optimizer.optimizer, ...)`)"
            )
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"`optimizer` must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        # `Optimizer.__init__` is not called: `param_groups`, `state` and `defaults` are the inner
        # optimizer's (properties below), and its step hooks run in the inner `step()`.
        self.optimizer = optimizer
        self.k = check_int("k", k)
        self.alpha = check_real("alpha", alpha, 0.0, 1.0, low_open=True)
        self.on_nonfinite: Literal["restore", "raise"] = check_choice(
            "on_nonfinite", on_nonfinite, ("restore", "raise")
        )
        #: How many times a sync found a NaN or infinite fast weight and restored the fast weights.
        self.restores = 0
        self._copies: SlowCopies | None = None
        for group in self.param_groups:
            group.setdefault(STEP_KEY, 0)

    # The inner optimizer's own attributes (its `load_state_dict` replaces `param_groups`).
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, groups: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = groups

    @property
    def state(self) -> Any:
        return self.optimizer.state

    @state.setter
    def state(self, state: Any) -> None:
        self.optimizer.state = state

    @property
    def defaults(self) -> dict[str, Any]:
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, defaults: dict[str, Any]) -> None:
        self.optimizer.defaults = defaults

    @property
    def _step_supports_amp_scaling(self) -> bool:
        """Whether ``GradScaler`` hands the inner optimizer its ``found_inf`` (fused optimizers)."""
        return bool(getattr(self.optimizer, "_step_supports_amp_scaling", False))

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"Lookahead(k={self.k}, alpha={self.alpha}, optimizer={self.optimizer!r})"

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @property
    def steps(self) -> int:
        """The steps taken (those that ``GradScaler`` skipped not counted); a sync follows every
        ``k``-th."""
        return int(self.param_groups[0][STEP_KEY]) if self.param_groups else 0

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Step the inner optimizer, then sync the slow weights if this was the ``k``-th step
        since the last sync.

        Args:
            closure: passed to the inner optimizer's ``step``.

        """
        if self._copies is None:
            self._copies = SlowCopies(self._params())
        # A fused inner optimizer skips the update itself when GradScaler found inf/NaN.
        found_inf = getattr(self, "found_inf", None)
        if found_inf is not None:
            self.optimizer.found_inf = found_inf  # type: ignore[attr-defined]
            self.optimizer.grad_scale = getattr(self, "grad_scale", None)  # type: ignore[attr-defined]
        try:
            loss = self.optimizer.step() if closure is None else self.optimizer.step(closure)
        finally:
            if found_inf is not None:
                del self.optimizer.found_inf  # type: ignore[attr-defined]
                del self.optimizer.grad_scale  # type: ignore[attr-defined]
        if found_inf is not None and bool(found_inf):
            return loss
        steps = self.steps + 1
        for group in self.param_groups:
            group[STEP_KEY] = steps
        if steps % self.k == 0:
            self._sync()
        return loss

    def _sync(self) -> None:
        assert self._copies is not None
        params = self._copies.params
        device = local_tensor(params[0]).device if params else "cpu"
        index = self._copies.nonfinite(device)
        if index is None:
            self._copies.sync(self.alpha)
            return
        name = self._name(params[index])
        if self.on_nonfinite == "raise":
            raise FloatingPointError(
                f"Lookahead found a NaN or infinite fast weight in parameter {name} at step "
                f"{self.steps} (`on_nonfinite='raise'`)"
            )
        self._copies.restore()
        self.optimizer.state.clear()
        self.restores += 1
        if not dist.is_initialized() or dist.get_rank() == 0:
            warnings.warn(
                f"Lookahead found a NaN or infinite fast weight in parameter {name} at step "
                f"{self.steps}: the fast weights restart from the slow weights of step "
                f"{self.steps - self.k} and the inner optimizer's state is cleared (restores so "
                f"far: {self.restores})",
                stacklevel=3,
            )

    def _name(self, param: Tensor) -> str:
        """``param``'s name in ``param_names`` (an optimizer built from ``named_parameters()``),
        else its group and index."""
        for g, group in enumerate(self.param_groups):
            for i, p in enumerate(group["params"]):
                if p is param:
                    names = group.get("param_names")
                    return repr(names[i]) if names else f"param_groups[{g}]['params'][{i}]"
        raise KeyError("not a parameter of this optimizer")

    @contextmanager
    def slow_weights(self, module: nn.Module | None = None) -> Iterator[None]:
        """Put the slow weights in the parameters for the block (to evaluate), and the fast ones
        back afterwards, also when the block raises. Before the first step the two are equal and
        nothing moves.

        Args:
            module: the model whose forward runs, when FSDP shards it (``fully_shard``, or the
                ``FullyShardedDataParallel`` wrapper of the root): its units are resharded around
                the swap, so that the forwards inside and after the block compute with the weights
                written. Needed for ``DTensor`` parameters.

        Raises:
            ValueError: if the parameters are ``DTensor``\\ s and ``module`` is ``None``.

        """
        copies = self._swap_copies(module)
        if copies is None or not copies.show_slow():
            yield
            return
        try:
            yield
        finally:
            copies.show_fast()
            copies.root = None

    def keep_slow_weights(self, module: nn.Module | None = None) -> None:
        """Leave the slow weights in the parameters for good, the paper's output, as at the end
        of training; the fast weights are dropped (a later step goes on from the slow weights, in
        the same k-cycle).

        Args:
            module: as for :meth:`slow_weights`.

        """
        copies = self._swap_copies(module)
        if copies is not None:
            copies.restore()
            copies.root = None

    def _swap_copies(self, module: nn.Module | None) -> SlowCopies | None:
        if module is None and any(isinstance(p, DTensor) for p in self._params()):
            raise ValueError(
                "The parameters are DTensors (FSDP2): pass `module=`, the model whose forward "
                "runs, so that FSDP's unsharded copies of them are freed around the swap"
            )
        if self._copies is not None:
            if self._copies.shows_slow:
                raise RuntimeError("The parameters hold the slow weights already")
            self._copies.root = module
        return self._copies

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the inner optimizer; its parameters get slow weights from their values
        now (the next sync moves them with the others)."""
        steps = self.steps
        self.optimizer.add_param_group(param_group)
        self.param_groups[-1][STEP_KEY] = steps
        if self._copies is not None:
            self._copies.extend(self.param_groups[-1]["params"])

    def register_step_pre_hook(self, hook: Callable[..., Any]) -> Any:
        return self.optimizer.register_step_pre_hook(hook)

    def register_step_post_hook(self, hook: Callable[..., Any]) -> Any:
        return self.optimizer.register_step_post_hook(hook)

    def register_state_dict_pre_hook(self, hook: Callable[..., Any], prepend: bool = False) -> Any:
        return self.optimizer.register_state_dict_pre_hook(hook, prepend)

    def register_state_dict_post_hook(self, hook: Callable[..., Any], prepend: bool = False) -> Any:
        return self.optimizer.register_state_dict_post_hook(hook, prepend)

    def register_load_state_dict_pre_hook(
        self, hook: Callable[..., Any], prepend: bool = False
    ) -> Any:
        return self.optimizer.register_load_state_dict_pre_hook(hook, prepend)

    def register_load_state_dict_post_hook(
        self, hook: Callable[..., Any], prepend: bool = False
    ) -> Any:
        return self.optimizer.register_load_state_dict_post_hook(hook, prepend)

    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's state dict, with the slow weights under ``"lookahead_slow_buff"``
        in each parameter's state and the steps taken under ``"lookahead_step"`` in each group."""
        return with_slow_weights(self.optimizer.state_dict(), self._params(), self._copies)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict of :meth:`state_dict` (or of timm's ``Lookahead``, after its first
        sync) into the inner optimizer and the slow weights.

        The slow weights keep their dtype (float32 for 16-bit parameters) and placement; without
        any in ``state_dict`` (saved before the first step) they start at the next step.

        Raises:
            ValueError: if a parameter's state holds other keys than the inner optimizer keeps (a
                state dict of another optimizer), or timm's ``lookahead_k``/``lookahead_alpha``
                differ from this wrapper's ``k`` and ``alpha``.

        """
        inner, slow = split_state_dict(state_dict, self.optimizer, self.k, self.alpha)
        self.optimizer.load_state_dict(inner)
        for group in self.param_groups:
            group.setdefault(STEP_KEY, 0)
        self._copies = copies_from(slow, self._params())
