"""Activation statistics, collected layer by layer with forward hooks.

The decoder is run one layer at a time on cached hidden states (the llm-compressor "sequential"
pipeline): memory is the weights plus one layer's activations plus the residual stream of the
calibration set, and a layer can be cut and refitted before its output feeds the next layer, so
every layer is calibrated on the already-pruned model's activations.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from prunekit.dist import all_sum, shard, world
from prunekit.env import cpu_has_fast_bf16
from prunekit.families import Family, get_module
from prunekit.offload import Spill, first_layer_inputs, placement


@dataclass
class Moments:
    """Per-channel first and second moments of one activation, summed over tokens (fp32/fp64)."""

    n: int = 0
    sum: torch.Tensor | None = None
    sumsq: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        # One fp32 copy, squared in place after its sum: the same sums as x.sum(0), (x * x).sum(0), with one
        # full-size temporary instead of two (at a 4864-wide MLP input this was 5% of a compress).
        x = x.reshape(-1, x.shape[-1]).to(torch.float32, copy=True)
        s = x.sum(0).double()
        q = x.square_().sum(0).double()
        self.sum = s if self.sum is None else self.sum + s
        self.sumsq = q if self.sumsq is None else self.sumsq + q
        self.n += x.shape[0]

    def mean_sq(self) -> torch.Tensor:
        return self.sumsq / max(self.n, 1)

    def var(self) -> torch.Tensor:
        m = self.sum / max(self.n, 1)
        return (self.mean_sq() - m * m).clamp_min(0)

    def __iadd__(self, other: Moments) -> Moments:
        if other.n:
            self.sum = other.sum.clone() if self.sum is None else self.sum + other.sum
            self.sumsq = other.sumsq.clone() if self.sumsq is None else self.sumsq + other.sumsq
            self.n += other.n
        return self


@dataclass
class DomainStats:
    """What one domain's tokens say about one decoder layer."""

    mlp: Moments = field(default_factory=Moments)  # input of down_proj (I channels)
    attn: Moments = field(default_factory=Moments)  # input of o_proj (H * head_dim channels)
    tokens: int = 0
    resid_sq: float = 0.0  # sum over tokens of ||h_in||^2: the scale a perturbation is judged against
    delta_sq: float = 0.0  # sum over tokens of ||h_out - h_in||^2
    one_minus_cos: float = 0.0  # sum over tokens of 1 - cos(h_in, h_out) (ShortGPT's Block Influence)


@dataclass
class LayerStats:
    domains: dict[str, DomainStats]

    def pooled(self) -> DomainStats:
        out = DomainStats()
        for d in self.domains.values():
            out.mlp += d.mlp
            out.attn += d.attn
            out.tokens += d.tokens
            out.resid_sq += d.resid_sq
            out.delta_sq += d.delta_sq
            out.one_minus_cos += d.one_minus_cos
        return out


def add_input_terms(ds: DomainStats, h: torch.Tensor) -> None:
    hin = h.float()
    ds.tokens += hin.shape[0] * hin.shape[1]
    ds.resid_sq += float((hin * hin).sum())


def add_output_terms(ds: DomainStats, h: torch.Tensor, o: torch.Tensor) -> None:
    hin, hout = h.float(), o.float()
    ds.delta_sq += float(((hout - hin) ** 2).sum())
    ds.one_minus_cos += float((1 - torch.nn.functional.cosine_similarity(hin, hout, dim=-1)).sum())


