"""The calibration mix: domains, templates, sampling, packing, disjoint calibration/evaluation text.

A mix is a YAML file (see prunekit/data/default_mix.yaml). Each domain is one source plus a pure
`template(record) -> text`; records are split into a calibration pool and a held-out pool by a hash of
their text (or taken from a separate eval_source), and packed into fixed-length token sequences.
Everything is deterministic for a seed; the held-out split does not depend on the seed, so every run
evaluates on the same text.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import string
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import yaml

from prunekit import env
from prunekit.artifact import sha256_file
from prunekit.errors import PrunekitError

# Package data of the core (prunekit/data/), found beside env.py in a checkout and in an installed wheel.
DEFAULT_MIX = Path(env.__file__).resolve().parent / "data" / "default_mix.yaml"
LOCAL_KINDS = {".jsonl": "json", ".json": "json", ".txt": "text", ".csv": "csv", ".parquet": "parquet"}
SOURCE_KEYS = {"path", "hub", "config", "split", "max_records", "skip", "hub_template"}
DOMAIN_KEYS = {"source", "eval_source", "template", "weight", "samples", "eval_samples", "eval_fraction", "joiner"}
MIX_KEYS = {"name", "seq_len", "seed", "total_samples", "eval_samples", "domains"}


@dataclass(frozen=True)
class Source:
    path: str | None = None
    hub: str | None = None
    config: str | None = None
    split: str = "train"
    max_records: int | None = None
    skip: int = 0
    hub_template: str | None = None


@dataclass(frozen=True)
class Domain:
    name: str
    source: Source
    template: str
    samples: int  # calibration sequences (0: an evaluation-only domain)
    eval_samples: int
    eval_source: Source | None = None
    eval_fraction: float = 0.2
    joiner: str = "\n\n"


@dataclass(frozen=True)
class Mix:
    name: str
    seq_len: int
    seed: int
    domains: tuple[Domain, ...]
    base_dir: str = field(default="", compare=False)

    def spec(self) -> dict:
        d = asdict(self)
        d.pop("base_dir")
        return d


# ---------------------------------------------------------------- spec


def _bad(where: str, msg: str) -> PrunekitError:
    return PrunekitError(f"calibration mix: {where}: {msg}")


def _number(where: str, key: str, value, lo: float, kind=int):
    """A mix field as an int (or float) >= lo, or a message naming the field and what it takes; YAML's
    `true` is not a number here, and neither is 2.5 where a count is asked for."""
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (kind is float or value == int(value))
    )
    if not ok or value < lo:
        what = "an integer" if kind is int else "a number"
        raise _bad(where, f"`{key}` must be {what} >= {lo:g}, got {value!r}.")
    return kind(value)


def _source(name: str, raw, what: str) -> Source:
    if isinstance(raw, str):
        raw = {"path": raw}
    if not isinstance(raw, dict):
        raise _bad(f"domain {name!r}", f"{what} must be a path or a mapping with path/hub keys.")
    unknown = set(raw) - SOURCE_KEYS
    if unknown:
        raise _bad(f"domain {name!r}", f"unknown key(s) {sorted(unknown)} in {what}; allowed: {sorted(SOURCE_KEYS)}.")
    if not raw.get("path") and not raw.get("hub"):
        raise _bad(f"domain {name!r}", f"{what} needs a local `path` or a `hub` data set id.")
    return Source(**raw)


def parse_mix(
    raw: dict,
    base_dir: str | Path = "",
    seq_len: int | None = None,
    seed: int | None = None,
    total_samples: int | None = None,
) -> Mix:
    """Validate a mix spec (a dict as read from YAML); keyword overrides win over the file."""
    if not isinstance(raw, dict) or not isinstance(raw.get("domains"), dict) or not raw["domains"]:
        raise _bad("spec", "needs a `domains:` mapping with at least one domain.")
    unknown = set(raw) - MIX_KEYS
    if unknown:
        raise _bad("spec", f"unknown top-level key(s) {sorted(unknown)}; allowed: {sorted(MIX_KEYS)}.")
    seq_len = _number("spec", "seq_len", seq_len or raw.get("seq_len", 512), 2)
    total = total_samples if total_samples is not None else raw.get("total_samples")
    if total is not None:
        total = _number("spec", "total_samples", total, 1)
    default_eval = _number("spec", "eval_samples", raw.get("eval_samples", 8), 0)
    seed = _number("spec", "seed", seed if seed is not None else raw.get("seed", 0), 0)
    entries = raw["domains"]
    weights = {}
    for name, d in entries.items():
        if not isinstance(d, dict):
            raise _bad(f"domain {name!r}", "must be a mapping with source and template.")
        unknown = set(d) - DOMAIN_KEYS
        if unknown:
            raise _bad(f"domain {name!r}", f"unknown key(s) {sorted(unknown)}; allowed: {sorted(DOMAIN_KEYS)}.")
        for key in ("source", "template"):
            if key not in d:
                raise _bad(f"domain {name!r}", f"missing `{key}`.")
        if "samples" not in d:
            if total is None:
                raise _bad(f"domain {name!r}", "give `samples`, or `weight` with a top-level `total_samples`.")
            weights[name] = _number(f"domain {name!r}", "weight", d.get("weight", 1.0), 0, float)
    wsum = sum(weights.values())
    domains = []
    for name, d in entries.items():
        where = f"domain {name!r}"
        n = (
            _number(where, "samples", d["samples"], 0)
            if "samples" in d
            else (round(total * weights[name] / wsum) if wsum else 0)
        )
        frac = _number(where, "eval_fraction", d.get("eval_fraction", 0.2), 0, float)
        if not 0.0 < frac < 1.0 and "eval_source" not in d:
            raise _bad(where, f"eval_fraction must be in (0, 1), got {frac}.")
        domains.append(
            Domain(
                name=name,
                source=_source(name, d["source"], "source"),
                template=str(d["template"]),
                samples=n,
                eval_samples=_number(where, "eval_samples", d.get("eval_samples", default_eval), 0),
                eval_source=_source(name, d["eval_source"], "eval_source") if "eval_source" in d else None,
                eval_fraction=frac,
                joiner=str(d.get("joiner", "\n\n")),
            )
        )
    if not any(dom.samples for dom in domains):
        raise _bad(
            "spec",
            "no domain has calibration samples (every `samples` and `weight` is 0, or the weights "
            "round to 0); give a domain a positive weight or `samples`, or raise `total_samples`.",
        )
    return Mix(
        name=str(raw.get("name", "mix")), seq_len=seq_len, seed=seed, domains=tuple(domains), base_dir=str(base_dir)
    )


def load_mix(path: str | Path | None = None, **overrides) -> Mix:
    """Read a mix YAML ('default' or None: the packaged default mix)."""
    p = DEFAULT_MIX if path in (None, "", "default") else Path(path).expanduser()
    if not p.is_file():
        raise PrunekitError(f"calibration mix {p} does not exist; pass a YAML file or 'default'.")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise PrunekitError(f"calibration mix {p} is not valid YAML{where}: {what}; fix the file.") from e
    return parse_mix(raw, base_dir=p.parent, **overrides)


# ---------------------------------------------------------------- records


def _local_path(mix: Mix, src: Source) -> Path | None:
    p = Path(src.path).expanduser()
    if p.is_absolute():
        return p if p.exists() else None
    roots = [Path(mix.base_dir)] if mix.base_dir else []
    if (root := env.data_root()) is not None:
        roots.append(root)
    return next((r / p for r in roots if (r / p).exists()), None)


def _open(mix: Mix, dom: Domain, src: Source) -> tuple[Iterable[dict], str, str]:
    """Records of a source, the template that fits them, and a fingerprint of where they came from."""
    if src.path:
        path = _local_path(mix, src)
        if path is not None:
            kind = LOCAL_KINDS.get(path.suffix.lower())
            if kind is None:
                raise _bad(
                    f"domain {dom.name!r}",
                    f"{path} has an unsupported type; use one of {', '.join(sorted(LOCAL_KINDS))}.",
                )
            if path.stat().st_size == 0:
                raise _bad(f"domain {dom.name!r}", f"the source {path} has no records (empty file).")
            if path.suffix.lower() == ".jsonl":  # the common case needs no pyarrow (nor `datasets` installed)
                return _jsonl(path, dom), dom.template, f"{path.name}:{sha256_file(path)}"
            import datasets

            datasets.disable_progress_bars()
            try:
                ds = datasets.load_dataset(kind, data_files=str(path), split="train")
            except Exception as e:  # pyarrow and datasets raise many types for malformed files
                raise _bad(
                    f"domain {dom.name!r}", f"could not read {path} as {kind} ({type(e).__name__}: {e}); fix the file."
                ) from e
            return ds, dom.template, f"{path.name}:{sha256_file(path)}"
        if not src.hub:
            where = [mix.base_dir or "."] + ([str(env.data_root())] if env.data_root() else [])
            raise _bad(
                f"domain {dom.name!r}",
                f"file {src.path} not found (looked in {', '.join(where)}); "
                "fix the path, set PRUNEKIT_DATA, or add a `hub:` fallback.",
            )
    import datasets

    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(src.hub, src.config, split=src.split, streaming=True)
    except Exception as e:  # datasets raises many types for a missing hub id or no network
        raise _bad(
            f"domain {dom.name!r}",
            f"could not open hub data set {src.hub!r} ({type(e).__name__}: {e}); use a local file instead.",
        ) from e
    template = src.hub_template or dom.template
    return _window(ds, src), template, f"hub:{src.hub}:{src.config}:{src.split}:{src.skip}:{src.max_records}"


def _jsonl(path: Path, dom: Domain) -> list[dict]:
    """A JSON-lines file's records, one object per line (blank lines skipped). The text fields come out as
    datasets' json loader gives them; a record missing a template's field is an error here, not "None"."""
    where = f"domain {dom.name!r}"
    out = []
    try:
        with open(path, encoding="utf-8-sig") as f:  # -sig: a byte-order mark is not part of the first record
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    hint = (
                        " It looks like one JSON array: name the file .json, or write one object per line."
                        if n == 1 and line.lstrip().startswith("[")
                        else ""
                    )
                    raise _bad(where, f"{path} line {n} is not JSON ({e}); fix the file.{hint}") from e
                if not isinstance(rec, dict):
                    raise _bad(
                        where,
                        f"{path} line {n} is a JSON {type(rec).__name__}, not an object with the "
                        "template's fields; write one object per line.",
                    )
                out.append(rec)
    except UnicodeDecodeError as e:
        raise _bad(where, f"{path} is not UTF-8 text ({e}); convert it to UTF-8.") from e
    return out


def _window(ds, src: Source) -> Iterator[dict]:
    """skip/max_records bound a streamed hub data set (a local file is read whole)."""
    for i, rec in enumerate(ds):
        if i < src.skip:
            continue
        if src.max_records is not None and i >= src.skip + src.max_records:
            return
        yield rec


def render(template: str, record: dict, domain: str) -> str:
    """Apply a domain's template to one record, naming the missing field if there is one."""
    try:
        return template.format_map(record)
    except (KeyError, IndexError, TypeError) as e:
        fields = sorted(k for _, k, _, _ in string.Formatter().parse(template) if k)
        raise _bad(
            f"domain {domain!r}",
            f"template field {e} is not in the record (template uses "
            f"{fields}; the record has {sorted(record)}). Fix the template.",
        ) from e


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def is_heldout(text: str, fraction: float) -> bool:
    """Seed-independent split by text hash, so that equal texts always fall on the same side."""
    return int(text_key(text)[:8], 16) / 0xFFFFFFFF < fraction


