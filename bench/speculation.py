"""Speculative decoding at batch 1 on the bundled model: decode speed with and without the trie drafter.

Tasks whose outputs repeat their inputs (extract from a given text, edit a given code file,
a multi-turn follow-up) and one whose output does not (open-ended chat). Each task runs
alone (batch 1, greedy) on a plain engine and on a speculating one (default settings),
the sides alternating in every repetition so noise from other processes hits both; the
median of each side is reported; outputs must be token-identical. "cold": a speculator with
empty tries and no acceptance history; "learned": one that served a variant of every task
(other text, other file, other conversation). Then the 64-prompt batch workload of
``bench/offline.py`` with and without speculation.
Writes ``bench/results/speculation.md`` (``speculation-quick.md`` with ``--quick``).

    python bench/speculation.py            # everything (~10 min on 2 shared cores)
    python bench/speculation.py --quick    # fewer tokens, no batch workload
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from shoal.engine import LLM, SamplingParams
from shoal.engine.sequence import Sequence
from shoal.engine.spec.acceptance import AcceptanceModel
from shoal.engine.spec.config import SpeculationConfig
from shoal.engine.spec.speculator import Speculator
from shoal.engine.spec.trie_drafter import TrieDrafter

sys.path.insert(0, str(Path(__file__).parent))
from offline import make_prompts  # the 64-prompt batch workload

RESULTS = Path(__file__).parent / "results"
MODEL = "bundled:smollm2-135m-instruct"

TEXTS = [
    "The river town of Elmford sits where two valleys meet. In spring the snowmelt swells the river and the old "
    "stone bridge, built in 1842, closes for a week. The town council voted in March to replace the bridge with a "
    "steel span that can carry trucks. Local historians oppose the plan and want the old bridge kept as a footpath. "
    "The new bridge will cost 4.2 million dollars and take two years to build. Most shops in Elmford sell "
    "fishing gear, maps and hot soup to hikers who walk the valley trail in summer.",
    "The Northgate library opened a new reading room on the second floor this week. The room has forty desks, "
    "twelve computers and a quiet corner for children. The library also extended its opening hours: it now opens "
    "at eight in the morning and closes at nine in the evening on weekdays. Membership is free for residents of "
    "Northgate and costs ten dollars a year for everyone else. The head librarian said the library lends more "
    "than three thousand books every month, mostly novels, cookbooks and travel guides.",
]
CODE = [  # config modules: the bundled model applies a one-value edit and copies the rest of the file
    'import os\n\nQUEUE = "orders"\nBATCH_SIZE = 32\nPOLL_SECONDS = 5\nMAX_ATTEMPTS = 4\nOUTPUT_DIR = "/tmp/orders"\n\n\n'
    'def queue_url():\n    host = os.environ.get("QUEUE_HOST", "localhost")\n    return f"amqp://{host}:5672/{QUEUE}"\n\n\n'
    'def output_file(order_id):\n    return os.path.join(OUTPUT_DIR, f"{order_id}.json")\n',
    'import os\n\nHOST = "0.0.0.0"\nPORT = 8080\nTIMEOUT = 30\nRETRIES = 3\nLOG_LEVEL = "info"\n\n\n'
    'def database_url():\n    user = os.environ.get("DB_USER", "app")\n    password = os.environ.get("DB_PASSWORD", "")\n'
    '    return f"postgres://{user}:{password}@localhost:5432/app"\n\n\ndef server_address():\n    return f"{HOST}:{PORT}"\n',
]
EDITS = ["Change BATCH_SIZE to 64.", "Change PORT to 9090."]
FUNCTIONS = [  # a rename in plain functions: the bundled model rewrites the functions instead (see the report)
    "def total_price(items, tax_rate):\n    subtotal = 0\n    for item in items:\n        subtotal += item.price * "
    "item.quantity\n    tax = subtotal * tax_rate\n    return subtotal + tax\n\n\ndef cheapest(items):\n    best = "
    "None\n    for item in items:\n        if best is None or item.price < best.price:\n            best = item\n    "
    "return best\n",
    "def count_words(text):\n    counts = {}\n    for word in text.split():\n        word = word.lower()\n        "
    "counts[word] = counts.get(word, 0) + 1\n    return counts\n\n\ndef top_words(text, n):\n    counts = "
    "count_words(text)\n    ordered = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)\n    return "
    "ordered[:n]\n",
]
RENAMES = [("items", "products"), ("text", "document")]
CHAT = ["Write a short story about a dragon who learns to cook.", "Tell me about your favourite season and why."]


def tasks(variant: int) -> dict[str, list[dict[str, str]]]:
    text, code, functions, (old, new) = TEXTS[variant], CODE[variant], FUNCTIONS[variant], RENAMES[variant]
    first_answer = text.split(". ")[0] + ". " + text.split(". ")[1] + "."
    return {
        "extract": [{"role": "user", "content": f"Text:\n{text}\n\nCopy the sentences of the text that contain a "
                                                 "number, word for word, one per line."}],
        "code-edit": [{"role": "user", "content": f"```python\n{code}```\n{EDITS[variant]} Reply with the whole "
                                                   "edited file."}],
        "multi-turn": [
            {"role": "user", "content": f"Text:\n{text}\n\nWhat are the first two sentences of the text?"},
            {"role": "assistant", "content": first_answer},
            {"role": "user", "content": "Repeat them exactly, then add the third sentence of the text."},
        ],
        "open-chat": [{"role": "user", "content": CHAT[variant]}],
        "code-rename": [{"role": "user", "content": f"```python\n{functions}```\nRename the variable `{old}` to "
                                                     f"`{new}` everywhere. Reply with the whole edited file only."}],
    }  # fmt: skip


@dataclass
class Run:
    tokens: list[int]
    decode_s: float
    drafts: int = 0
    draft_tokens: int = 0
    accepted: int = 0

    @property
    def decode_tok_s(self) -> float:
        return (len(self.tokens) - 1) / self.decode_s


def run_one(llm: LLM, ids: list[int], max_tokens: int) -> Run:
    """One request alone; decode time is from its first token to its last."""
    engine = llm.engine
    spec = engine.speculator
    before = (spec.stats.num_drafts, spec.stats.num_draft_tokens, spec.stats.num_accepted_tokens) if spec else (0, 0, 0)
    engine.add_request("bench", prompt_token_ids=ids, params=SamplingParams(temperature=0, max_tokens=max_tokens))
    first = None
    tokens: list[int] = []
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens = list(out.outputs[0].token_ids)
            if first is None and tokens:
                first = time.perf_counter()
    end = time.perf_counter()
    after = (spec.stats.num_drafts, spec.stats.num_draft_tokens, spec.stats.num_accepted_tokens) if spec else (0, 0, 0)
    assert first is not None
    return Run(tokens, end - first, *(a - b for a, b in zip(after, before, strict=True)))


def learned_drafter(traffic: list[tuple[list[int], list[int]]]) -> TrieDrafter:
    """A trie drafter whose global trie learned from ``traffic`` (prompt, output) exactly as serving it would."""
    drafter = TrieDrafter(SpeculationConfig())
    for prompt, output in traffic:
        seq = Sequence("traffic", prompt, SamplingParams())
        seq.token_ids.extend(output)
        drafter.release(seq)  # a finished request: its output goes into the global trie
    return drafter


def fresh_speculator(llm: LLM, drafter: TrieDrafter, acceptance: AcceptanceModel | None = None) -> Speculator:
    """Give ``llm`` a speculator with ``drafter`` and no acceptance history (or a copy of ``acceptance``);
    the step cost model is kept: it describes this machine, learned from the engine's earlier steps."""
    old = llm.engine.speculator
    assert old is not None
    new = Speculator(SpeculationConfig(), step_cost=old.step_cost)
    new.drafter = drafter
    if acceptance is not None:
        new.acceptance = copy.deepcopy(acceptance)
    llm.engine.speculator = new
    return new


