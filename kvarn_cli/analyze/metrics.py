"""Error metrics of a quantized-cache run against the 16-bit run on the same tokens.

Per position t of a text (all float32 on the CPU, whatever device the model ran on):
- attention-output MAE of every layer (mean |a - a_ref| over the heads*head_dim channels);
- KL(p_ref || p) of the next-token distributions, top-1 agreement, and the NLL of the actual
  next token;
- for tokens whose K/V was quantized: the token-norm error ||K^_t|| - ||K_t|| per layer and KV
  head (and the same for V), where K_t is the quantizer's input and K^_t its output, because
  the paper traces the damaging errors to wrong token scales.

Scalar summaries (KL, top-1, NLL) use only positions that can see a quantized block: with the
first block kept 16-bit (sink) and the current block unquantized, that is t >= 2*block.
Everything "by position" covers every position, so plots show the error-free start too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


def choose_bin_size(num_tokens: int, block: int) -> int:
    """1024-token bins as in the paper, smaller for short texts so a plot has ~8+ points.

    A power of two, at least one block, at most 1024.
    """
    target = max(1, num_tokens // 8)
    size = 1 << (target.bit_length() - 1)  # largest power of two <= target
    return int(min(1024, max(block, size)))


def next_token_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax in float32 on the CPU, `[tokens, vocab]`."""
    return torch.log_softmax(logits.detach().float(), dim=-1).cpu()


