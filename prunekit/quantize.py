"""Weight quantization after the cut (and any recovery): int8 per output channel, int4 per group, symmetric.

The model keeps float weights, each replaced by its dequantized value (integer x scale), and a `Quantized`
record per linear holds the integers and scales that the writers pack: compressed-tensors for the HF
checkpoint (export/hf.py) and MatMulNBits for the ONNX graph (export/quantize_onnx.py). Both therefore carry
the same numbers, and every check of the float model is a check of what the runtimes run. Scales are rounded up
to bfloat16: vLLM loads them in bf16 on CPU, so the integers it sees are the ones chosen here.

In the core because export quantizes; the calibration sequences GPTQ needs come from compress's mix
(`prunekit.compress.quantize_calibration`), which the app layer builds and hands to export.

Methods: round-to-nearest (`rtn`), and GPTQ (`gptq`: each column's rounding error spread over the columns not
yet quantized, weighted by the inverse Hessian of the layer's calibration inputs), run layer by layer on the
calibration mix so that a layer's Hessians come from the already quantized layers before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm

from .errors import PrunekitError
from .families import Family, get_module
from .offload import first_layer_inputs, placement

SCHEMES = {"int8": 8, "int4": 4}
GROUPS = (128, 64, 32)  # int4 group sizes tried in order: the largest that divides every input width
GPTQ_BLOCK = 128  # columns whose errors are applied lazily (the paper's block; any multiple of the group works)


@dataclass
class Quantized:
    """One linear's integers [out, in] (int8 tensor, in [-2^(b-1), 2^(b-1)-1]) and scales [out, in // group]."""

    q: torch.Tensor
    scale: torch.Tensor
    bits: int
    group: int  # input columns per scale (== in_features for per-channel)


def linears(model, fam: Family) -> dict[str, torch.nn.Linear]:
    """The decoder's projections by module name (the LM head and embeddings are left to the writers)."""
    out = {}
    prefix = fam.layers
    for i, layer in enumerate(get_module(model, fam.layers)):
        for part, names in ((fam.attn, (fam.q, fam.k, fam.v, fam.o)), (fam.mlp, (fam.gate, fam.up, fam.down))):
            for n in names:
                out[f"{prefix}.{i}.{part}.{n}"] = getattr(getattr(layer, part), n)
    return out


def group_size(model, fam: Family, bits: int) -> int:
    """Per-channel for int8; for int4 the largest group of GROUPS dividing every projection's input width
    (vLLM's CPU 4-bit kernel needs one that divides, and input and output widths that are multiples of 32)."""
    ins = {m.in_features for m in linears(model, fam).values()}
    outs = {m.out_features for m in linears(model, fam).values()}
    if bits == 8:
        return 0
    for g in GROUPS:
        if all(w % g == 0 for w in ins) and all(w % 32 == 0 for w in outs):
            return g
    raise PrunekitError(
        f"int4 needs every projection width to be a multiple of 32 (input widths {sorted(ins)}, output widths "
        f"{sorted(outs)}); re-run compress with --align 32 (or a multiple of it), or use --quantize int8."
    )