def batch_workload(llm: LLM, max_tokens: int) -> tuple[float, list[list[int]]]:
    ids = [llm.tokenizer.encode_chat(c) for c in make_prompts(64)]
    start = time.perf_counter()
    results = llm.generate(prompt_token_ids=ids, params=SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True))
    elapsed = time.perf_counter() - start
    return sum(len(r.token_ids) for r in results) / elapsed, [list(r.token_ids) for r in results]


@dataclass
class Row:
    task: str
    plain: list[Run]
    cold: list[Run]
    learned: list[Run]


def median_tok_s(runs: list[Run]) -> float:
    return statistics.median(r.decode_tok_s for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 output tokens per task, no batch workload")
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per task and side (the median is kept)")
    args = parser.parse_args()
    max_tokens = args.max_tokens or (64 if args.quick else 160)
    plain = LLM(MODEL)
    spec = LLM(MODEL, speculation=SpeculationConfig())
    warm = plain.tokenizer.encode_chat([{"role": "user", "content": "hi"}])
    for llm in (plain, spec):
        run_one(llm, warm, 32)
    # traffic: variant 1 of every task served by the speculating engine; its outputs feed the
    # "learned" tries and its drafts teach the "learned" acceptance figures
    learning = fresh_speculator(spec, TrieDrafter(SpeculationConfig()))
    traffic = []
    for chat in tasks(1).values():
        ids = plain.tokenizer.encode_chat(chat)
        traffic.append((ids, run_one(spec, ids, max_tokens).tokens))
    learned_acceptance = learning.acceptance
    rows = []
    identical = True
    for name, chat in tasks(0).items():
        ids = plain.tokenizer.encode_chat(chat)
        row = Row(name, [], [], [])
        for rep in range(args.repeats):  # the three sides alternate, in a rotating order
            sides = ["plain", "cold", "learned"]
            for side in sides[rep % 3 :] + sides[: rep % 3]:
                if side == "plain":
                    row.plain.append(run_one(plain, ids, max_tokens))
                elif side == "cold":  # empty tries, nothing learned: only the request's own text helps
                    fresh_speculator(spec, TrieDrafter(SpeculationConfig()))
                    row.cold.append(run_one(spec, ids, max_tokens))
                else:  # tries and acceptance learned from the variant-1 traffic, never this input's output
                    fresh_speculator(spec, learned_drafter(traffic), learned_acceptance)
                    row.learned.append(run_one(spec, ids, max_tokens))
        identical &= all(r.tokens == row.plain[0].tokens for r in row.plain + row.cold + row.learned)
        rows.append(row)
        base = median_tok_s(row.plain)
        print(f"{name:11} plain {base:6.1f} tok/s  cold {median_tok_s(row.cold) / base:4.2f}x  "
              f"learned {median_tok_s(row.learned) / base:4.2f}x  tokens {len(row.plain[0].tokens)}", flush=True)  # fmt: skip
    step_cost = spec.engine.speculator.step_cost  # type: ignore[union-attr]
    costs = {n - 1: step_cost.relative(1, n - 1) for n in step_cost.measured() if 1 < n <= 17}
    batch = None
    if not args.quick:
        # the same two engines, the speculating one from empty tries (with a third engine in the
        # process the speculating side measured 0.66x, while in a process of its own it ran this
        # workload in the same time as a plain engine: 31.0 vs 31.2 s for 48 tokens each)
        fresh_speculator(spec, TrieDrafter(SpeculationConfig()))
        for llm in (plain, spec):  # untimed: each engine's first 64-row steps run far slower (warm-up)
            batch_workload(llm, 16)
        plain_runs, spec_runs = [], []
        for _ in range(3):  # alternating sides, median of each: load from others hits both
            plain_tok_s, plain_out = batch_workload(plain, 128)
            spec_tok_s, spec_out = batch_workload(spec, 128)
            identical &= plain_out == spec_out
            plain_runs.append(plain_tok_s)
            spec_runs.append(spec_tok_s)
        batch = (statistics.median(plain_runs), statistics.median(spec_runs))
        print(f"batch-64 plain {batch[0]:.1f} tok/s  spec {batch[1]:.1f} tok/s  {batch[1] / batch[0]:.2f}x")
    outputs = {row.task: plain.tokenizer.decode(row.plain[0].tokens) for row in rows}
    write_report(rows, batch, identical, max_tokens, args, costs, outputs)


def write_report(rows: list[Row], batch: tuple[float, float] | None, identical: bool, max_tokens: int,
                 args: argparse.Namespace, costs: dict[int, float], outputs: dict[str, str]) -> None:  # fmt: skip
    cfg = SpeculationConfig()
    lines = [
        "# Speculative decoding (trie drafter), batch 1, CPU",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        f"- command: `python bench/speculation.py{' --quick' if args.quick else ''}`",
        f"- model: {MODEL} (Q4_1 GGUF, fp32 compute), greedy, up to {max_tokens} output tokens, default engine "
        f"settings; speculation defaults: up to {cfg.max_draft_tokens} draft tokens, depth {cfg.max_depth}, "
        f"off above {cfg.max_batch_size} decoding sequences",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S')}",
        f"- outputs token-identical with and without speculation: {identical}",
        "",
        "| trie | task | plain decode tok/s | spec decode tok/s | speedup | per-run speedups | acceptance rate |"
        " mean accepted length | output tokens |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for phase in ("cold", "learned"):
        for row in rows:
            runs = row.cold if phase == "cold" else row.learned
            base, fast = median_tok_s(row.plain), median_tok_s(runs)
            drafts, drafted, accepted = (sum(getattr(r, f) for r in runs) for f in ("drafts", "draft_tokens", "accepted"))
            rate = accepted / drafted if drafted else 0.0
            mean = 1 + accepted / drafts if drafts else 1.0
            spread = " ".join(f"{s.decode_tok_s / p.decode_tok_s:.2f}" for p, s in zip(row.plain, runs, strict=True))
            lines.append(f"| {phase} | {row.task} | {base:.1f} | {fast:.1f} | {fast / base:.2f}x | {spread} | {rate:.2f} | "
                         f"{mean:.2f} | {len(row.plain[0].tokens)} |")  # fmt: skip
    if batch is not None:
        lines += ["", f"64-prompt batch workload (bench/offline.py prompts, 128 tokens each, median of 3 alternating "
                      f"runs): plain {batch[0]:.1f} output tok/s, speculating engine {batch[1]:.1f} "
                      f"({batch[1] / batch[0]:.2f}x)."]  # fmt: skip
    if costs:
        lines += ["", "Step cost the speculating engine measured at batch 1 (median step time with k drafted tokens "
                      "over a plain decode step; it sizes drafts from these): "
                      + ", ".join(f"k={k}: {c:.2f}x" for k, c in costs.items()) + "."]  # fmt: skip
    lines += [
        "",
        f"Each task runs {args.repeats} times on each of three sides in a rotating order (plain engine, speculating "
        "engine cold, speculating engine learned), so load from other processes hits all three; the table shows "
        "each side's median decode tok/s (first to last token), and the cold and learned rows of a task share the "
        "same plain median (same input, same output). Per-run speedups: each repetition's speculating run over "
        "the plain run next to it. \"cold\": empty tries and no acceptance history (only the request's own text "
        "helps); \"learned\": tries and per-source acceptance learned from serving the other variant of every task "
        "(other text, file, conversation), never this input's own earlier output. Both keep the step cost model "
        "the speculating engine measured on its earlier steps (it describes this machine). Acceptance rate = "
        "accepted / drafted tokens; mean accepted length = tokens emitted per verified draft (accepted + the "
        "model's own), over all runs of the side. The batch workload drafts almost never (64 decodes > "
        f"{cfg.max_batch_size}), so its ratio shows the run-to-run noise of these shared cores.",
        "",
        "code-edit: a config module and a one-value change (\"Change BATCH_SIZE to 64.\"); the model applies it "
        "and copies the rest of the file. code-rename: renaming a variable in two plain functions (the earlier "
        "code-edit task); the bundled 135M model does not rename, it rewrites the functions, so its output repeats "
        "little of its input: shown for what it is, not counted as a repetitive task.",
        "",
        "## Outputs (greedy, identical on every side)",
    ]
    for task, text in outputs.items():
        lines += ["", f"### {task}", "", "````", text, "````"]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"speculation{'-quick' if args.quick else ''}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
