"""The model card (README.md) of a pruned output, rendered from a Jinja2 template with every user string escaped.

User strings (model names, paths, data specs, command lines) never reach the Markdown or the YAML front matter
raw: Markdown text is escaped (``md``), code spans use a backtick delimiter longer than any backtick run they
hold (``code``), a command line sits in a fence longer than any backtick run it contains (``fence``), link targets
are percent-encoded (``url``) and front-matter values are JSON-quoted, which YAML reads as the same string
(``yaml``). The report (``depthprune.reporting.report``) renders through the same environment; its HTML
templates (``*.html.j2``) are autoescaped.
"""

from __future__ import annotations

import json
import re
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from depthprune.reporting.records import PruneReport
from depthprune.reporting.tables import quality_table, speed_table

# ASCII punctuation that can start or end Markdown syntax inside a line; CommonMark lets any ASCII punctuation be
# backslash-escaped, and the backslash is dropped when rendered
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~])")
# characters YAML 1.1 readers reject in a stream or read as line breaks, but json.dumps leaves as they are
_YAML_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff\ud800-\udfff]")
# a Hugging Face Hub repo id (what the Hub accepts as base_model): [namespace/]name
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def _one_line(value) -> str:
    return " ".join(str(value).split())


def md(value) -> str:
    """Markdown text that renders as exactly ``value`` on one line: syntax characters backslash-escaped, ``&<>`` as
    entities (no HTML tag or entity can form), newlines and runs of whitespace folded to one space."""
    text = _one_line(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", text)


def code(value) -> str:
    """A Markdown code span showing ``value`` (folded to one line), delimiters included: the delimiter is one
    backtick longer than the longest backtick run inside, so the value cannot close it."""
    text = _one_line(value)
    ticks = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    if text.startswith("`") or text.endswith("`"):
        text = f" {text} "  # CommonMark strips one space on each side
    return f"{ticks}{text}{ticks}"


def fence_for(text) -> str:
    """A backtick fence longer than any backtick run in ``text``: no line of ``text`` can close it."""
    runs = [len(m) for m in re.findall(r"`+", str(text or ""))]
    return "`" * max(3, max(runs, default=0) + 1)


def url(value) -> str:
    """A link target path: everything but unreserved characters and ``/`` percent-encoded (no ``)``, space,
    ``<`` or newline can end the link)."""
    return quote(str(value), safe="/")


def yaml_value(value) -> str:
    """A YAML scalar that is exactly ``value``, on one line: a JSON string (JSON strings are YAML flow scalars),
    with the characters YAML readers treat as breaks or reject written as escapes too."""
    text = json.dumps(str(value), ensure_ascii=False)
    return _YAML_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


ENV = Environment(loader=PackageLoader("depthprune.reporting", "templates"),
                  autoescape=select_autoescape(enabled_extensions=("html.j2",), default_for_string=False,
                                               default=False),
                  undefined=StrictUndefined, keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
ENV.filters.update(md=md, code=code, fence=fence_for, url=url, yaml=yaml_value)


def base_model_id(record: dict) -> str | None:
    """The Hub id for ``base_model``: only when the source was loaded from the Hub and the id is one the Hub accepts
    (never made up for local or GGUF sources; a demo alias's upstream is only what its file name says)."""
    source = record.get("source") or {}
    hub_id = source.get("hub_id")
    if source.get("kind") != "hub" or not isinstance(hub_id, str):
        return None
    return hub_id if len(hub_id) <= 96 and _HUB_ID.fullmatch(hub_id) and "--" not in hub_id \
        and ".." not in hub_id else None


def _readback(record: dict) -> str | None:
    rb = record.get("readback") or {}
    if not rb:
        return None
    if "blocks" in rb:
        return f"the GGUF header, its {rb['blocks']} blocks and every per-layer array agree"
    parts = ["every saved tensor is built by the saved config with its shape"]
    if "logits_max_abs_diff" in rb:
        parts.append(f"logits equal the pruned model's with the saved weights (max difference "
                     f"{rb['logits_max_abs_diff']:.1e} on {rb['probe_tokens']} tokens)")
    return "; ".join(parts)


def model_card(record: dict | PruneReport, *, evals: dict | None = None, bench: dict | None = None,
               gguf: dict | None = None) -> str:
    """README.md of a pruned output.

    ``record`` is its depthprune.json (or the :class:`PruneReport`); ``evals`` ``{"dense": {task: metrics},
    "pruned": ..., "meta": ...}`` (see :func:`depthprune.reporting.report.read_evals`); ``bench`` a bench comparison
    as JSON; ``gguf`` what a GGUF output holds (``blocks_before``/``blocks_after``/``bytes_before``/``bytes_after``
    of a cut file; defaults to the record's own ``"gguf"`` section), which makes it the card of a GGUF file.
    """
    if isinstance(record, PruneReport):
        record = record.to_json()
    if gguf is None:
        gguf = record.get("gguf") or None
    source = record.get("source") or {}
    speed = speed_table(bench)
    before, after = record["num_layers_before"], record["num_layers_after"]
    return ENV.get_template("model_card.md.j2").render(
        library="gguf" if gguf else "transformers",
        tags=["depthprune", "layer-pruning", "shortgpt", f"metric-{record.get('metric')}"],
        base_model=base_model_id(record),
        model=record.get("model"), metric=record.get("metric"), strategy=record.get("strategy"),
        n_removed=before - after, num_layers_before=before, num_layers_after=after,
        version=(record.get("versions") or {}).get("depthprune", ""),
        source_kind=source.get("kind"), source_dtype=source.get("source_dtype"),
        upstream=source.get("upstream"), description=source.get("description", "GGUF"),
        quality=quality_table(record, evals).to_markdown(),
        speed=speed.to_markdown() if speed is not None else None,
        removed=", ".join(str(i) for i in record.get("removed_layers") or []),
        calibration=record.get("calibration") or {}, has_scores=bool(record.get("scores")),
        readback=_readback(record), gguf=gguf, command=record.get("command") or "")


__all__ = ["ENV", "base_model_id", "code", "fence_for", "md", "model_card", "url", "yaml_value"]