class LayerRunner:
    """Holds the residual stream of the calibration set and runs it through one layer at a time. Under
    torchrun each rank holds its share of the batches (prunekit.dist); statistics and grams are summed
    over the ranks."""

    def __init__(self, model, fam: Family, batches: list[tuple[str, torch.Tensor]]):
        self.model, self.fam = model, fam
        self.place = placement(model)
        self.all_domains = list(dict.fromkeys(d for d, _ in batches))
        batches = shard(batches)
        self.domains = [d for d, _ in batches]
        self.hidden, self.kwargs = first_layer_inputs(model, self.layers[0], [ids for _, ids in batches])
        self._spills: tuple[Spill, Spill] | None = None

    def spills(self) -> tuple[Spill, Spill]:
        """Two empty spill files (a cut layer's kept inputs and residuals), the same two for every layer."""
        if self._spills is None:
            self._spills = (Spill(), Spill())
        for sp in self._spills:
            sp.clear()
        return self._spills

    def close(self) -> None:
        """Close the spill files (unlinked temporary files: closing frees their disk space)."""
        for sp in self._spills or ():
            sp.close()
        self._spills = None

    @property
    def layers(self):
        return get_module(self.model, self.fam.layers)

    def forward(self, i: int, advance: bool = True) -> list[torch.Tensor]:
        """Run layer i on every batch; with advance, its outputs become the next layer's inputs."""
        layer = self.layers[i]
        outs = []
        with torch.no_grad(), self.place.layer(layer):
            for h, kw in zip(self.hidden, self.kwargs):
                o = layer(h, **kw)
                outs.append(o[0] if isinstance(o, tuple) else o)
        if advance:
            self.hidden = outs
        return outs

    def collect(self, i: int, advance: bool = True) -> LayerStats:
        """Statistics of layer i on the current residual stream, per domain."""
        layer = self.layers[i]
        attn, mlp = getattr(layer, self.fam.attn), getattr(layer, self.fam.mlp)
        stats = LayerStats({d: DomainStats() for d in self.all_domains})
        cur = {"dom": None}

        def hook(kind):
            def fn(_mod, args):
                ds = stats.domains[cur["dom"]]
                getattr(ds, kind).add(args[0])

            return fn

        hs = [
            getattr(mlp, self.fam.down).register_forward_pre_hook(hook("mlp")),
            getattr(attn, self.fam.o).register_forward_pre_hook(hook("attn")),
        ]
        outs = []
        try:
            with torch.no_grad(), self.place.layer(layer):
                for dom, h, kw in zip(self.domains, self.hidden, self.kwargs):
                    cur["dom"] = dom
                    o = layer(h, **kw)
                    o = o[0] if isinstance(o, tuple) else o
                    add_input_terms(stats.domains[dom], h)
                    add_output_terms(stats.domains[dom], h, o)
                    outs.append(o)
        finally:
            for h in hs:
                h.remove()
        if world()[1] > 1:
            _sum_over_ranks(
                stats,
                getattr(mlp, self.fam.down).in_features,
                getattr(attn, self.fam.o).in_features,
                self.place.device,
            )
        if advance:
            self.hidden = outs
        return stats


def _sum_over_ranks(stats: LayerStats, n_mlp: int, n_attn: int, device) -> None:
    """Every rank's sums added up, in one collective for the moments and counts of all domains, in the same
    order on every rank; a rank that holds no batch of a domain adds zeros."""
    z = lambda n: torch.zeros(n, dtype=torch.float64, device=device)  # noqa: E731
    parts = []
    for ds in stats.domains.values():
        for m, n in ((ds.mlp, n_mlp), (ds.attn, n_attn)):
            parts += [z(n) if m.sum is None else m.sum, z(n) if m.sumsq is None else m.sumsq]
        parts.append(
            torch.tensor(
                [ds.mlp.n, ds.attn.n, ds.tokens, ds.resid_sq, ds.delta_sq, ds.one_minus_cos],
                dtype=torch.float64,
                device=device,
            )
        )
    flat = all_sum(torch.cat(parts))
    at = 0

    def take(n: int) -> torch.Tensor:
        nonlocal at
        at += n
        return flat[at - n : at]

    for ds in stats.domains.values():
        for m, n in ((ds.mlp, n_mlp), (ds.attn, n_attn)):
            m.sum, m.sumsq = take(n), take(n)
        t = take(6).tolist()
        ds.mlp.n, ds.attn.n, ds.tokens = int(t[0]), int(t[1]), int(t[2])
        ds.resid_sq, ds.delta_sq, ds.one_minus_cos = t[3], t[4], t[5]


GRAM_BLOCK = 512  # rows of a panel of Gram.add: small enough that skipping the lower triangle pays


class Sum:
    """A sum over batches of fp32 products, in fp64: the order of the batches (one process, or ranks that each
    hold a share) then changes nothing the refit's solve could amplify."""

    def __init__(self):
        self.total = None

    def add(self, t: torch.Tensor) -> Sum:
        self.total = t.to(torch.float64, copy=True) if self.total is None else self.total.add_(t)
        return self

    def result(self) -> torch.Tensor | None:
        return self.total


