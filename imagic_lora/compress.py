"""The artifact's LoRA, small: the trained adapter truncated to a parameter budget, stored in fp16.

Every adapted module m holds ΔW_m = (alpha / r) · up_m · down_m, of rank at most r. Its singular values
s_{m,1} ≥ ... say how much each rank-one component adds (ΔW's squared Frobenius norm is Σ s²). A
component of module m costs (its inputs + its outputs) parameters. The truncation keeps the components
with the most energy per parameter, across all modules, until the budget is spent; each kept module is
rewritten at its new rank k as down = sqrt(S_k) · V_kᵀ, up = (k / A) · U_k · sqrt(S_k), so that
(A / k) · up · down is the best rank-k approximation of ΔW_m. A module left with no component is dropped.

Every module carries the same alpha A (the largest kept rank): diffusers reads differing alphas into a
peft ``alpha_pattern`` whose keys for attention modules match nothing, so their scale was silently wrong
there, while ranks that differ per module it reads right.

The adapter is in kohya's format (``lora_unet_...lora_down.weight``, ``.lora_up.weight``, ``.alpha``),
which ComfyUI, AUTOMATIC1111, kohya's scripts and diffusers all load; ranks may differ per module.
"""

from __future__ import annotations

import heapq

import torch


def modules(state: dict[str, torch.Tensor]) -> list[str]:
    """The kohya module names of an adapter (``lora_unet_...``), sorted."""
    return sorted(k[: -len(".lora_down.weight")] for k in state if k.endswith(".lora_down.weight"))


def lora_parameters(state: dict[str, torch.Tensor]) -> int:
    """Parameters of a kohya-format adapter (its down and up matrices)."""
    return sum(v.numel() for k, v in state.items() if not k.endswith(".alpha"))


def factorize(down: torch.Tensor, up: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U (out, r), S (r,), Vᵀ (r, in·k·k) of ΔW = scale · up · down, for down (r, in[, k, k]) and
    up (out, r[, 1, 1]), through QR of the two thin factors (no out x in matrix is formed)."""
    d = down.double().flatten(1)  # (r, n)
    u = up.double().flatten(1)  # (out, r)
    q_u, r_u = torch.linalg.qr(u)  # (out, r), (r, r)
    q_d, r_d = torch.linalg.qr(d.T)  # (n, r), (r, r)
    core_u, s, core_vt = torch.linalg.svd(scale * r_u @ r_d.T)
    return q_u @ core_u, s, core_vt @ q_d.T


def truncate(state: dict[str, torch.Tensor], budget: float, dtype: torch.dtype = torch.float16
             ) -> dict[str, torch.Tensor]:
    """A kohya-format adapter of at most ``budget`` (a fraction, in (0, 1]) of ``state``'s parameters,
    keeping the most energy per parameter; tensors in ``dtype``, one alpha for every module, in fp32."""
    if not 0 < budget <= 1:
        raise ValueError(f"budget must be in (0, 1], got {budget}")
    factors, heap = {}, []
    for name in modules(state):
        down, up = state[f"{name}.lora_down.weight"], state[f"{name}.lora_up.weight"]
        rank = down.shape[0]
        alpha = float(state[f"{name}.alpha"]) if f"{name}.alpha" in state else float(rank)
        u, s, vt = factorize(down, up, alpha / rank)
        factors[name] = (u, s, vt, down.shape, up.shape)
        cost = vt.shape[1] + u.shape[0]
        for i, value in enumerate(s.tolist()):
            heapq.heappush(heap, (-(value ** 2) / cost, name, i, cost))
    allowed = budget * lora_parameters(state)
    spent, keep = 0, {}
    while heap:
        _, name, i, cost = heapq.heappop(heap)
        if spent + cost > allowed:
            continue  # a cheaper component of another module may still fit
        if i != keep.get(name, 0):  # components of a module are taken in order (their energy decreases)
            continue
        keep[name] = i + 1
        spent += cost
    out = {}
    alpha = float(max(keep.values(), default=1))
    for name, k in keep.items():
        u, s, vt, down_shape, up_shape = factors[name]
        root = s[:k].sqrt()
        down = (root[:, None] * vt[:k]).reshape(k, *down_shape[1:])
        up = (u[:, :k] * (root * (k / alpha))[None, :]).reshape(up_shape[0], k, *up_shape[2:])
        out[f"{name}.lora_down.weight"] = down.to(dtype).contiguous()
        out[f"{name}.lora_up.weight"] = up.to(dtype).contiguous()
        out[f"{name}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    return out


def rank_and_alpha(state: dict[str, torch.Tensor]) -> tuple[int, float]:
    """The largest rank and alpha of an adapter: what kohya's ``ss_network_dim`` and ``ss_network_alpha`` state."""
    ranks = [state[f"{m}.lora_down.weight"].shape[0] for m in modules(state)]
    alphas = [float(v) for k, v in state.items() if k.endswith(".alpha")]
    return max(ranks, default=0), max(alphas, default=0.0)


def delta(state: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """ΔW of module ``name`` (out, in·k·k), fp64: for checks."""
    down, up = state[f"{name}.lora_down.weight"].double(), state[f"{name}.lora_up.weight"].double()
    rank = down.shape[0]
    alpha = float(state[f"{name}.alpha"]) if f"{name}.alpha" in state else float(rank)
    return alpha / rank * up.flatten(1) @ down.flatten(1)


def kept_energy(original: dict[str, torch.Tensor], truncated: dict[str, torch.Tensor]) -> float:
    """The share of the original adapter's energy (Σ‖ΔW‖², all modules) the truncated one keeps."""
    total = sum(float(delta(original, n).pow(2).sum()) for n in modules(original))
    kept = 0.0
    for name in modules(truncated):
        kept += float(delta(truncated, name).pow(2).sum())
    return kept / total if total > 0 else 1.0