def kl_divergence(ref_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """KL(p_ref || p) per row; exactly 0 where the two rows are equal."""
    return (ref_logp.exp() * (ref_logp - logp)).sum(dim=-1).clamp_min(0.0)


@dataclass
class TextMetrics:
    """Per-position errors of one (method, mode) on one text."""

    num_layers: int
    num_kv_heads: int
    num_tokens: int
    attn_mae: torch.Tensor = field(init=False)  # [layers, tokens]
    kl: torch.Tensor = field(init=False)  # [tokens]
    top1_agree: torch.Tensor = field(init=False)  # [tokens] bool
    nll: torch.Tensor = field(init=False)  # [tokens], NaN at the last position
    key_norm_err: torch.Tensor = field(init=False)  # [layers, heads, tokens], NaN where not quantized
    key_norm_rel_err: torch.Tensor = field(init=False)
    value_norm_rel_err: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        t, lay, h = self.num_tokens, self.num_layers, self.num_kv_heads
        self.attn_mae = torch.zeros(lay, t)
        self.kl = torch.zeros(t)
        self.top1_agree = torch.ones(t, dtype=torch.bool)
        self.nll = torch.full((t,), math.nan)
        nan = torch.full((lay, h, t), math.nan)
        self.key_norm_err = nan.clone()
        self.key_norm_rel_err = nan.clone()
        self.value_norm_rel_err = nan

    def add_outputs(
        self,
        start: int,
        attn: torch.Tensor,
        ref_attn: torch.Tensor,
        logp: torch.Tensor,
        ref_logp: torch.Tensor,
        next_ids: torch.Tensor,
    ) -> None:
        """Record positions [start, start+n) from one block forward.

        attn/ref_attn: `[layers, n, channels]`; logp/ref_logp: `[n, vocab]`; next_ids: the
        tokens at positions start+1 .. (up to n of them; fewer at the end of the text).
        """
        n = logp.shape[0]
        end = start + n
        self.attn_mae[:, start:end] = (attn - ref_attn).abs().mean(dim=-1).cpu()
        self.kl[start:end] = kl_divergence(ref_logp, logp)
        self.top1_agree[start:end] = ref_logp.argmax(dim=-1) == logp.argmax(dim=-1)
        m = next_ids.shape[0]
        if m:
            self.nll[start : start + m] = -logp[:m].gather(1, next_ids.view(-1, 1).cpu()).squeeze(1)

    def add_norms(self, start: int, source: list[tuple[torch.Tensor, torch.Tensor]],
                  restored: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Token-norm errors of one quantized block: source is the quantizer input, restored its
        dequantized output, both per layer `([heads, n, D], [heads, n, D])`."""
        for layer, ((k, v), (k_hat, v_hat)) in enumerate(zip(source, restored)):
            n = k.shape[1]
            k_norm = k.float().norm(dim=-1).cpu()
            k_hat_norm = k_hat.float().norm(dim=-1).cpu()
            v_norm = v.float().norm(dim=-1).cpu()
            v_hat_norm = v_hat.float().norm(dim=-1).cpu()
            self.key_norm_err[layer, :, start : start + n] = k_hat_norm - k_norm
            self.key_norm_rel_err[layer, :, start : start + n] = (k_hat_norm - k_norm) / k_norm.clamp_min(1e-12)
            self.value_norm_rel_err[layer, :, start : start + n] = (v_hat_norm - v_norm) / v_norm.clamp_min(1e-12)


def _binned_mean(rows: list[torch.Tensor], bin_size: int, num_bins: int) -> list[float | None]:
    """Mean per position bin of `[..., tokens]` tensors of different lengths, ignoring NaNs.

    A bin no text reaches (or with only NaNs) is None.
    """
    sums = torch.zeros(num_bins, dtype=torch.float64)
    counts = torch.zeros(num_bins, dtype=torch.float64)
    for row in rows:
        flat = row.reshape(-1, row.shape[-1]).double()
        positions = torch.arange(row.shape[-1])
        bins = (positions // bin_size).expand_as(flat)
        valid = ~torch.isnan(flat)
        sums.index_add_(0, bins[valid], flat[valid])
        counts.index_add_(0, bins[valid], torch.ones_like(flat[valid]))
    return [float(s / c) if c > 0 else None for s, c in zip(sums.tolist(), counts.tolist())]


def _nan_summary(values: torch.Tensor) -> dict[str, float | None]:
    values = values[~torch.isnan(values)].double()
    if values.numel() == 0:
        return {"mean_signed": None, "mean_abs": None, "p99_abs": None, "max_abs": None, "count": 0}
    a = values.abs()
    return {
        "mean_signed": float(values.mean()),
        "mean_abs": float(a.mean()),
        "p99_abs": float(_quantile(a, 0.99)),
        "max_abs": float(a.max()),
        "count": int(values.numel()),
    }


def _quantile(values: torch.Tensor, q: float) -> float:
    """torch.quantile refuses > 16M elements; sort instead (linear interpolation, same result)."""
    ordered = values.flatten().sort().values
    pos = q * (ordered.numel() - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, ordered.numel() - 1)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))


def summarize(records: list[TextMetrics], *, first_scored: int, bin_size: int, num_bins: int) -> dict:
    """Pool one (method, mode)'s per-text metrics into the numbers analysis.json reports."""
    kl = torch.cat([r.kl[first_scored:] for r in records]).double()
    agree = torch.cat([r.top1_agree[first_scored:] for r in records])
    nll = torch.cat([r.nll[first_scored:] for r in records]).double()
    nll = nll[~torch.isnan(nll)]
    attn_scored = torch.cat([r.attn_mae[:, first_scored:] for r in records], dim=1).double()
    scored = int(kl.numel())
    out: dict = {
        "scored_positions": scored,
        "kl_mean": float(kl.mean()) if scored else None,
        "kl_p99": _quantile(kl, 0.99) if scored else None,
        "kl_max": float(kl.max()) if scored else None,
        "top1_agreement": float(agree.double().mean()) if scored else None,
        "nll_mean": float(nll.mean()) if nll.numel() else None,
        "attn_mae_mean": float(attn_scored.mean()) if scored else None,
        "attn_mae_by_layer": attn_scored.mean(dim=1).tolist() if scored else [],
        "attn_mae_by_position": _binned_mean([r.attn_mae for r in records], bin_size, num_bins),
        "attn_mae_by_layer_and_position": [
            _binned_mean([r.attn_mae[layer] for r in records], bin_size, num_bins)
            for layer in range(records[0].num_layers)
        ],
        "kl_by_position": _binned_mean([r.kl for r in records], bin_size, num_bins),
        "key_norm_error": _nan_summary(torch.cat([r.key_norm_err.flatten() for r in records])),
        "key_norm_rel_error": _nan_summary(torch.cat([r.key_norm_rel_err.flatten() for r in records])),
        "value_norm_rel_error": _nan_summary(torch.cat([r.value_norm_rel_err.flatten() for r in records])),
        "key_norm_rel_error_abs_by_position": _binned_mean(
            [r.key_norm_rel_err.abs() for r in records], bin_size, num_bins
        ),
    }
    return out
