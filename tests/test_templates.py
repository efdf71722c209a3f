"""The report (report.md, report.html) and the model card (README.md) render user strings (model names, paths, data
specs, command lines, versions) escaped: no HTML or Markdown injection, tables keep their columns, the command fence
cannot be closed from inside, the YAML front matter cannot gain keys. A normal record renders the same sections and
key lines as the string-built renderers did. Records are built by hand: no model, no network."""

from __future__ import annotations

import copy
import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from depthprune.reporting.card import code, md, model_card, yaml_value
from depthprune.reporting.report import ReportInputs, render_html, render_markdown
from depthprune.reporting.tables import Table

markdown_it = pytest.importorskip("markdown_it")

NORMAL = {
    "model": "HuggingFaceTB/SmolLM2-135M", "model_type": "llama", "metric": "bi", "strategy": "one-shot",
    "removed_layers": [3, 5], "kept_layers": [0, 1, 2, 4], "num_layers_before": 6, "num_layers_after": 4,
    "params_before": 134_515_008, "params_after": 106_200_000, "scores": [0.31, 0.22, 0.18, 0.05, 0.2, 0.07],
    "calibration": {"source": "builtin:wikitext", "samples": 8, "seq_len": 64, "tokens": 512, "seed": 0},
    "protect_first": 1, "protect_last": 0,
    "perplexity": {"dense": {"ppl": 12.5, "settings": {"source": "builtin:heldout"}},
                   "pruned": {"ppl": 15.25, "settings": {"source": "builtin:heldout"}}},
    "selection": {"order": [3, 5]}, "recipe": None, "repair": None,
    "command": "depthprune -q prune HuggingFaceTB/SmolLM2-135M --remove 2 --out out",
    "source": {"kind": "hub", "hub_id": "HuggingFaceTB/SmolLM2-135M", "source_dtype": "bfloat16"},
    "versions": {"depthprune": "0.1.0", "torch": "2.4.0", "transformers": "4.56.0"},
    "save_dtype": "bfloat16", "checkpoint_bytes": 212_000_000, "timings": {"scoring": 1.5},
    "indexing": "0-based, original numbering",
}
EVALS = {"dense": {"piqa": {"acc": 0.681, "acc_stderr": 0.011}},
         "pruned": {"piqa": {"acc": 0.633, "acc_stderr": 0.012}},
         "meta": {"lm_eval_version": "0.4.9", "num_fewshot": 0, "limit": 50}}
BENCH = {
    "labels": ["dense", "pruned"], "command": "depthprune bench out --compare dense",
    "baseline": {"peak_memory_bytes": 300 * 2**20, "settings": {"repeats": 5, "batch_size": 1},
                 "environment": {"cpu_count": 16, "torch_threads": 1}, "dtype": "float32", "device": "cpu",
                 "memory_method": "tracemalloc", "versions": {"torch": "2.4.0"}},
    "candidate": {"peak_memory_bytes": 240 * 2**20},
    "ratios": {"peak_memory_ratio": 0.8, "params_ratio": 0.79, "workloads": {
        "prefill-64": {"kind": "prefill", "seq_len": 64, "new_tokens": 0, "baseline_tokens_per_s": 1000.0,
                       "candidate_tokens_per_s": 1300.0, "time_ratio": 0.77, "ideal_flop_ratio": 0.7,
                       "speedup": 1.3, "ideal_speedup": 1.43, "noisy": False}}},
}

EVIL_MODEL = "evil</td><script>alert(1)</script>|x\n## injected"
EVIL_SOURCE = "data`with`ticks ```sh and a fence``` | pipe\n# heading <img src=x onerror=alert(2)>"
EVIL_COMMAND = "depthprune prune evil --data 'x' ```\nrm -rf /\n````\necho <script>alert(3)</script>"
EVIL_HUB = "a/b\nbase_model: evil"
HOSTILE_STRINGS = [EVIL_MODEL, EVIL_SOURCE, EVIL_COMMAND, EVIL_HUB, "a\\|b\\", "`lead", "trail`", "x: y\n- z",
                   "[link](javascript:alert(1))", "*em* _u_ ~~s~~ &amp; &#60;b>", "1. list", "> quote", "a\u2028b"]