@dataclass
class DomainText:
    calib: list[str]
    heldout: list[str]
    fingerprint: str


def domain_texts(mix: Mix, dom: Domain) -> DomainText:
    """The calibration and held-out texts of one domain, disjoint by construction and by check."""
    records, template, fp = _open(mix, dom, dom.source)
    texts = [t for t in (render(template, r, dom.name) for r in records) if t.strip()]
    if not texts:
        raise _bad(f"domain {dom.name!r}", "the source has no records (or only empty texts).")
    if dom.eval_source is None:
        calib = [t for t in texts if not is_heldout(t, dom.eval_fraction)]
        heldout = [t for t in texts if is_heldout(t, dom.eval_fraction)]
    else:
        calib = texts
        erecs, etemplate, efp = _open(mix, dom, dom.eval_source)
        seen = {text_key(t) for t in calib}
        # A record that also occurs in the calibration source is dropped from evaluation.
        heldout = [t for t in (render(etemplate, r, dom.name) for r in erecs) if t.strip() and text_key(t) not in seen]
        fp += "|" + efp
    check_disjoint(calib, heldout, dom.name)
    return DomainText(calib, heldout, fp)


def check_disjoint(calib: list[str], heldout: list[str], domain: str) -> None:
    overlap = {text_key(t) for t in calib} & {text_key(t) for t in heldout}
    if overlap:
        raise PrunekitError(
            f"calibration mix: domain {domain!r}: {len(overlap)} texts are in both the "
            "calibration and the held-out pool; this is a bug, please report it."
        )


