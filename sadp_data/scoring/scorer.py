"""``SpikeAwareScorer``: per-example importance scores from tensors the training step already has.

The default score of example ``i`` is the exact norm of its loss gradient with respect to the readout
layer, weights and bias together (``docs/method.md`` §1, ``docs/score.md``):

    ‖∂ℓ_i/∂W‖² + ‖∂ℓ_i/∂b‖² = Σ_{t,t'} (δ_t·δ_t')(s_t·s_t') + ‖Σ_t δ_t‖²

with ``s_t`` the readout's input at time step ``t`` and ``δ_t = ∂ℓ_i/∂z_t`` the gradient at its output.
For a non-spiking readout of mean logits it is ``‖δ‖·sqrt(‖r̄‖² + 1)`` (``r̄`` the firing rates), so silent
examples score low; a spiking readout's ``δ_t`` carries the surrogate derivative, so saturated ones do.
Cost: one ``torch.autograd.grad`` through the loss and readout only (none for cross-entropy on mean
logits) and two ``[B, T, T]`` Gram matrices or the ``[B, C, H]`` gradient (the cheaper), from hooks; model untouched.
``score="full_gradient"`` covers every linear, conv and batch-norm layer instead (``full_gradient.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .._arguments import check_step_arguments
from ..distributed import ScoreExchange, rank_and_world
from ..store.table import ScoreTable
from ._closed_form import cross_entropy_scores
from ._mean_logit import MeanLogitForm
from ._transfer import ScoreTransfer
from .full_gradient import full_gradient_hooks, full_gradient_only
from .gradient_norms import readout_gradient_norm
from .readout import (
    TimeLayout,
    check_detected,
    detection_candidates,
    name_of,
    refuse_output,
    resolve_layer,
)

_MAX_PENDING_CALLS = 4096

#: The importance scores a ``SpikeAwareScorer`` can compute.
SCORE_VARIANTS: tuple[str, ...] = ("spike_aware", "rate", "grad_bound", "loss", "full_gradient")


class SpikeAwareScorer:
    """Scores each training batch and sends the scores to a ``ScoreStore``.

    Args:
        model: the SNN; only forward hooks are added (``remove()`` takes them off).
        store: where scores go (``None``: scores are computed and returned by ``last_scores`` only).
        layer: the classifier (an ``nn.Linear``) or its name in ``model.named_modules()``. By
            default the ``nn.Linear`` that runs last in the first training forward pass is used,
            unless a module holding a weight matrix (a stateful cell with weights, e.g. norse's
            ``LILinearCell``) runs after it: then ``sadp_data.scoring.readout.ReadoutError`` names both;
            pass ``layer=`` when the model has several heads. A layer whose output is not a tensor
            (a cell returning ``(output, state)``) is refused with a ``ReadoutError``: its first
            output is not the affine map the score is exact for.
        score: which importance score to use (see ``SCORE_VARIANTS`` and ``docs/score.md``):
            ``spike_aware`` (default) the exact readout-layer gradient norm, through the output
            neurons' surrogate derivative when the readout spikes; ``rate`` the firing-rate form
            ``‖δ‖·sqrt(1 + ‖r̄‖²)`` with ``δ`` the gradient at the outputs (equal to
            ``spike_aware`` for a non-spiking readout of mean logits, blind to output spiking);
            ``grad_bound`` ``‖δ‖`` (Katharopoulos & Fleuret 2018); ``loss`` the loss itself;
            ``full_gradient`` the exact gradient norm over every linear, conv and affine batch-norm layer,
            read from the training's own backward (``scoring.full_gradient``; ``full_gradient_layers=k``:
            the last ``k`` such layers only): scores reach the store when ``backward()`` ends.
        loss: ``"cross_entropy"`` declares that the per-example loss is plain cross-entropy on
            ``outputs`` with class-index targets: ``rate`` and ``grad_bound`` then use the closed
            form ``δ = softmax(outputs) − onehot(targets)`` (a fused numba.cuda kernel on GPU)
            instead of autograd, and so does ``spike_aware`` whenever the outputs are the time-mean
            of a biased linear readout's logits (then the two scores are equal; checked per batch, on
            GPU when drained, ``_mean_logit``): no ``autograd.grad`` call, about 3 % of a demo MLP step.
        sync_every: in a data-parallel run (``torch.distributed`` initialised, world size > 1), the
            scores of all ranks are all-gathered every ``sync_every`` steps and applied on every rank,
            so every rank's store mirror stays identical (``sadp_data.distributed.ScoreExchange``);
            open the store with ``sadp_data.distributed.open_store`` so only rank 0 writes it. A
            ``PartitionedScoreStore`` is not all-gathered: it routes each score to the rank owning its
            example (its own ``sync_every``).
        time_axis: where the readout's 3-D inputs hold time: 0 for ``[T, B, H]``, 1 for
            ``[B, T, H]``. By default it is read from the shapes, and 0 for a spikingjelly layer in
            multi-step mode; with as many time steps as examples (``T == B``) and nothing declared,
            scoring raises ``ReadoutError`` instead of guessing.

    The readout may be applied once to ``[T, B, H]``, ``[B, T, H]`` or ``[T·B, H]`` inputs
    (spikingjelly multi-step, ``SeqToANNContainer``) or once per time step to ``[B, H]``
    (single-step models); time-major order is assumed in the flattened case unless ``time_axis=1``.
    """

    def __init__(
        self,
        model: nn.Module,
        store: ScoreTable | None = None,
        layer: nn.Module | str | None = None,
        score: str = "spike_aware",
        loss: str | None = None,
        sync_every: int = 1,
        time_axis: int | None = None,
        full_gradient_layers: int | None = None,
    ) -> None:
        if time_axis not in (None, 0, 1):
            raise ValueError(f"time_axis must be None, 0 or 1, got {time_axis!r}")
        if score not in SCORE_VARIANTS:
            raise ValueError(f"score must be one of {SCORE_VARIANTS}, got {score!r}")
        if loss not in (None, "cross_entropy"):
            raise ValueError(f"loss must be None or 'cross_entropy', got {loss!r}")
        self.score = score
        self.loss = loss
        self.full_gradient = full_gradient_hooks(score, model, self._push, layer, full_gradient_layers, time_axis)
        self.model = model
        self.store = store
        self.exchange: ScoreExchange | None = None
        if store is not None and rank_and_world()[1] > 1 and store.rank_region is None:
            self.exchange = ScoreExchange(store, sync_every)  # a table split across ranks routes scores itself
        self._closed_form = MeanLogitForm()
        self._transfer = ScoreTransfer(store, self.exchange, self._closed_form.refuse)
        self.last_scores: torch.Tensor | None = None
        #: (module, input, output, forward number) of every readout call since the last step.
        self._calls: list[tuple[nn.Module, torch.Tensor, torch.Tensor, int]] = []
        self._forward_number = 0
        self._forwards_per_step: int | None = None
        self._handles: list[RemovableHandle] = []
        self._time_axis = time_axis
        #: weighted non-Linear modules that ran after the last readout candidate call, while detecting.
        self._ran_after: list[nn.Module] = []
        self._unreadable: tuple[nn.Module, object] | None = None
        self.layer: nn.Module | None = None
        watched: list[nn.Module] = []
        if self.full_gradient is not None:
            candidates = []
        elif layer is not None:
            candidates = [resolve_layer(model, layer)]
        else:
            candidates, watched = detection_candidates(model)
        self._handles = [m.register_forward_hook(self._record) for m in candidates]
        self._watch_handles = [m.register_forward_hook(self._record_after) for m in watched]
        if layer is not None or (len(candidates) == 1 and not watched):
            self._set_layer(candidates[0])
        self._input_dims: tuple[int, ...] | None = None
        self._input_handle = model.register_forward_pre_hook(self._record_input)

    def _record_input(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        """Keep the leading dims of the model's input (shapes only) to check ``step()`` against them."""
        if torch.is_grad_enabled():
            self._forward_number += 1
            if args and isinstance(args[0], torch.Tensor):
                self._input_dims = tuple(args[0].shape[:2])

    def _record_after(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if torch.is_grad_enabled():
            self._ran_after.append(module)

    def _record(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if not torch.is_grad_enabled():
            return
        if not isinstance(output, torch.Tensor):
            self._unreadable = (module, output)
            return
        self._ran_after.clear()
        self._calls.append((module, inputs[0].detach(), output, self._forward_number))
        # Only the latest forwards can belong to the next step: free older graphs (e.g. of a validation loop
        # run without no_grad, or of batches trained without step()). Before the first step, a readout call
        # with a time axis ([T, B, C]: a multi-step model) means one forward is one batch.
        window = self._forwards_per_step or (1 if output.dim() == 3 else None)
        if window is not None:
            oldest = self._forward_number - window + 1
            while self._calls[0][3] < oldest:
                del self._calls[0]
        elif len(self._calls) > _MAX_PENDING_CALLS:
            del self._calls[0]

    def rescore(
        self,
        batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        reset: Callable[[nn.Module], None] | None = None,
    ) -> int:
        """Score ``(inputs, targets, indices)`` batches without training; returns how many examples were scored.

        Runs the model in its current mode (``model.eval()`` keeps batch-norm statistics frozen; in
        training mode they move as in any training forward), with gradients enabled for the readout
        only as far as the score needs, and sends the scores to the store: a re-scoring pass between
        epochs, or over examples whose scores are stale. Parameters are not changed and no gradient
        is left on them. ``loss_fn`` gives per-example losses (default: cross-entropy);
        ``reset(model)`` clears neuron state after each batch (e.g. ``adapters.spikingjelly.reset``).
        """
        import torch.nn.functional as F

        loss_fn = loss_fn or (lambda out, y: F.cross_entropy(out, y, reduction="none"))
        count = 0
        self.discard_pending()
        for inputs, targets, indices in batches:
            with torch.enable_grad():
                outputs = self.model(inputs)
                scores = self.scores(loss_fn(outputs, targets), outputs, targets)
            if reset is not None:
                reset(self.model)
            self._push(torch.as_tensor(indices), scores)
            count += int(scores.shape[0])
        return count

    def discard_pending(self) -> None:
        """Forget the forward passes recorded since the last ``step()`` (and free their graphs; scores of
        earlier steps still reach the store). Call it after forwards in training mode that no ``step()``
        follows, e.g. a diagnostic probe between training steps, so the next ``step()`` scores its own batch.
        """
        self._calls.clear()
        if self.full_gradient is not None:
            self.full_gradient.discard_pending()

    def remove(self) -> None:
        """Remove the forward hooks (applying the scores still on their way first); the model is as it was."""
        if self.full_gradient is not None:
            self.full_gradient.remove()
        self._transfer.close()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._input_handle.remove()
        self._calls.clear()
        self._stop_watching()

    def _stop_watching(self) -> None:
        for handle in self._watch_handles:
            handle.remove()
        self._watch_handles.clear()
        self._ran_after.clear()

    def _set_layer(self, layer: nn.Module) -> None:
        self.layer = layer
        self._layout = TimeLayout.of(layer, name_of(self.model, layer), self._time_axis)

    def _lock_layer(self) -> nn.Module:
        """The readout: ``layer=``, or the detected one, checked and then the only module hooked."""
        if self.layer is not None:
            return self.layer
        picked = self._calls[-1][0]
        try:
            check_detected(self.model, picked, self._ran_after)
        except ValueError:
            self._calls.clear()
            raise
        self._stop_watching()
        self._set_layer(picked)
        for handle in self._handles:
            handle.remove()
        self._handles = [picked.register_forward_hook(self._record)]
        return picked

    def compute(
        self,
        per_sample_loss: torch.Tensor,
        outputs: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        variants: tuple[str, ...] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Score variants of the last recorded forward pass (float32 ``[B]`` each, detached).

        ``variants`` defaults to this scorer's ``score``; ``outputs`` (the tensor the loss was
        computed from) is needed by ``grad_bound`` and ``rate``, and ``targets`` (class indices)
        by the closed-form path of ``loss="cross_entropy"``. All requested variants share one
        ``torch.autograd.grad`` call. Consumes the recorded forward pass.
        """
        return self._compute(per_sample_loss, outputs, targets, variants, defer=False)[0]

    def _compute(
        self,
        per_sample_loss: torch.Tensor,
        outputs: torch.Tensor | None,
        targets: torch.Tensor | None,
        variants: tuple[str, ...] | None,
        defer: bool,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """``compute``, and the closed form's device-side ``[gap, scale]`` when ``defer`` leaves its check
        to whoever reads it (``ScoreTransfer``); ``None`` when it was checked here or not used."""
        variants = (self.score,) if variants is None else tuple(variants)
        unknown = set(variants) - set(SCORE_VARIANTS)
        if unknown:
            raise ValueError(f"unknown score variants {sorted(unknown)}; choose from {SCORE_VARIANTS}")
        if full_gradient_only(self.full_gradient, variants):
            return {"full_gradient": self.full_gradient.compute(per_sample_loss)}, None
        needs_outputs = {"grad_bound", "rate"} & set(variants)
        needs_readout = {"spike_aware", "rate"} & set(variants)
        if needs_outputs and outputs is None:
            raise ValueError(f"score variants {sorted(needs_outputs)} need the outputs the loss was computed from")
        batch = per_sample_loss.shape[0]
        if needs_readout and self._input_dims is not None and batch not in self._input_dims:
            self._calls.clear()
            raise ValueError(
                f"the last training forward pass had an input of shape [{', '.join(map(str, self._input_dims))}, ...] "
                f"but the loss has {batch} examples: score the whole forwarded batch and slice the scores, or "
                "forward only the examples you score (a part of the batch would misread the time axis)"
            )
        calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        if needs_readout:
            if self._unreadable is not None:
                raise refuse_output(self.model, *self._unreadable)
            if not self._calls:
                raise RuntimeError(
                    "no classifier forward pass was recorded since the last step: run the model with "
                    "gradients enabled (not under torch.no_grad) before calling step()"
                )
            layer = self._lock_layer()
            calls = [(x, z) for module, x, z, _ in self._calls if module is layer]
            self._forwards_per_step = len({number for *_, number in self._calls})
        self._calls.clear()
        fused, check = (
            self._closed_form.scores(self.layer, self._layout, calls, outputs, targets, batch, defer)
            if self.loss == "cross_entropy" and "spike_aware" in variants and targets is not None
            else (None, None)
        )
        mean_logits = fused is not None
        closed_form = self.loss == "cross_entropy" and ("spike_aware" not in variants or mean_logits)
        if closed_form and targets is None:
            raise ValueError("loss='cross_entropy' needs the targets (class indices)")
        wrt = ([] if closed_form or not needs_outputs else [outputs]) + (
            [z for _, z in calls] if "spike_aware" in variants and not mean_logits else []
        )
        grads = torch.autograd.grad(per_sample_loss.sum(), wrt, retain_graph=True, allow_unused=True) if wrt else ()
        result: dict[str, torch.Tensor] = {}
        if "loss" in variants:
            result["loss"] = per_sample_loss.detach().to(torch.float32)
        if needs_outputs:
            if closed_form:
                output_grad = None
            else:
                output_grad, grads = grads[0], grads[1:]
                if output_grad is None:
                    raise RuntimeError("the outputs passed to step() do not feed this loss")
        if fused is not None:
            result["spike_aware"] = fused
        elif "spike_aware" in variants:
            connected = [(x, g) for (x, _), g in zip(calls, grads, strict=True) if g is not None]
            if not connected:
                raise RuntimeError(
                    f"the classifier {type(self.layer).__name__} does not feed this loss; pass "
                    "layer=<the readout layer> to SpikeAwareScorer"
                )
            result["spike_aware"] = readout_gradient_norm(
                self._layout.stack([x for x, _ in connected], batch),
                self._layout.stack([g for _, g in connected], batch),
                getattr(self.layer, "bias", None) is not None,
            )
        if needs_outputs:
            rate_sq = self._layout.rate_sq([x for x, _ in calls], batch) if "rate" in variants else None
            if closed_form:
                result.update(cross_entropy_scores(outputs.detach(), targets, rate_sq))
            else:
                delta_norm = output_grad.detach().reshape(batch, -1).to(torch.float32).norm(dim=1)
                if "grad_bound" in variants:
                    result["grad_bound"] = delta_norm
                if rate_sq is not None:
                    result["rate"] = delta_norm * torch.sqrt(1.0 + rate_sq)
        return {name: result[name] for name in variants}, check

    def _push(self, indices: torch.Tensor, scores: torch.Tensor, epoch: int | None = None) -> None:
        """Hand one batch's scores to the store through the transfer (``epoch``: the stamp taken at its step)."""
        self.last_scores = scores
        self._transfer.submit(indices, scores, None, epoch)

    def scores(
        self, per_sample_loss: torch.Tensor, outputs: torch.Tensor | None = None, targets: torch.Tensor | None = None
    ) -> torch.Tensor:
        """This scorer's ``score`` variant for the last recorded forward pass (float32 ``[B]``, detached)."""
        return self.compute(per_sample_loss, outputs, targets)[self.score]

    def step(
        self,
        indices: torch.Tensor,
        outputs: torch.Tensor,
        targets: torch.Tensor,
        per_sample_loss: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Score the batch, queue the scores for the store, return ``mean(weights * loss)``.

        ``per_sample_loss`` must be unreduced (one value per example, e.g.
        ``F.cross_entropy(out, y, reduction="none")``); the returned scalar is what to call
        ``backward()`` on. ``weights`` are the plan's: all 1 by default (the kept examples' mean loss);
        Horvitz–Thompson weights (``weight_power=1``) make it an unbiased estimate of the full-data mean.
        Never waits for the GPU: scores computed there reach a ``ScoreStore`` at a later ``step()`` once copied,
        and always before the store is read, synchronised (the next epoch's plan), flushed (checkpoints) or
        closed (``sadp_data.scoring._transfer``); a data-parallel all-gather or ``PartitionedScoreStore`` route waits.
        """
        check_step_arguments(indices, outputs, targets, per_sample_loss, weights)
        if self.full_gradient is None:
            result, check = self._compute(per_sample_loss, outputs, targets, None, self._transfer.defers(outputs))
            self.last_scores = result[self.score]
            self._transfer.submit(indices, self.last_scores, check)
        if weights is not None:
            weights = weights.to(
                per_sample_loss.device, per_sample_loss.dtype, non_blocking=weights.device.type == "cpu"
            )
        total = per_sample_loss.mean() if weights is None else (per_sample_loss * weights).mean()
        if self.full_gradient is not None:
            epoch = None if self.store is None else self.store.current_epoch
            self.full_gradient.expect_backward(indices, weights, total, epoch)
        return total