def hostile(kind: str = "hub", model: str = EVIL_MODEL) -> dict:
    rec = copy.deepcopy(NORMAL)
    rec.update(model=model, metric="bi`|<b>", strategy="one-shot`\n## strat", command=EVIL_COMMAND)
    rec["calibration"]["source"] = EVIL_SOURCE
    rec["perplexity"]["dense"]["settings"]["source"] = EVIL_SOURCE
    rec["source"] = {"kind": kind, "hub_id": EVIL_HUB, "source_dtype": "bfloat16<script>x</script>",
                     "upstream": "up/stream)<script>", "description": "desc <script>x</script> | y"}
    rec["versions"] = {"depthprune": "0.1.0<script>", "evil|key\nx": "v|<script>\n", "back\\": "`tick"}
    return rec


def _inputs(record: dict, *, evals=EVALS, bench=BENCH) -> ReportInputs:
    return ReportInputs(Path("/tmp/some dir"), copy.deepcopy(record), evals,
                        {"dense`x`.json": "dense", "evil|<script>.json": "ignored: <b>no</b> role"},
                        ["lm_eval --model hf ```\n# x"], bench, [])


def _report_md(record: dict, **kw) -> str:
    return render_markdown(_inputs(record, **kw), {"scores": "layer_scores.png", "quality": "report_quality.png",
                                                   "speed": "report_speed.png"})


@pytest.fixture(scope="module")
def png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("png") / "plot.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    return path


def _report_html(record: dict, png: Path, **kw) -> str:
    return render_html(_inputs(record, **kw), {"scores": png, "quality": png, "speed": png})


def _cards() -> dict[str, str]:
    return {kind: model_card(hostile(kind), evals=EVALS, bench=BENCH) for kind in ("hub", "local", "gguf", "demo", None)}


def _markdowns() -> dict[str, str]:
    return {**{f"card {k}": v for k, v in _cards().items()}, "report.md": _report_md(hostile()),
            "report.md local": _report_md(hostile("local"))}


def _commonmark():
    # commonmark passes raw HTML through (html=True), as GitHub's and the Hub's renderers do before sanitizing;
    # plus GFM tables
    return markdown_it.MarkdownIt("commonmark").enable("table")


def _body(card: str) -> str:
    return card.split("\n---\n", 1)[1] if card.startswith("---\n") else card