def _scale(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric scale of each row of w, as compressed-tensors computes it (max |w| over half the integer range),
    rounded to bfloat16."""
    qmax = 2 ** (bits - 1)
    s = w.abs().amax(dim=1, keepdim=True) / (qmax - 0.5)
    b = s.to(torch.bfloat16)
    up = torch.nextafter(b, torch.full_like(b, float("inf"))).float()
    s = torch.where(b.float() < s, up, b.float())  # rounded up: the largest weight must not clip
    return torch.where(s > 0, s, torch.ones_like(s))


def _round(w: torch.Tensor, s: torch.Tensor, bits: int) -> torch.Tensor:
    qmax = 2 ** (bits - 1)
    return torch.clamp(torch.round(w / s), -qmax, qmax - 1)


def rtn(w: torch.Tensor, bits: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest: (integers, scales [out, groups])."""
    out, n = w.shape
    g = group or n
    wg = w.float().reshape(out * (n // g), g)
    s = _scale(wg, bits)
    return _round(wg, s, bits).reshape(out, n), s.reshape(out, n // g)


def gptq(w: torch.Tensor, h: torch.Tensor, bits: int, group: int, damp: float = 0.01, actorder: bool = True):
    """GPTQ (Frantar et al. 2022) of one weight [out, in] given its input Hessian h [in, in] (sum of x x^T).
    With `actorder` the columns go in order of decreasing Hessian diagonal (the inputs with the most energy
    first, while the most columns remain to absorb their error), each group's scale fixed beforehand from the
    weights as they were ("static" ordering in llm-compressor, whose default it is: the packed groups stay
    contiguous for the kernels)."""
    w = w.float().clone()
    out, n = w.shape
    g = group or n
    h = h.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += damp * torch.diag(h).mean() * torch.eye(n, dtype=h.dtype)
    perm = torch.argsort(torch.diag(h), descending=True) if actorder else torch.arange(n)
    scales = _scale(w.reshape(out * (n // g), g), bits).reshape(out, n // g) if actorder else torch.zeros(out, n // g)
    w, h = w[:, perm], h[perm][:, perm]
    try:
        hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    except torch.linalg.LinAlgError:  # a degenerate Hessian (too few samples): rounding alone is still correct
        return rtn(w[:, torch.argsort(perm)], bits, group)
    q = torch.zeros_like(w)
    block = max(GPTQ_BLOCK // g, 1) * g if g < n else n
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        w1, err = w[:, i1:i2].clone(), torch.zeros(out, i2 - i1)
        hi = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = int(perm[i1 + i])
            if not actorder and col % g == 0:  # the group's scale from its columns as updated so far
                scales[:, col // g] = _scale(w1[:, i : i + g], bits)[:, 0]
            s = scales[:, col // g]
            qc = _round(w1[:, i], s, bits)
            q[:, i1 + i] = qc
            e = (w1[:, i] - qc * s) / hi[i, i]
            w1[:, i:] -= e[:, None] * hi[i, i:][None, :]
            err[:, i] = e
        w[:, i2:] -= err @ hinv[i1:i2, i2:]
    return q[:, torch.argsort(perm)], scales


def dequantized(r: Quantized) -> torch.Tensor:
    out, n = r.q.shape
    g = r.group or n
    return (r.q.float().reshape(out, n // g, g) * r.scale[:, :, None]).reshape(out, n)


def _store(mod: torch.nn.Linear, q: torch.Tensor, s: torch.Tensor, bits: int, group: int) -> Quantized:
    r = Quantized(q.to(torch.int8), s.float(), bits, group or mod.in_features)
    with torch.no_grad():
        mod.weight.copy_(dequantized(r).to(mod.weight.dtype))
    return r


def quantize(model, fam: Family, scheme: str, method="rtn", calib: dict | None = None, batch=8, actorder=True):
    """Quantize the decoder's projections in place (weights become their dequantized values). Returns
    ({module name: Quantized}, info). GPTQ needs `calib` (domain -> token ids [n, seq])."""
    bits = SCHEMES[scheme]
    group = group_size(model, fam, bits)
    mods = linears(model, fam)
    info = {"scheme": scheme, "bits": bits, "group_size": group or "channel", "method": method}
    if method == "gptq":
        info["actorder"] = "static" if actorder else "none"
    if method == "rtn":
        return {n: _store(m, *rtn(m.weight.data, bits, group), bits, group) for n, m in mods.items()}, info
    if not calib:
        raise PrunekitError("GPTQ needs calibration text: pass --calib (a mix YAML, or 'default').")
    place = placement(model)
    layers = get_module(model, fam.layers)
    batches = [ids[s : s + batch] for ids in calib.values() for s in range(0, len(ids), batch)]
    hidden, kwargs = first_layer_inputs(model, layers[0], batches)
    info["calibration_sequences"] = sum(len(v) for v in calib.values())
    out = {}

    def run(layer):
        outs = []
        with torch.no_grad(), place.layer(layer):
            for h, kw in zip(hidden, kwargs):
                o = layer(h, **kw)
                outs.append(o[0] if isinstance(o, tuple) else o)
        return outs

    for i, layer in enumerate(tqdm(layers, desc=f"gptq {scheme}", unit="layer")):
        names = [n for n in mods if n.startswith(f"{fam.layers}.{i}.")]
        grams: dict[str, torch.Tensor] = {}

        def hook(name, grams=grams):
            def fn(mod, args):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
                grams[name] = grams.get(name, 0) + x.T @ x

            return fn

        hs = [mods[n].register_forward_pre_hook(hook(n)) for n in names]
        try:
            run(layer)
        finally:
            for h in hs:
                h.remove()
        for n in names:
            m = mods[n]
            out[n] = _store(m, *gptq(m.weight.data, grams.pop(n), bits, group, actorder=actorder), bits, group)
        hidden = run(layer)  # the next layer sees this one quantized
    return out, info
