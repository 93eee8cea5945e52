"""A small stand-in for vLLM's scheduler and block manager, and a reference for what the
paged KVarN cache must return, used to test kvarn_cli.kvcache.staging + compute without an
engine.

The simulated engine allocates physical blocks like vLLM does (a free queue, prefix caching
of full blocks keyed by their token prefix, blocks cached as soon as they are scheduled to
fill, preemption that frees everything), and schedules chunked prefills and decodes of
several requests in one batch. K/V/Q of a token are a pure function of the token prefix, so
shared prefixes really produce identical K/V, as in a real model.

The reference attends with every key in full precision except the ones the KVarN rules say
come from a record: blocks complete before the step (but not a first block whose 16-bit sink
copy is resident), and tokens whose staged copy was spilled (the plan says which).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from kvarn_cli.kvcache.compute import Codec, LayerCache, attend, decode_fixed, flush_decode_fills, maintain, update_cache
from kvarn_cli.kvcache.graph import DecodeBuffers
from kvarn_cli.kvcache.staging import StagingPool, StepPlan


class GridQuantizer:
    """A lossy codec that is easy to reason about: rotate, round to a 1/4 grid, keep float32.

    Rounding is elementwise, so the reference can predict every dequantized value exactly.
    """

    def __init__(self, head_dim: int, block_size: int, rotation: torch.Tensor | None = None, step: float = 0.25) -> None:
        self.head_dim = head_dim
        self.block_size = block_size
        self.rotation = rotation
        self.step = step
        self.record_bytes = 2 * block_size * head_dim * 4

    def grid(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x / self.step) * self.step

    def rotated(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.rotation is None else x @ self.rotation

    def unrotated(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.rotation is None else x @ self.rotation.T

    def roundtrip(self, x: torch.Tensor) -> torch.Tensor:
        """What a stored-then-read value looks like, in the original domain."""
        return self.unrotated(self.grid(self.rotated(x.float())))

    def quantize_batch(self, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        kq = self.grid(self.rotated(k.float()))
        vq = self.grid(self.rotated(v.float()))
        flat = torch.cat([kq.reshape(k.shape[0], -1), vq.reshape(v.shape[0], -1)], dim=1).contiguous()
        return flat.view(torch.uint8).reshape(k.shape[0], self.record_bytes)

    def dequantize_batch(self, recs: torch.Tensor, rotated: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        n = recs.shape[0]
        flat = recs.contiguous().view(torch.float32).reshape(n, 2, self.block_size, self.head_dim)
        k, v = flat[:, 0].clone(), flat[:, 1].clone()
        if not rotated:
            k, v = self.unrotated(k), self.unrotated(v)
        return k, v


def reference_varlen(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
    max_q: int, max_k: int, scale: float,
) -> None:
    """Variable-length causal attention as FlashAttention defines it (the signature of
    vllm_compat.varlen_flash_attention), one span at a time in float32 with PyTorch: span i's
    queries are the last positions of its keys, so query j of n sees keys 0 .. m - n + j."""
    assert cu_q.dtype == torch.int32 and cu_k.dtype == torch.int32 and cu_q.shape == cu_k.shape
    assert q.dtype == k.dtype == v.dtype == out.dtype
    qs, ks = cu_q.tolist(), cu_k.tolist()
    assert ks[-1] == k.shape[0] == v.shape[0] and qs[-1] == q.shape[0]
    for a, b, c, e in zip(qs[:-1], qs[1:], ks[:-1], ks[1:]):
        n, m = b - a, e - c
        assert 0 < n <= min(m, max_q) and m <= max_k
        mask = torch.arange(m)[None, :] <= (m - n + torch.arange(n))[:, None]
        o = torch.nn.functional.scaled_dot_product_attention(
            q[a:b].float().transpose(0, 1), k[c:e].float().transpose(0, 1), v[c:e].float().transpose(0, 1),
            attn_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])
        out[a:b] = o.transpose(0, 1).to(out.dtype)


def random_rotation(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q.float()


@dataclass
class Shape:
    block_size: int = 4
    kv_heads: int = 2
    q_heads: int = 4
    head_dim: int = 8


def _token_vectors(prefix_hash: bytes, shape: Shape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    seed = int.from_bytes(prefix_hash[:8], "little") & ((1 << 62) - 1)
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(shape.kv_heads, shape.head_dim, generator=g) * 2.0
    v = torch.randn(shape.kv_heads, shape.head_dim, generator=g) * 2.0
    q = torch.randn(shape.q_heads, shape.head_dim, generator=g)
    return q, k, v


@dataclass
class Request:
    rid: int
    tokens: list[int]
    num_computed: int = 0
    blocks: list[int] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)  # prefix hash after each token

    def __post_init__(self) -> None:
        h = b""
        for t in self.tokens:
            h = hashlib.sha256(h + t.to_bytes(4, "little")).digest()
            self.hashes.append(h)


def check_decode_inputs(plan: StepPlan, G: int) -> None:
    """The Triton decode inputs of every decode group say what its row lists say: the record
    blocks in order, the sink slot with G tokens, the tail slot with its fill (= seq % G)."""
    for group in plan.groups:
        rows = group.q_tokens.shape[0]
        if group.q_tokens.shape[1] != 1:
            assert group.dec_nblk.numel() == 0
            continue
        for i in range(rows):
            blocks = group.hist_block[group.hist_row == i].tolist()
            assert group.dec_table[i, : int(group.dec_nblk[i])].tolist() == blocks
            sink = group.sink_slot[group.sink_row == i].tolist()
            assert group.dec_side_slot[i, 0].item() == (sink[0] if sink else -1)
            assert group.dec_side_len[i, 0].item() == (G if sink else 0)
            tail = group.tail_slot[group.tail_row == i].tolist()
            assert group.dec_side_slot[i, 1].item() == (tail[0] if tail else -1)
            # the tail holds the row's tokens of its last block, the step's own included (a
            # decode that completes the block reads all G tokens from the slot being flushed)
            assert group.dec_side_len[i, 1].item() == (int(group.ctx[i]) % G + 1 if tail else 0)


class SimEngine:
    """Block manager + one attention layer driven through the real plan/update/attend code."""

    def __init__(
        self,
        shape: Shape,
        num_blocks: int,
        num_slots: int,
        quantizer: GridQuantizer,
        *,
        prefix_caching: bool = True,
        seed: int = 0,
        triton: bool | None = False,
        reference: bool = True,
        fixed_padding: int | None = None,
        move_plans: bool = False,
        varlen: Any = None,
    ) -> None:
        """`triton` goes to the Codec (False: the PyTorch path); `reference` compares each
        step with the rule-based reference, which needs a quantizer with `roundtrip` (the
        grid codec). With triton, every step's output is also compared with the PyTorch
        attention on the same cache state (`shadow_err`, relative). With `fixed_padding`
        (Triton only), decode-only steps go through the CUDA-graph form (graph.DecodeBuffers
        + compute.decode_fixed, their fills flushed at the start of the next step) as in
        vLLM, the batch padded by that many junk rows. With `move_plans` each plan goes
        through StepPlan.to, packed as the backend sends plans to a GPU. `varlen` is the
        prefill attention kernel compute.attend takes (None: chunk by chunk in PyTorch)."""
        self.shape = shape
        self.G = shape.block_size
        self.num_blocks = num_blocks
        self.prefix_caching = prefix_caching
        self.free: list[int] = list(range(1, num_blocks))  # block 0 is vLLM's null block
        self.refcount = np.zeros(num_blocks, dtype=np.int64)
        self.cached: dict[bytes, int] = {}  # block-chain hash -> block
        self.block_hash: dict[int, bytes] = {}
        self.pool = StagingPool(num_slots, self.G)
        self.quantizer = quantizer
        self.codec = Codec(quantizer, torch.device("cpu"), triton=triton)
        self.torch_codec = Codec(quantizer, torch.device("cpu"), triton=False)
        self.reference = reference
        self.cache = LayerCache(
            records=torch.zeros(num_blocks, shape.kv_heads, quantizer.record_bytes, dtype=torch.uint8),
            slot_k=torch.zeros(num_slots, shape.kv_heads, self.G, shape.head_dim),
            slot_v=torch.zeros(num_slots, shape.kv_heads, self.G, shape.head_dim),
        )
        # per physical block: offsets whose staged copy went through a record (spilled)
        self.degraded: dict[int, set[int]] = {}
        self.rng = np.random.default_rng(seed)
        self.fixed_padding = fixed_padding
        self.move_plans = move_plans
        self.varlen = varlen
        self.buffers = DecodeBuffers(16, 8, torch.device("cpu")) if fixed_padding is not None else None
        self.fixed_steps = 0
        self.max_err = 0.0
        self.shadow_err = 0.0
        self.last_out = torch.empty(0)
        self.steps = 0

    # -- block manager ----------------------------------------------------------------------
    def _take_block(self) -> int:
        # prefer blocks that hold no cached content, like vLLM's LRU free queue would
        for i, b in enumerate(self.free):
            if b not in self.block_hash:
                return self.free.pop(i)
        b = self.free.pop(0)
        del self.cached[self.block_hash.pop(b)]
        return b

    def _chain_hash(self, req: Request, j: int) -> bytes:
        return req.hashes[(j + 1) * self.G - 1]

    def start(self, req: Request) -> None:
        """Admit (or re-admit after preemption): reuse cached full blocks of the prompt."""
        req.blocks = []
        req.num_computed = 0
        if not self.prefix_caching:
            return
        # vLLM always recomputes at least the last token
        for j in range((len(req.tokens) - 1) // self.G):
            b = self.cached.get(self._chain_hash(req, j))
            if b is None:
                break
            if self.refcount[b] == 0 and b in self.free:
                self.free.remove(b)
            self.refcount[b] += 1
            req.blocks.append(b)
            req.num_computed += self.G

    def release(self, req: Request) -> None:
        """Finish or preempt: every block goes back; cached full blocks stay findable."""
        for b in reversed(req.blocks):
            self.refcount[b] -= 1
            if self.refcount[b] == 0:
                self.free.append(b)
        req.blocks = []
        req.num_computed = 0

    def _allocate_for(self, req: Request, n: int) -> bool:
        need = math.ceil((req.num_computed + n) / self.G) - len(req.blocks)
        if need > len(self.free):
            return False
        for _ in range(need):
            b = self._take_block()
            self.refcount[b] += 1
            req.blocks.append(b)
        if self.prefix_caching:  # cache blocks that this step fills, as the scheduler does
            for j in range(req.num_computed // self.G, (req.num_computed + n) // self.G):
                h = self._chain_hash(req, j)
                b = req.blocks[j]
                if h not in self.cached and b not in self.block_hash:
                    self.cached[h] = b
                    self.block_hash[b] = h
        return True

    # -- one step -----------------------------------------------------------------------------
    def flush_last_decode(self) -> None:
        """Flush the blocks the last CUDA-graph decode step filled, as the metadata builder
        does first thing in the next step (KVarNMetadataBuilder._flush_last_decode)."""
        fills = None if self.buffers is None else self.buffers.take_fills()
        if fills is not None:
            from kvarn_cli.kernels.triton_flush import LayerSlots

            slots = LayerSlots([(self.cache.slot_k, self.cache.slot_v, self.cache.records)])
            flush_decode_fills(self.codec, slots, *fills)

    def step(self, scheduled: list[tuple[Request, int]]) -> StepPlan | None:
        """Run one engine step: each (request, n) computes up to n more tokens. Requests not
        yet running are admitted in list order (so a later one can hit blocks an earlier one
        fills in this very step, as vLLM's scheduler allows)."""
        batch: list[tuple[Request, int]] = []
        for req, n in scheduled:
            if not req.blocks and req.num_computed == 0:
                self.start(req)
            n = min(n, len(req.tokens) - req.num_computed)
            if n <= 0 or not self._allocate_for(req, n):
                continue
            batch.append((req, n))
        if not batch:
            return None
        G, s = self.G, self.shape
        qsl = np.zeros(len(batch) + 1, dtype=np.int64)
        for i, (_, n) in enumerate(batch):
            qsl[i + 1] = qsl[i] + n
        seq = np.array([r.num_computed + n for r, n in batch], dtype=np.int64)
        width = max(len(r.blocks) for r, _ in batch)
        bt = np.zeros((len(batch), width), dtype=np.int64)
        for i, (r, _) in enumerate(batch):
            bt[i, : len(r.blocks)] = r.blocks
        T = int(qsl[-1])
        q = torch.zeros(T, s.q_heads, s.head_dim)
        k = torch.zeros(T, s.kv_heads, s.head_dim)
        v = torch.zeros(T, s.kv_heads, s.head_dim)
        t = 0
        for r, n in batch:
            for p in range(r.num_computed, r.num_computed + n):
                q[t], k[t], v[t] = _token_vectors(r.hashes[p], s)
                t += 1

        self.flush_last_decode()
        plan = self.pool.plan(qsl, seq, bt, T)
        check_decode_inputs(plan, G)
        if self.move_plans:
            plan = plan.to(torch.device("cpu"))
        # blocks this step writes from offset 0 hold fresh tokens only
        for r, n in batch:
            for j in range(math.ceil(r.num_computed / G), math.ceil((r.num_computed + n) / G)):
                self.degraded.pop(r.blocks[j], None)
        for block, fill in zip(plan.spill_block.tolist(), plan.spill_fill.tolist()):
            self.degraded.setdefault(block, set()).update(range(fill))

        out = torch.zeros(T, s.q_heads, s.head_dim)
        maintain(plan, self.codec, self.cache)
        scale = 1.0 / math.sqrt(s.head_dim)
        rows = len(batch) + (self.fixed_padding or 0)
        if self.buffers is not None and self.buffers.fits(plan, rows):
            fixed = self.buffers.load(plan, rows)
            pad = rows - T

            def padded(x: torch.Tensor) -> torch.Tensor:
                return torch.cat([x, torch.full((pad, *x.shape[1:]), 9.0)])  # padding rows hold junk

            out_rows = torch.zeros(rows, s.q_heads, s.head_dim)
            decode_fixed(fixed, self.codec, self.cache, padded(q), padded(k), padded(v), out_rows, scale)
            out = out_rows[:T]
            tiles = (torch.empty(0), torch.empty(0))
            self.fixed_steps += 1
        else:
            tiles = update_cache(plan, self.codec, self.cache, k, v)
            attend(plan, self.codec, self.cache, q, k, v, tiles, out, scale=scale, varlen=self.varlen)
        self.last_out = out
        if self.codec.triton:
            shadow = torch.zeros_like(out)
            attend(plan, self.torch_codec, self.cache, q, k, v, tiles, shadow, scale=scale)
            rel = (out - shadow).norm(dim=-1) / shadow.norm(dim=-1).clamp(min=1e-6)
            self.shadow_err = max(self.shadow_err, float(rel.max()))
        if self.reference:
            expected = self._reference(batch, plan)
            self.max_err = max(self.max_err, float((out - expected).abs().max()))
        for r, n in batch:
            r.num_computed += n
        self.steps += 1
        return plan

    def _sink_rows(self, batch: list[tuple[Request, int]], plan: StepPlan) -> set[int]:
        """Batch entries whose first block the plan reads from a 16-bit sink slot."""
        order = [i for i, (_, n) in enumerate(batch) if n == 1] + [i for i, (_, n) in enumerate(batch) if n > 1]
        rows: set[int] = set()
        seen = 0
        for group in plan.groups:
            for row in group.sink_row.tolist():
                rows.add(order[seen + row])
            seen += group.q_tokens.shape[0]
        return rows

    def _reference(self, batch: list[tuple[Request, int]], plan: StepPlan) -> torch.Tensor:
        G, s = self.G, self.shape
        sink_rows = self._sink_rows(batch, plan)
        T = sum(n for _, n in batch)
        out = torch.zeros(T, s.q_heads, s.head_dim)
        rep = s.q_heads // s.kv_heads
        t = 0
        for i, (r, n) in enumerate(batch):
            ctx = r.num_computed
            full_before = ctx // G
            keys, vals = [], []
            for p in range(ctx + n):
                _, kp, vp = _token_vectors(r.hashes[p], s)
                j, off = divmod(p, G)
                from_record = j < full_before and not (j == 0 and i in sink_rows)
                if p < ctx and (from_record or off in self.degraded.get(r.blocks[j], ())):
                    kp, vp = self.quantizer.roundtrip(kp), self.quantizer.roundtrip(vp)
                keys.append(kp)
                vals.append(vp)
            K = torch.stack(keys, dim=1).repeat_interleave(rep, dim=0)  # [Hq, L, D]
            V = torch.stack(vals, dim=1).repeat_interleave(rep, dim=0)
            for p in range(ctx, ctx + n):
                qp, _, _ = _token_vectors(r.hashes[p], s)
                scores = torch.einsum("hd,hld->hl", qp, K[:, : p + 1]) / math.sqrt(s.head_dim)
                out[t] = torch.einsum("hl,hld->hd", scores.softmax(-1), V[:, : p + 1])
                t += 1
        return out
