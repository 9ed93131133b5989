"""The decoder's norms, rotary embedding and attention as single opset-23 ONNX operators, for the export only.

Traced as transformers writes them, each RMSNorm is six nodes, each rotary application seven, and attention
repeats the KV heads up to the query head count (grouped-query attention is used by transformers' SDPA path only
when no mask is passed; the export always passes one), then transposes the whole cache every step: about 75 nodes
a layer, which at the default model's size cost more than its matmuls on onnxruntime's CPU provider. Opset 23 has
`RMSNormalization`, `RotaryEmbedding` and `Attention` (which reads the cache at the KV head count and returns the
present cache itself), all in the standard domain. While `standard_ops(model)` is active, each RMSNorm and each
attention module of the model computes with `torch.nn.functional.rms_norm` and `torch.onnx.ops`, which the
exporter writes as those operators, and q/k/v (and gate/up) are one MatMul each, split after: one pass over the
activations instead of three (two). The graph's inputs, outputs and cache layout stay what they were.
"""

from __future__ import annotations

import contextlib
import types

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import PrunekitError

OPSET = 23
# The in-place cache writes each step's keys and values into the buffer with TensorScatter, new in opset 24.
OPSET_INPLACE = 24
FUSED = "_prunekit_fused"  # the attribute holding a module's fused projection while the export runs
INPLACE = "_prunekit_inplace"  # the attribute holding the in-place graph's shared mask and write positions
# The projections each fused MatMul stands for, in the order of its output columns.
FUSIONS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def fused_linear(parts: list[nn.Linear]) -> nn.Linear:
    """One Linear computing `parts` side by side (their outputs concatenated)."""
    w = torch.cat([p.weight.detach() for p in parts])
    # On the meta device: no full weight allocated and initialised only to be replaced.
    out = nn.Linear(w.shape[1], w.shape[0], bias=any(p.bias is not None for p in parts), device="meta")
    out.weight = nn.Parameter(w, requires_grad=False)
    if out.bias is not None:
        b = [p.bias.detach() if p.bias is not None else torch.zeros(p.out_features) for p in parts]
        out.bias = nn.Parameter(torch.cat(b), requires_grad=False)
    return out


def fusions(model):
    """(module, [its projection names]) for every fusable group in `model`."""
    for m in model.modules():
        for names in FUSIONS:
            if all(isinstance(getattr(m, n, None), nn.Linear) for n in names):
                yield m, names


def _rms_norm(self, x):
    return F.rms_norm(x, tuple(self.weight.shape), self.weight, self.variance_epsilon)