# ---------------------------------------------------------------- packing


def pack(
    texts: list[str],
    tokenizer,
    seq_len: int,
    n: int,
    joiner: str,
    domain: str,
    what: str,
    seed: int | None = None,
    cycle: bool = False,
):
    """n sequences of seq_len tokens from texts (shuffled by seed when given), joined by `joiner`;
    with `cycle`, a pool shorter than asked for is read again (training reads text more than once)."""
    import torch

    if n == 0:
        return torch.empty(0, seq_len, dtype=torch.long)
    order = list(range(len(texts)))
    if seed is not None:
        random.Random(seed).shuffle(order)
    need, buf = n * seq_len, []
    while len(buf) < need:
        for i in order:
            buf.extend(tokenizer(texts[i] + joiner, add_special_tokens=False)["input_ids"])
            if len(buf) >= need:
                break
        if not cycle or not buf:
            break
    if len(buf) < need:
        raise _bad(
            f"domain {domain!r}",
            f"{what} text has {len(buf)} tokens but {n} x {seq_len} = {need} "
            "are asked for; lower samples/eval_samples or seq_len, or add text.",
        )
    return torch.tensor(buf[:need], dtype=torch.long).view(n, seq_len)


@dataclass
class MixData:
    calib: dict  # domain -> LongTensor (samples, seq_len)
    heldout: dict  # domain -> LongTensor (eval_samples, seq_len)
    fingerprint: str


