"""``SpikeAwareScorer``: per-example importance scores from tensors the forward pass already has.

The score of example ``i`` is the exact norm of its loss gradient with respect to the classifier
(readout) layer, weights and bias together (``docs/method.md`` §1):

    ‖∂ℓ_i/∂W‖² + ‖∂ℓ_i/∂b‖² = Σ_{t,t'} (δ_t·δ_t')(s_t·s_t') + ‖Σ_t δ_t‖²

where ``s_t`` is the classifier's input at time step ``t`` (the spikes of the last hidden layer) and
``δ_t = ∂ℓ_i/∂z_t`` the gradient at its output ``z_t``. For the common non-spiking readout
``o = mean_t z_t``, ``δ_t = δ/T`` and this reduces to ``‖δ‖·sqrt(‖r̄‖² + 1)`` with ``r̄`` the
firing-rate vector: binary spikes make ``‖r̄‖² ≤ spike count / T``, so silent examples get small
scores. When the readout itself spikes (or any loss follows it), ``δ_t`` carries the surrogate
derivative of the output neurons, so saturated examples with a large loss but no gradient score low.

Cost: ``δ_t`` comes from one ``torch.autograd.grad`` of the summed per-example loss with respect to
the classifier output only — a backward through the loss and readout, not the network — and the
norm from two ``[B, T, T]`` Gram matrices. Nothing is recomputed and the model is untouched: a
forward hook records the classifier's inputs and outputs while the model is in training mode with
gradients enabled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .arguments import check_step_arguments
from .distributed import ScoreExchange, rank_and_world
from .full_gradient import full_gradient_hooks, full_gradient_only
from .readout import TimeLayout, check_detected, detection_candidates, name_of, refuse_output, resolve_layer
from .score_kernels import cross_entropy_scores, mean_logit_scores
from .sharded_store import ShardedScoreStore
from .store import ScoreStore

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
            ``LILinearCell``) runs after it: then ``sadp_data.readout.ReadoutError`` names both;
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
            read from the training's own backward (``sadp_data.full_gradient``; ``full_gradient_layers=k``:
            the last ``k`` such layers only): scores reach the store when ``backward()`` ends.
        loss: ``"cross_entropy"`` declares that the per-example loss is plain cross-entropy on
            ``outputs`` with class-index targets: ``rate`` and ``grad_bound`` then use the closed
            form ``δ = softmax(outputs) − onehot(targets)`` (a fused numba.cuda kernel on GPU)
            instead of autograd, and so does ``spike_aware`` whenever the outputs are the time-mean
            of a biased linear readout's logits (checked per batch; then the two scores are equal).
            This removes the ``autograd.grad`` call, about 3 % of a step of the demo's MLP SNN.
        sync_every: in a data-parallel run (``torch.distributed`` initialised, world size > 1), the
            scores of all ranks are all-gathered every ``sync_every`` steps and applied on every rank,
            so every rank's store mirror stays identical (``sadp_data.distributed.ScoreExchange``);
            open the store with ``sadp_data.distributed.open_store`` so only rank 0 writes it. A
            ``ShardedScoreStore`` is not all-gathered: it routes each score to the rank owning its
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
        store: ScoreStore | None = None,
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
        if store is not None and rank_and_world()[1] > 1 and not isinstance(store, ShardedScoreStore):
            self.exchange = ScoreExchange(store, sync_every)  # a ShardedScoreStore routes scores itself
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
        """Forget the forward passes recorded since the last ``step()`` (and free their graphs).

        Call it after forwards in training mode that no ``step()`` follows, e.g. a diagnostic
        probe of the model between training steps, so the next ``step()`` scores its own batch.
        """
        self._calls.clear()
        if self.full_gradient is not None:
            self.full_gradient.discard_pending()

    def remove(self) -> None:
        """Remove the forward hooks; the model is as it was before."""
        if self.full_gradient is not None:
            self.full_gradient.remove()
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
        variants = (self.score,) if variants is None else tuple(variants)
        unknown = set(variants) - set(SCORE_VARIANTS)
        if unknown:
            raise ValueError(f"unknown score variants {sorted(unknown)}; choose from {SCORE_VARIANTS}")
        if full_gradient_only(self.full_gradient, variants):
            return {"full_gradient": self.full_gradient.compute(per_sample_loss)}
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
        fused = (
            self._mean_logit_scores(calls, outputs, targets, batch)
            if self.loss == "cross_entropy" and "spike_aware" in variants and targets is not None
            else None
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
            result["spike_aware"] = _readout_gradient_norm(
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
        return {name: result[name] for name in variants}

    def _mean_logit_scores(
        self,
        calls: list[tuple[torch.Tensor, torch.Tensor]],
        outputs: torch.Tensor | None,
        targets: torch.Tensor,
        batch: int,
    ) -> torch.Tensor | None:
        """The spike-aware scores in closed form when ``outputs`` are the time-mean of the readout's logits.

        For a biased readout whose logits are averaged over time, ``δ_t = δ/T`` and the score is
        exactly ``‖δ‖·sqrt(1 + ‖r̄‖²)`` with the closed form of ``δ`` for cross-entropy: no
        ``autograd.grad`` call. The mean is checked on every batch, in the same fused pass as the
        score (``score_kernels.mean_logit_scores``), so a spiking readout or one that is not averaged
        returns ``None`` and takes the autograd path.
        """
        if outputs is None or not calls or getattr(self.layer, "bias", None) is None or outputs.dim() != 2:
            return None
        logits = self._layout.stack([z.detach() for _, z in calls], batch)
        if logits.shape[1:] != outputs.shape:
            return None
        spikes = self._layout.stack([x for x, _ in calls], batch)
        target = outputs.detach()
        scores, gap, scale = mean_logit_scores(logits, target.to(logits.dtype), targets, spikes)
        return scores if gap <= 1e-5 * scale + 1e-6 else None

    def _push(self, indices: torch.Tensor, scores: torch.Tensor, epoch: int | None = None) -> None:
        """Send one batch's scores to the other ranks (data-parallel) or the store, stamped with the epoch
        they were computed in (``epoch``, default the store's ``current_epoch`` now), however late they are applied."""
        self.last_scores = scores
        if self.store is None:
            return
        epoch = self.store.current_epoch if epoch is None else epoch
        if self.exchange is not None:
            self.exchange.push(indices, scores, epoch)
        else:
            self.store.update(indices.detach().cpu().numpy(), scores.cpu().numpy(), epoch=epoch)

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
        ``backward()`` on — with SADP weights it is an unbiased estimate of the full-data mean loss.
        """
        check_step_arguments(indices, outputs, targets, per_sample_loss, weights)
        if self.full_gradient is None:
            self._push(indices, self.scores(per_sample_loss, outputs, targets))
        total = per_sample_loss.mean() if weights is None else (per_sample_loss * weights.to(per_sample_loss)).mean()
        if self.full_gradient is not None:
            self.full_gradient.expect_backward(
                indices, weights, total, None if self.store is None else self.store.current_epoch
            )
        return total


def _readout_gradient_norm(spikes: torch.Tensor, deltas: torch.Tensor, has_bias: bool) -> torch.Tensor:
    """``sqrt(Σ_{t,t'} (δ_t·δ_t')(s_t·s_t') [+ ‖Σ_t δ_t‖²])`` per example from ``[T, B, ·]`` inputs and output
    gradients: the exact ‖∂ℓ/∂(W, b)‖."""
    spikes, deltas = spikes.transpose(0, 1), deltas.transpose(0, 1)
    norm2 = ((spikes @ spikes.transpose(1, 2)) * (deltas @ deltas.transpose(1, 2))).sum(dim=(1, 2))
    if has_bias:
        norm2 = norm2 + deltas.sum(dim=1).pow(2).sum(dim=1)
    return norm2.clamp_min(0).sqrt().detach()