def _attention(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None, **_):
    inplace = getattr(self, INPLACE, None)
    if inplace is not None:
        attention_mask = inplace["mask"]  # the graph's own mask over the buffer, not transformers'
    if attention_mask is None or past_key_values is None:
        # A missing mask would silently drop padding; the export always traces with both.
        raise PrunekitError("ONNX export traced attention without a mask or a cache: an exporter bug, report it.")
    hd = self.head_dim
    hq, hk = self.q_proj.weight.shape[0] // hd, self.k_proj.weight.shape[0] // hd
    q, k, v = getattr(self, FUSED)(hidden_states).split([hq * hd, hk * hd, hk * hd], -1)
    if hasattr(self, "q_norm"):  # Qwen3: RMSNorm over each head
        q = self.q_norm(q.unflatten(-1, (hq, hd))).flatten(-2)
        k = self.k_norm(k.unflatten(-1, (hk, hd))).flatten(-2)
    cos, sin = position_embeddings  # [batch, seq, head_dim], each half repeated (rotate-half layout)
    if cos.shape[-1] != hd:
        raise PrunekitError(
            f"rotary embedding over {cos.shape[-1]} of {hd} head dims (partial rotary) is not supported by the ONNX "
            "export: it needs the rotary over the whole head."
        )
    cos, sin = cos[..., : hd // 2], sin[..., : hd // 2]
    q = torch.onnx.ops.rotary_embedding(q, cos, sin, num_heads=hq)
    k = torch.onnx.ops.rotary_embedding(k, cos, sin, num_heads=hk)
    layer = past_key_values.layers[self.layer_idx]
    if inplace is not None:
        out, layer.keys, layer.values = _buffer_attention(q, k, v, layer, inplace, hq, hk, hd, self.scaling)
    else:
        out, layer.keys, layer.values, _ = torch.onnx.ops.attention(
            q, k, v, attention_mask, layer.keys, layer.values, q_num_heads=hq, kv_num_heads=hk, scale=self.scaling
        )
    return self.o_proj(out), None


def _buffer_attention(q, k, v, layer, ctx, hq, hk, hd, scale):
    """Attention over a preallocated cache buffer [batch, capacity, kv_heads * head_dim]: this step's keys and
    values are written into it at ctx["index"] (TensorScatter, which onnxruntime runs in place when the runner
    binds the present output to the past input's memory), then attention reads the whole buffer under
    ctx["mask"]. No copy of the cache a step, where `Attention` with past and present returns a new, longer cache
    every step; and the buffer keeps the projections' own layout, so nothing is reshaped or transposed."""

    def scatter(buf, new):
        return torch.onnx.ops.symbolic(
            "TensorScatter", (buf, new, ctx["index"]), {"axis": 1}, dtype=buf.dtype, shape=buf.shape, version=24
        )

    keys, values = scatter(layer.keys, k), scatter(layer.values, v)
    out = torch.onnx.ops.attention(q, keys, values, ctx["mask"], q_num_heads=hq, kv_num_heads=hk, scale=scale)[0]
    return out, keys, values


def _mlp(self, x):
    gate, up = getattr(self, FUSED)(x).split([self.gate_proj.out_features, self.up_proj.out_features], -1)
    return self.down_proj(self.act_fn(gate) * up)


def _is_rms_norm(m) -> bool:
    return type(m).__name__.endswith("RMSNorm") and hasattr(m, "variance_epsilon") and hasattr(m, "weight")


def _is_attention(m) -> bool:
    return all(hasattr(m, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling", "layer_idx"))


@contextlib.contextmanager
def standard_ops(model, inplace: dict | None = None):
    """Patch every RMSNorm and attention module of `model` to compute with the opset-23 operators, and restore
    them after. The trace refuses a rotary embedding that does not cover the whole head (the operator is given
    half a head of cos/sin), whatever config key asked for it. With `inplace` (a dict the traced wrapper fills
    with the mask and write positions each call), attention writes into a preallocated cache buffer instead."""
    patched: dict = {}  # module -> the forward it had on the instance (None: the class's)
    try:
        for m in model.modules():
            if _is_rms_norm(m):
                fwd = _rms_norm
            elif _is_attention(m):
                fwd = _attention
            elif hasattr(m, "act_fn") and all(isinstance(getattr(m, n, None), nn.Linear) for n in FUSIONS[1]):
                fwd = _mlp
            else:
                continue
            patched[m] = m.__dict__.get("forward")
            m.forward = types.MethodType(fwd, m)
            if fwd is _attention and inplace is not None:
                setattr(m, INPLACE, inplace)
        if not any(_is_attention(m) for m in patched):
            raise PrunekitError(f"ONNX export found no attention module it knows in {type(model).__name__}.")
        for m, names in fusions(model):
            setattr(m, FUSED, fused_linear([getattr(m, n) for n in names]))
        yield
    finally:
        for m, fwd in patched.items():
            if fwd is None:
                del m.forward  # the class's forward again
            else:
                m.forward = fwd
        for m, _ in fusions(model):
            if hasattr(m, FUSED):
                delattr(m, FUSED)
        for m in patched:
            if INPLACE in m.__dict__:
                delattr(m, INPLACE)