class Gram(Sum):
    """X^T X over batches of (tokens, n). A batch adds only the row panels on and above the diagonal,
    X[:, a:b]^T X[:, a:] (55% of the full product for a 4864-wide MLP input, in a few large products rather
    than many block products mirrored batch by batch); the lower triangle is mirrored once, at the end. The
    largest cost of a cut pass after the layer's forwards."""

    def add(self, x: torch.Tensor) -> Gram:
        n = x.shape[1]
        if self.total is None:
            self.total = torch.zeros(n, n, dtype=torch.float64, device=x.device)
        for a in range(0, n, GRAM_BLOCK):
            b = min(a + GRAM_BLOCK, n)
            self.total[a:b, a:].add_(x[:, a:b].T @ x[:, a:])
        return self

    def result(self) -> torch.Tensor | None:
        g = self.total
        if g is not None:  # the lower triangle from the upper, panel by panel (no n x n temporaries)
            for a in range(0, g.shape[0], GRAM_BLOCK):
                b = min(a + GRAM_BLOCK, g.shape[0])
                g[b:, a:b] = g[a:b, b:].T
                d = g[a:b, a:b]
                d.copy_(d.triu() + d.triu(1).T)
        return g


@contextmanager
def bf16_products(on: bool = True):
    """fp32 matmuls computed by oneDNN's bf16 kernels with fp32 accumulation and fp32 results. Exact where both
    inputs hold bf16 values (activations and weights of a model that computes in bf16 do): then the same
    products as fp32, faster on AMX. Callers turn it on only for such inputs and CPUs with native bf16;
    with `on` false nothing changes. On an AVX512-BF16 CPU without AMX (a Zen 5 EPYC) oneDNN computed these
    products in fp32 all the same (tests/test_scale.py): right, at fp32's speed."""
    mm = getattr(torch.backends.mkldnn, "matmul", None)
    if not on or mm is None or not hasattr(mm, "fp32_precision"):
        yield
        return
    old = mm.fp32_precision
    mm.fp32_precision = "bf16"
    try:
        yield
    finally:
        mm.fp32_precision = old


def run_hooked(runner: LayerRunner, i: int, hook) -> None:
    """Run layer i on every batch without advancing the stream, with a registered hook, removed after."""
    try:
        runner.forward(i, advance=False)
    finally:
        hook.remove()


def consumer_grams(runner: LayerRunner, i: int, consumer) -> torch.Tensor:
    """G = X^T X of `consumer`'s input over all batches, fp64 accumulators."""
    g_sum = Gram()

    def fn(_m, args):
        g_sum.add(args[0].reshape(-1, args[0].shape[-1]).float())

    run_hooked(runner, i, consumer.register_forward_pre_hook(fn))
    g = g_sum.result()
    if world()[1] > 1:  # summed over ranks (a rank without batches adds zeros)
        n = consumer.weight.shape[1]
        g = all_sum(g if g is not None else torch.zeros(n, n, dtype=torch.float64, device=consumer.weight.device))
    return g


def _fast_products(runner: LayerRunner) -> bool:
    """bf16 activations on a CPU with native bf16: products of bf16-exact inputs run on oneDNN's bf16 kernels
    with fp32's results, faster."""
    return runner.place.dtype == torch.bfloat16 and runner.place.device.type == "cpu" and cpu_has_fast_bf16()