def build(mix: Mix, tokenizer, with_calib: bool = True, with_heldout: bool = True) -> MixData:
    """Tokenised calibration and held-out sequences for every domain of the mix."""
    calib, heldout, fps = {}, {}, []
    for k, dom in enumerate(mix.domains):
        t = domain_texts(mix, dom)
        fps.append(f"{dom.name}={t.fingerprint}")
        if with_calib and dom.samples:
            calib[dom.name] = pack(
                t.calib,
                tokenizer,
                mix.seq_len,
                dom.samples,
                dom.joiner,
                dom.name,
                "calibration",
                seed=mix.seed * 1000 + k,
            )
        if with_heldout and dom.eval_samples:
            heldout[dom.name] = pack(
                t.heldout, tokenizer, mix.seq_len, dom.eval_samples, dom.joiner, dom.name, "held-out"
            )
    return MixData(calib, heldout, fingerprint(mix, fps))


def only_domains(mix: Mix, calib: dict, domains: tuple[str, ...], tokenizer) -> dict:
    """Calibration data from some domains only, with the same total budget as the whole mix
    (for single-domain ablations such as C4-only calibration)."""
    unknown = set(domains) - {d.name for d in mix.domains}
    if unknown:
        raise PrunekitError(
            f"domains {sorted(unknown)} are not in the mix; it has {', '.join(d.name for d in mix.domains)}."
        )
    total = sum(len(v) for v in calib.values())
    sub = replace(
        mix, domains=tuple(replace(d, samples=total // len(domains) if d.name in domains else 0) for d in mix.domains)
    )
    return build(sub, tokenizer, with_heldout=False).calib


def recovery_set(mix: Mix, tokenizer, sequences: int, domains: tuple[str, ...] = ()):
    """`sequences` of the mix's length for recovery training: drawn from the calibration pools only
    (never held-out text), split across the calibrating domains as the mix splits its calibration,
    in another order than calibration (seed + 1), the domains interleaved. Returns the sequences and
    how many came from each domain."""
    import torch

    doms = [d for d in mix.domains if d.samples and (not domains or d.name in domains)]
    if not doms:
        raise PrunekitError("recovery needs a domain with calibration samples in the mix.")
    total = sum(d.samples for d in doms)
    share = [sequences * d.samples / total for d in doms]
    counts = [math.floor(x) for x in share]
    for k in sorted(range(len(doms)), key=lambda k: counts[k] - share[k])[: sequences - sum(counts)]:
        counts[k] += 1  # largest remainders get the sequences that rounding down left over
    parts = []
    for k, (dom, n) in enumerate(zip(doms, counts)):
        t = domain_texts(mix, dom)
        parts.append(
            pack(
                t.calib,
                tokenizer,
                mix.seq_len,
                n,
                dom.joiner,
                dom.name,
                "recovery",
                seed=(mix.seed + 1) * 1000 + k,
                cycle=True,
            )
        )
    seqs = torch.cat(parts)
    order = torch.randperm(len(seqs), generator=torch.Generator().manual_seed(mix.seed + 1))
    return seqs[order], {d.name: n for d, n in zip(doms, counts) if n}


def fingerprint(mix: Mix, sources: list[str]) -> str:
    blob = json.dumps({"spec": mix.spec(), "sources": sources}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def quantize_calibration(calib: str, tokenizer, n: int) -> dict:
    """n calibration sequences of the mix at `calib` for GPTQ (export --quantize int4), its domains in the mix's
    proportions (at least one each), the first of each domain's calibration set: the text compress calibrates
    on, never held-out text."""
    data = build(load_mix(calib), tokenizer, with_heldout=False).calib
    total = sum(len(v) for v in data.values())
    return {d: v[: max(1, round(n * len(v) / total))] for d, v in data.items()}