class _Tags(HTMLParser):
    """Start tags, table rows (cell counts) and the text of every element."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.rows: list[int] = []
        self.tables: list[list[int]] = []
        self.text: dict[str, list[str]] = {}
        self._open: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self._open.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append(0)
        elif tag in ("td", "th"):
            self.tables[-1][-1] += 1

    def handle_endtag(self, tag):
        if tag in self._open:
            while self._open.pop() != tag:
                pass

    def handle_data(self, data):
        if self._open:
            self.text.setdefault(self._open[-1], []).append(data)


def _parse(page: str) -> _Tags:
    parser = _Tags()
    parser.feed(page)
    return parser


ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "span", "img", "table", "thead",
                "tbody", "tr", "th", "td", "pre", "code", "a", "em", "strong"}


# --- HTML ------------------------------------------------------------------------------------------------------

def test_html_report_has_no_markup_from_user_strings(png):
    page = _report_html(hostile(), png)
    assert "<script" not in page.lower() and "<b>" not in page and "<img src=x" not in page
    tags = _parse(page)
    assert set(tags.tags) <= ALLOWED_TAGS, set(tags.tags) - ALLOWED_TAGS
    assert tags.tags.count("img") == 3 and tags.tags.count("h1") == 1 and tags.tags.count("pre") == 4
    # every table keeps its header's column count
    for rows in tags.tables:
        assert rows and all(n == rows[0] for n in rows), rows
    title = f"{EVIL_MODEL}: 2 of 6 layers removed"
    assert tags.text["title"] == [title] and tags.text["h1"] == [title]  # shown as text, exactly
    assert EVIL_COMMAND in tags.text["pre"]
    assert any(EVIL_SOURCE in t for t in tags.text["p"])


def test_html_report_of_a_normal_record_has_the_same_sections(png):
    page = _report_html(NORMAL, png)
    tags = _parse(page)
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page and "'Segoe UI'" in page  # CSS not escaped
    assert tags.text["h1"] == ["HuggingFaceTB/SmolLM2-135M: 2 of 6 layers removed"]
    assert tags.text["h2"] == ["What was removed and why", "Quality", "Speed", "Reproduce"]
    assert "<p>Removed layers (0-based, original numbering): <span class='removed'>3, 5</span>.</p>" in page
    assert len(re.findall(r"src='data:image/png;base64,[A-Za-z0-9+/=]+'", page)) == 3
    assert "<td>piqa acc (%)</td><td>68.1 ± 1.1</td><td>63.3 ± 1.2</td><td>-4.8 pts</td>" in page
    assert f"<p>prune:</p><pre>{NORMAL['command']}</pre>" in page
    no_evals = render_html(_inputs(NORMAL, evals=None, bench=None), {})
    assert "No task accuracy yet" in no_evals and "No speed measurement yet" in no_evals and "<img" not in no_evals


# --- Markdown --------------------------------------------------------------------------------------------------

def _table_blocks(text: str) -> list[list[str]]:
    blocks, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    return blocks


def _cells(line: str) -> int:
    """Cells of a GFM table row: pipes not escaped by a backslash (an escaped backslash does not escape)."""
    return len(re.findall(r"(?<!\\)(?:\\\\)*\|", line)) - 1


@pytest.mark.parametrize("name", list(_markdowns()))
def test_markdown_tables_keep_their_columns(name):
    text = _markdowns()[name]
    blocks = _table_blocks(_body(text))
    assert len(blocks) >= 2
    for block in blocks:  # the raw lines: no cell adds a column or a line
        assert re.fullmatch(r"\|(---\|)+", block[1]), block
        assert all(_cells(line) == _cells(block[0]) for line in block), block
    tags = _parse(_commonmark().render(_body(text)))  # and as a renderer sees them
    assert len(tags.tables) == len(blocks)
    for rows, block in zip(tags.tables, blocks):
        assert len(rows) == len(block) - 1 and all(n == rows[0] for n in rows)


@pytest.mark.parametrize("name", list(_markdowns()))
def test_markdown_renders_no_markup_from_user_strings(name):
    text = _markdowns()[name]
    page = _commonmark().render(_body(text))
    assert "<script" not in page.lower() and "<b>" not in page and "<img src=x" not in page
    tags = _parse(page)
    assert set(tags.tags) <= ALLOWED_TAGS, set(tags.tags) - ALLOWED_TAGS
    # user strings add no heading: the card has its title and ## Results/Speed, the report its four sections
    headings = [t for t in tags.tags if t in ("h1", "h2", "h3")]
    assert headings == (["h1", "h2", "h2"] if name.startswith("card") else ["h1"] + ["h2"] * 4), headings
    assert "injected" not in "".join(tags.text.get("h2", []))
    assert tags.tags.count("img") == (1 if name.startswith("card") else 3)


def _fences(text: str) -> list[tuple[str, str]]:
    return [(t.info, t.content) for t in _commonmark().parse(_body(text)) if t.type == "fence"]


def test_command_fence_is_not_closed_early():
    for kind in ("hub", "local"):
        assert _fences(model_card(hostile(kind))) == [("sh", EVIL_COMMAND + "\n")]
    fences = _fences(_report_md(hostile()))
    assert fences[0] == ("sh", EVIL_COMMAND + "\n")
    assert fences[1] == ("sh", "lm_eval --model hf ```\n# x\n")
    assert [info for info, _ in fences] == ["sh"] * 4


def test_markdown_text_and_code_spans_render_exactly():
    render = _commonmark().renderInline
    for s in HOSTILE_STRINGS:
        folded = " ".join(s.split())
        assert _unescape(render(md(s))) == folded, s
        shown = re.fullmatch(r"<code>(.*)</code>", render(code(s)), re.S)
        assert shown and _unescape(shown.group(1)) == folded, s
    cell = Table("t", ["a", "b"], [[s, "x"] for s in HOSTILE_STRINGS]).to_markdown()
    tags = _parse(_commonmark().render("\n".join(cell)))
    assert [n for n in tags.tables[0]] == [2] * (len(HOSTILE_STRINGS) + 1)
    cells = _commonmark().render("\n".join(cell))
    for s in HOSTILE_STRINGS:  # each cell shows its text, whole
        assert f"<td>{_html_text(' '.join(s.split()))}</td>" in cells.replace("&quot;", '"'), s


def _html_text(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _unescape(s: str) -> str:
    return html.unescape(s)


# --- the model card's front matter ------------------------------------------------------------------------------

def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    head = card[4:card.index("\n---\n")]
    try:
        import yaml
    except ImportError:  # the card writes one key or list item per line, each value a JSON string
        data: dict = {}
        key = ""
        for line in head.splitlines():
            if line.startswith("- "):
                data[key].append(json.loads(line[2:]))
            elif line.endswith(":"):
                key = line[:-1]
                data[key] = []
            else:
                name, _, value = line.partition(": ")
                data[name] = value if name == "library_name" else json.loads(value)
        return data
    return yaml.safe_load(head)


def test_front_matter_parses_to_exactly_the_expected_keys():
    tags = ["depthprune", "layer-pruning", "shortgpt"]
    normal = _front_matter(model_card(NORMAL))
    assert normal == {"library_name": "transformers", "tags": tags + ["metric-bi"],
                      "base_model": "HuggingFaceTB/SmolLM2-135M"}
    for kind in ("hub", "local", "gguf", "demo", None):  # an id the Hub would not accept is left out
        assert _front_matter(model_card(hostile(kind))) == {"library_name": "transformers",
                                                             "tags": tags + ["metric-bi`|<b>"]}
    tricky = copy.deepcopy(NORMAL)
    tricky["metric"] = 'x"\n base_model: evil\u2028\x85\x7f: "'
    tricky["source"]["kind"] = "local"  # a hub_id of a local source is no base_model
    assert _front_matter(model_card(tricky)) == {"library_name": "transformers", "tags": tags + [
        "metric-" + tricky["metric"]]}
    yaml = pytest.importorskip("yaml")
    for value in HOSTILE_STRINGS + ["", "null", "yes", "- a", "{a: b}", "#c", "\t'q'", "\x85\x7f\ufeff"]:
        assert "\n" not in yaml_value(value)
        assert yaml.safe_load(f"k: {yaml_value(value)}") == {"k": value}, value


def test_gguf_card():
    gguf = {"blocks_before": 6, "blocks_after": 4, "bytes_before": 1_000_000, "bytes_after": 700_000,
            "kept_layers": [0, 1, 2, 4]}
    card = model_card(NORMAL, gguf=gguf)
    assert _front_matter(card)["library_name"] == "gguf"
    assert ("This is a GGUF file (`model.gguf`) for llama.cpp and compatible runtimes; the kept blocks' tensors "
            "are the original file's bytes (same quantization), renumbered. transformers loads it with "
            "`AutoModelForCausalLM.from_pretrained(this_dir, gguf_file=\"model.gguf\")`.") in card
    assert "ordinary transformers checkpoint" not in card
    assert "\nGGUF: 6 -> 4 blocks, 1,000,000 -> 700,000 bytes.\n" in card
    assert model_card({**NORMAL, "gguf": gguf}) == card  # the record's own gguf section (report refreshes)


# --- a normal record: the same sections and key lines as before ---------------------------------------------------

def test_normal_card_has_the_same_key_lines():
    card = model_card(NORMAL, evals=EVALS, bench=BENCH)
    lines = card.splitlines()
    assert lines[:9] == ["---", "library_name: transformers", "tags:", '- "depthprune"', '- "layer-pruning"',
                         '- "shortgpt"', '- "metric-bi"', 'base_model: "HuggingFaceTB/SmolLM2-135M"', "---"]
    for line in ("# HuggingFaceTB/SmolLM2-135M, 2 layers removed",
                 "Made with depthprune 0.1.0 (layer pruning, ShortGPT Block Influence and friends): metric `bi`, "
                 "strategy `one-shot`. This is an ordinary transformers checkpoint: "
                 "`AutoModelForCausalLM.from_pretrained(this_dir)` loads it, no custom code.",
                 "Base model: [HuggingFaceTB/SmolLM2-135M](https://huggingface.co/HuggingFaceTB/SmolLM2-135M), "
                 "weights bfloat16.",
                 "## Results", "## Speed", "| piqa acc (%) | 68.1 ± 1.1 | 63.3 ± 1.2 | -4.8 pts |",
                 "| perplexity (builtin:heldout, lower is better) | 12.50 | 15.25 | ×1.220 |",
                 "Removed layers (0-based, original numbering): 3, 5.",
                 "Calibration: `builtin:wikitext`, 8 sequences x 64 tokens (512 real tokens), seed 0.",
                 "![layer scores](layer_scores.png)",
                 "Full provenance (scores per layer, settings, library versions) is in `depthprune.json`.",
                 "Made with:", "```sh", NORMAL["command"], "```"):
        assert line in lines, line
    assert card.endswith("Made with:\n\n```sh\n" + NORMAL["command"] + "\n```\n")
    assert "\n\n\n" not in card
    local = {**NORMAL, "source": {"kind": "local", "source_dtype": "float32"}, "command": None}
    assert "Base model: local checkpoint directory `HuggingFaceTB/SmolLM2-135M`, weights float32 (not a Hub id)." \
        in model_card(local).splitlines()
    assert "Made with:" not in model_card(local) and "## Speed" not in model_card(local)


def test_normal_report_md_has_the_same_key_lines():
    text = _report_md(NORMAL)
    lines = text.splitlines()
    assert lines[0] == "# HuggingFaceTB/SmolLM2-135M: 2 of 6 layers removed"
    tokens = _commonmark().parse(text)
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert headings == ["HuggingFaceTB/SmolLM2-135M: 2 of 6 layers removed", "What was removed and why", "Quality",
                        "Speed", "Reproduce"]
    for line in ("Removed layers (0-based, original numbering): **3, 5**.",
                 "Block Influence (ShortGPT, arXiv 2403.03853): BI = 1 - mean cosine similarity between a layer's "
                 "input and output hidden states over the calibration tokens. A low BI means the layer barely "
                 "changes the residual stream, so the layers with the lowest BI were removed. Strategy `one-shot` "
                 "removed 2 of 6 layers. Calibration: builtin:wikitext, 8 sequences × 64 tokens. Protected from "
                 "removal: the first 1 layers.",
                 "![layer scores](layer_scores.png)", "![quality](report_quality.png)", "![speed](report_speed.png)",
                 "| layer (0-based) | bi | rank (0 = lowest) |", "| 3 | 0.05000 | 0 |",
                 "| piqa acc (%) | 68.1 ± 1.1 | 63.3 ± 1.2 | -4.8 pts |", "| prune: torch | 2.4.0 |",
                 "| eval: lm-eval | 0.4.9 |", "prune:", "```sh", NORMAL["command"], "task evaluation:", "speed:",
                 "this report:", "depthprune report '/tmp/some dir' --out REPORT_DIR"):
        assert line in lines, line
    assert text.endswith("| eval: lm-eval | 0.4.9 |\n\nEvaluation files: ``dense`x`.json`` (dense), "
                         "`evil|<script>.json` (ignored: &lt;b&gt;no&lt;/b&gt; role).\n")
    bare = render_markdown(_inputs({**NORMAL, "command": None}, evals=None, bench=None), {})
    assert "No task accuracy yet" in bare and "No speed measurement yet" in bare and "![" not in bare
    assert "prune (equivalent command reconstructed from depthprune.json, which records none):" in bare
    assert "\n\n\n" not in text and "\n\n\n" not in bare