def consumer_normal(
    runner: LayerRunner,
    i: int,
    consumer,
    keep: torch.Tensor,
    on_kept=None,
    gram: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The refit's normal equations on the kept inputs K of `consumer` only: G_KK = X_K^T X_K and
    R = X_K^T Y, Y the output to preserve (the consumer's own output X W^T as the model computed it), fp64
    accumulators. The same system refit() builds from the
    full gram (R = G[K, :] W^T), at (K/n)^2 of the gram's cost and memory: when the kept inputs are known
    before the pass (selection by score). `on_kept(xk)`, when given, sees each batch's kept inputs
    (tokens, K) in the compute dtype. Without `gram`, G_KK is left out (None): a caller that
    chooses K after the pass builds it from the inputs it cached (cached_gram)."""
    g_sum, r_sum = Gram(), Sum()
    keep = keep.to(consumer.weight.device)
    k = keep.numel()
    # Kept inputs that are the first K (iterate permutes a layer's channels so): a slice, not a gather.
    prefix = bool(k) and torch.equal(keep.cpu(), torch.arange(k))
    bias = None if consumer.bias is None else consumer.bias.float()
    fast = _fast_products(runner)  # a bias makes X^T Y inexact in bf16 (below)

    def fn(_m, args, out):
        x = args[0].reshape(-1, args[0].shape[-1])
        xk = x[:, :k].contiguous() if prefix else x.index_select(1, keep)
        if on_kept is not None:
            on_kept(xk)
        xk = xk.float()
        # The consumer's own output, less its bias. A bf16 model's output is rounded to bf16: a target off by
        # at most 2^-9 of each value, far inside the cut's error, with no second product per batch. Both
        # that and its fp32 X_K^T Y (14% of a 0.5B compress together) are gone; what it costs is that the
        # rounding follows the thread count's summation order, so plans may differ in a few near-tied
        # channels between thread counts (measured: held-out perplexity equal to 0.05%).
        y = out.reshape(-1, out.shape[-1]).float()
        if bias is not None:
            y = y - bias
        if gram:
            with bf16_products(fast):
                g_sum.add(xk)
        with bf16_products(fast and bias is None and out.dtype == torch.bfloat16):
            r_sum.add(xk.T @ y)

    run_hooked(runner, i, consumer.register_forward_hook(fn))
    acc = {"g": g_sum.result(), "r": r_sum.result()}
    if world()[1] > 1:  # summed over ranks (a rank without batches adds zeros)
        z = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=consumer.weight.device)  # noqa: E731
        if gram:
            acc["g"] = all_sum(acc["g"] if acc["g"] is not None else z(k, k))
        acc["r"] = all_sum(acc["r"] if acc["r"] is not None else z(k, consumer.weight.shape[0]))
    return acc["g"], acc["r"]


@dataclass
class CutCache:
    """What a cut layer's output needs, from the forward before the cut (mlp_normal_cached): per batch the
    kept down_proj inputs X_K and the residual the MLP adds to. Only the MLP is cut, so both are what the
    cut layer itself computes: its output is residual + down(X_K), with no second forward."""

    xk: list[torch.Tensor] | Spill  # a Spill (on disk) when offloading
    resid: list[torch.Tensor] | Spill
    stats: LayerStats | None  # the cut layer's statistics (the next round's), all but its output terms
    cols: torch.Tensor | None = None  # the columns of xk the cut layer keeps, where xk holds all of them

    def close(self) -> None:
        """Release the cached tensors. Spills belong to the runner, which reuses them for the next layer."""
        for part in (self.xk, self.resid):
            if isinstance(part, Spill):
                part.clear()
        self.xk, self.resid = [], []

    def keep_columns(self, cols: torch.Tensor) -> None:
        """The layer was scored and cut after its forward cached all of its MLP inputs: the advance reads the
        kept columns `cols` (in the cut layer's channel order) of each batch, and the statistics are the kept
        channels' moments (the same as X_K's: a channel's moments do not depend on the others)."""
        self.cols = cols
        for ds in self.stats.domains.values() if self.stats is not None else ():
            m = ds.mlp
            if m.n:
                ds.mlp = Moments(
                    m.n, m.sum.index_select(0, cols.to(m.sum.device)), m.sumsq.index_select(0, cols.to(m.sum.device))
                )


def summed(stats: LayerStats, layer, fam: Family, device) -> LayerStats:
    """`stats` summed over the ranks, what every rank scores: a copy where there are several ranks (the rank's
    own sums stay as they are, to be summed again later), `stats` itself in one process."""
    if world()[1] == 1:
        return stats
    import copy

    out = copy.deepcopy(stats)
    _sum_over_ranks(
        out,
        getattr(getattr(layer, fam.mlp), fam.down).in_features,
        getattr(getattr(layer, fam.attn), fam.o).in_features,
        device,
    )
    return out


def mlp_normal_cached(
    runner: LayerRunner,
    i: int,
    keep: torch.Tensor,
    with_stats: bool = False,
    gram: bool = True,
) -> tuple[tuple[torch.Tensor | None, torch.Tensor], CutCache]:
    """consumer_normal for layer i's down_proj, plus a CutCache from the same forward. With `with_stats`, the
    cut layer's statistics too: its kept channels' moments are X_K's, its attention's are this forward's (the
    heads are not cut). Costs X_K's memory (tokens x kept channels in the compute dtype; on disk when
    offloading) for one forward fewer per cut layer, the largest cost of a cut pass after the gram. With
    every channel kept (iterate._cut_layer_cached given a width: it scores the layer before choosing) that is
    all of X, n/K times the memory, and X^T Y for every channel; there, without `gram`, no gram is built in
    the pass: cached_gram builds G_KK from the cache once K is chosen, (K/n)^2 of the full gram's products."""
    fam = runner.fam
    layer = runner.layers[i]
    attn, mlp = getattr(layer, fam.attn), getattr(layer, fam.mlp)
    down = getattr(mlp, fam.down)
    stats = LayerStats({d: DomainStats() for d in runner.all_domains}) if with_stats else None
    # Offloading (the model does not fit at the compute place): X_K and the residuals wait on disk.
    off = runner.place.offload
    cache = CutCache(*(runner.spills() if off else ([], [])), stats)
    # A batch's forward runs o_proj, then the post-attention norm, then down_proj: the count of residuals
    # cached so far says which batch (so which domain) is running.
    n_resid = [0]

    def on_resid(_m, args):  # the post-attention norm's input: the residual the MLP output is added to
        cache.resid.append(args[0])
        n_resid[0] += 1

    def on_kept(xk):
        cache.xk.append(xk)
        if stats is not None:
            stats.domains[runner.domains[n_resid[0] - 1]].mlp.add(xk)

    def on_attn(_m, args):
        stats.domains[runner.domains[n_resid[0]]].attn.add(args[0])  # before this batch's residual

    hooks = [getattr(layer, fam.post_attn_norm).register_forward_pre_hook(on_resid)]
    if stats is not None:
        hooks.append(getattr(attn, fam.o).register_forward_pre_hook(on_attn))
        for d, h in zip(runner.domains, runner.hidden):
            add_input_terms(stats.domains[d], h)
    try:
        normal = consumer_normal(runner, i, down, keep, on_kept=on_kept, gram=gram)
    finally:
        for h in hooks:
            h.remove()
    return normal, cache


def cached_gram(runner: LayerRunner, i: int, cache: CutCache, cols: torch.Tensor) -> torch.Tensor:
    """G_KK = X_K^T X_K of layer i's down_proj from the inputs a gram-less mlp_normal_cached cached (all
    channels), K = `cols`: what consumer_normal would have summed in the pass, built once the layer's scores
    chose K."""
    g_sum = Gram()
    fast = _fast_products(runner)
    for b in range(len(cache.xk)):
        x = cache.xk[b]
        xk = x.index_select(1, cols.to(x.device)).float()
        with bf16_products(fast):
            g_sum.add(xk)
    g = g_sum.result()
    if world()[1] > 1:  # summed over ranks (a rank without batches adds zeros)
        k = cols.numel()
        g = all_sum(g if g is not None else torch.zeros(k, k, dtype=torch.float64, device=runner.place.device))
    return g


def advance_cut(runner: LayerRunner, i: int, cache: CutCache) -> LayerStats | None:
    """Advance the stream past cut layer i from its cache (residual + down(X_K), as the layer computes it),
    freeing the cache batch by batch; with the cache's statistics, their output terms are added and they
    are summed over ranks. Returns them."""
    fam = runner.fam
    layer = runner.layers[i]
    stats = cache.stats
    outs = []
    with torch.no_grad(), runner.place.layer(layer):
        down = getattr(getattr(layer, fam.mlp), fam.down)
        for b, (dom, h) in enumerate(zip(runner.domains, runner.hidden)):
            resid, xk = cache.resid[b], cache.xk[b]
            if cache.cols is not None:
                xk = xk.index_select(-1, cache.cols.to(xk.device))
            o = resid + down(xk).view_as(resid)
            cache.resid[b] = cache.xk[b] = None
            if stats is not None:
                add_output_terms(stats.domains[dom], h, o)
            outs.append(o)
        if stats is not None and world()[1] > 1:
            _sum_over_ranks(
                stats,
                down.in_features,
                getattr(getattr(layer, fam.attn), fam.o).in_features,
                runner.place.device,
            )
    cache.close()
    runner.hidden = outs
    return stats


def make_batches(calib: dict[str, torch.Tensor], batch_size: int) -> list[tuple[str, torch.Tensor]]:
    """Split each domain's sequences into batches; a batch never mixes domains (stats are per domain)."""
    out = []
    for dom, seqs in calib.items():
        for s in range(0, len(seqs), batch_size):
            out.append((dom, seqs[s : s + batch_size]))
    return out
