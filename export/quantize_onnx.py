"""The ONNX graph of a quantized model: each projection's MatMul becomes onnxruntime's `MatMulNBits` (8 or 4 bit,
block-wise, symmetric), written from the same integers and scales as the HF checkpoint.

The graph is exported from the model whose weights hold their dequantized values; a MatMul is matched to its
projection by the bytes of its constant weight (names are the exporter's own), so nothing depends on how the
exporter names nodes. The LM head, which compressed-tensors leaves in bf16 for vLLM, is quantized here too
(int8 per channel, round-to-nearest): at the default model it is 28M of the 105M decoder weights read per
decoded token. The embedding stays a float Gather: it reads one row per token, not the whole table.
`MatMulNBits` is a com.microsoft operator: the quantized graph names it in the manifest as the one non-standard
op it needs, and stock onnxruntime (CPU and CUDA) runs it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from prunekit.quantize import Quantized, rtn

from .onnx_ops import FUSIONS

CONTRIB = "com.microsoft"
QUANT_OPS = ("MatMulNBits",)
INT8_BLOCK = 128  # MatMulNBits blocks must be powers of two >= 16; per-channel int8 repeats its scale per block
ACCURACY_LEVEL = 4  # int8 activations inside MatMulNBits on CPU: the fast path (CPU EP ignores it elsewhere)


def _key(w: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(w, dtype=np.float32).tobytes()).hexdigest() + str(w.shape)


def pack(r: Quantized, block: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(B uint8 [N, blocks, block * bits / 8], scales float32 [N, blocks], block) for MatMulNBits with the
    default zero point 2^(bits-1): stored = q + 2^(bits-1)."""
    q = r.q.to(torch.int16).numpy()  # [N, K]
    n, k = q.shape
    blocks = -(-k // block)
    qs = np.zeros((n, blocks * block), dtype=np.int16)
    qs[:, :k] = q
    stored = (qs + 2 ** (r.bits - 1)).astype(np.uint8).reshape(n, blocks, block)
    if r.bits == 4:
        stored = stored[:, :, 0::2] | (stored[:, :, 1::2] << 4)
    per_block = r.group // block if r.group >= block else None
    scale = r.scale.numpy()
    if per_block is None:  # blocks as wide as the groups (int4)
        scales = scale
    else:  # blocks inside groups: each group's scale repeated over its blocks, the padding block included
        scales = np.repeat(scale, per_block, axis=1)
        scales = np.pad(scales, ((0, 0), (0, blocks - scales.shape[1])), mode="edge")
    return np.ascontiguousarray(stored), np.ascontiguousarray(scales.astype(np.float32)), block


def _fused_records(model, records: dict[str, Quantized]) -> dict[str, tuple[Quantized, int]]:
    """The records of the export's fused projections (q/k/v, gate/up: export/onnx_ops.py), by weight key: their
    integers and scales side by side, as the fused weight holds their values."""
    out = {}
    mods = dict(model.named_modules())
    for name in mods:
        for names in FUSIONS:
            full = [f"{name}.{n}" for n in names]
            rs = [records.get(f) for f in full]
            if None in rs or len({(r.bits, r.group) for r in rs}) != 1:
                continue
            w = torch.cat([mods[f].weight.detach().float() for f in full]).numpy()
            q, s = torch.cat([r.q for r in rs]), torch.cat([r.scale for r in rs])
            out[_key(w)] = (Quantized(q, s, rs[0].bits, rs[0].group), len(rs))
    return out


def rewrite(path: Path, model, records: dict[str, Quantized], head_bits: int = 8) -> dict:
    """Replace the matched MatMuls of the graph at `path` (saved again in place, external data beside it) and
    quantize the LM head's. Returns what was quantized."""
    import onnx
    from onnx import helper, numpy_helper

    by_weight = _fused_records(model, records)
    for name, mod in model.named_modules():
        if name in records:
            by_weight[_key(mod.weight.detach().float().numpy())] = (records[name], 1)
    g = onnx.load(str(path), load_external_data=True)
    graph = g.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    new_nodes, dropped, head, done = [], set(), None, 0
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] in producer and producer[node.input[1]].op_type != "Transpose":
            new_nodes.append(node)
            continue
        b = node.input[1]
        if b in inits:
            w = numpy_helper.to_array(inits[b]).T  # [N, K] as torch stores it
            src = b
        elif producer[b].input[0] in inits and consumers.get(b) == 1:
            w = numpy_helper.to_array(inits[producer[b].input[0]])  # Transpose(W [N, K])
            src = producer[b].input[0]
            dropped.add(producer[b].name)
        else:
            new_nodes.append(node)
            continue
        r, covers = by_weight.get(_key(w), (None, 0))
        done += covers
        if r is None:
            if w.shape[0] != model.config.vocab_size:  # not a projection we know, not the head: leave it
                dropped.discard(producer[b].name if b in producer else "")
                new_nodes.append(node)
                continue
            q, s = rtn(torch.from_numpy(np.array(w)), head_bits, 0)
            r = Quantized(q.to(torch.int8), s, head_bits, w.shape[1])
            head = {"bits": head_bits, "method": "rtn", "group_size": "channel", "shape": list(w.shape)}
        blob, scales, block = pack(r, INT8_BLOCK if r.bits == 8 else r.group)
        stem = f"{src}.q{r.bits}"
        graph.initializer.extend(
            [numpy_helper.from_array(blob, stem), numpy_helper.from_array(scales, stem + ".scales")]
        )
        new_nodes.append(
            helper.make_node(
                "MatMulNBits",
                [node.input[0], stem, stem + ".scales"],
                list(node.output),
                name=(node.name or stem) + "_nbits",
                domain=CONTRIB,
                K=w.shape[1],
                N=w.shape[0],
                bits=r.bits,
                block_size=block,
                accuracy_level=ACCURACY_LEVEL,
            )
        )
    nodes = [n for n in new_nodes if n.name not in dropped]
    graph.ClearField("node")
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    graph.ClearField("initializer")
    graph.initializer.extend(keep)
    if not any(o.domain == CONTRIB for o in g.opset_import):
        g.opset_import.append(helper.make_opsetid(CONTRIB, 1))
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    onnx.save_model(g, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)
    if done != len(records):
        raise RuntimeError(f"matched {done} MatMuls to {len(records)} quantized projections; the graph changed shape")
    return {"matmul_nbits": done, "lm_head": head, "accuracy_level": ACCURACY_LEVEL, "contrib_ops": list(QUANT_OPS)}
