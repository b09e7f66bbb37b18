"""Everything the user sees: the Printer passed into api functions (plain or rich), and the final
table each command prints (show_*). The only module besides cli.py that knows rich.

API functions take a `Printer`; the CLI passes a `RichPrinter`, notebooks and tests may pass
the plain `Printer` (plain text to stderr) or `Printer(quiet=True)`.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from nfx.evaluate import metric_table
from nfx.evaluate.metric_table import fmt

if TYPE_CHECKING:
    from nfx.evaluate.result import Evaluation


class Bar:
    """A progress handle: `advance(n)` and `set(description)`."""

    def advance(self, n: int = 1) -> None:  # pragma: no cover - trivial
        pass

    def set(self, description: str) -> None:  # pragma: no cover - trivial
        pass


class Printer:
    """Plain-text output to stderr; progress bars are silent."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.warnings: list[str] = []

    def _out(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr)

    def info(self, text: str) -> None:
        self._out(text)

    def note(self, text: str) -> None:
        self._out(f"note: {text}")

    def warn(self, text: str) -> None:
        self.warnings.append(text)
        self._out(f"warning: {text}")

    def table(self, title: str, rows: Sequence[tuple[str, Any]]) -> None:
        if self.quiet:
            return
        self._out(title)
        for k, v in rows:
            self._out(f"  {k}: {v}")

    def grid(self, title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """A table with a header row (final results: shown even with --quiet, like `table`)."""
        print(title, file=sys.stderr)
        for r in [header, *rows]:
            print("  " + " | ".join(str(c) for c in r), file=sys.stderr)

    @contextlib.contextmanager
    def progress(self, total: int | None, description: str) -> Iterator[Bar]:
        yield Bar()


class Scoped(Printer):
    """A view of a Printer that keeps the warnings given through it — e.g. the ones that belong in
    one evaluation.json — and sends all output to its parent (which records them too, so scopes
    nest). `quiet=True`: only warnings reach the parent; `prefix` says where they came from."""

    def __init__(self, parent: Printer, quiet: bool = False, prefix: str = ""):
        super().__init__(quiet=parent.quiet)
        self.parent, self.mute, self.prefix = parent, quiet, prefix

    def info(self, text: str) -> None:
        if not self.mute:
            self.parent.info(text)

    def note(self, text: str) -> None:
        if not self.mute:
            self.parent.note(text)

    def warn(self, text: str) -> None:
        text = self.prefix + text
        self.warnings.append(text)
        self.parent.warn(text)

    def table(self, title: str, rows: Sequence[tuple[str, Any]]) -> None:
        self.parent.table(title, rows)

    def grid(self, title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.parent.grid(title, header, rows)

    @contextlib.contextmanager
    def progress(self, total: int | None, description: str) -> Iterator[Bar]:
        if self.mute:
            yield Bar()
            return
        with self.parent.progress(total, description) as bar:
            yield bar


class _RichBar(Bar):
    def __init__(self, progress: Any, task: Any):
        self._p, self._t = progress, task

    def advance(self, n: int = 1) -> None:
        self._p.advance(self._t, n)

    def set(self, description: str) -> None:
        self._p.update(self._t, description=description)


class RichPrinter(Printer):
    """rich output to stderr (stdout stays clean for --json)."""

    def __init__(self, quiet: bool = False):
        super().__init__(quiet)
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False, soft_wrap=True)

    def info(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, markup=False)

    def note(self, text: str) -> None:
        if not self.quiet:
            self.console.print(f"[cyan]note:[/cyan] {_escape(text)}")

    def warn(self, text: str) -> None:
        self.warnings.append(text)
        if not self.quiet:
            self.console.print(f"[yellow]warning:[/yellow] {_escape(text)}")

    def error(self, text: str) -> None:
        self.console.print(f"[red]error:[/red] {_escape(text)}")

    def table(self, title: str, rows: Sequence[tuple[str, Any]]) -> None:
        # final results: shown even with --quiet
        from rich.table import Table

        t = Table(title=title, show_header=False, title_justify="left")
        t.add_column(style="bold")
        t.add_column()
        for k, v in rows:
            t.add_row(_escape(str(k)), _escape(str(v)))
        self.console.print(t)

    def grid(self, title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        from rich.table import Table

        t = Table(title=title, title_justify="left")
        for h in header:
            t.add_column(_escape(str(h)))
        for r in rows:
            t.add_row(*(_escape(str(c)) for c in r))
        self.console.print(t)

    @contextlib.contextmanager
    def progress(self, total: int | None, description: str) -> Iterator[Bar]:
        if self.quiet:
            yield Bar()
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        ) as p:
            task = p.add_task(description, total=total)
            yield _RichBar(p, task)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


# --------------------------------------------------------------------------------------------
# the final table each command prints
# --------------------------------------------------------------------------------------------
def show_evaluation(p: Printer, ev: Evaluation, run_dir: Any) -> None:
    from pathlib import Path

    rows: list[tuple[str, Any]] = [("data", f"{ev['data']} ({ev['n_images']} images, {ev['n_patients']} patients)")]
    rows += metric_table.rows(ev, metric_table.CONSOLE)
    if ev.get("positive_class"):
        rows.append(("threshold", f"{ev['threshold']:.4g} ({ev.get('threshold_source', '')})"))
        yd = (ev.get("operating_points") or {}).get("Youden")
        if yd:
            from nfx.evaluate.report import op_threshold

            rows.append(("Youden threshold", f"{op_threshold(yd)} (chosen on {yd['chosen_on']}): "
                                             f"sensitivity {fmt(yd['sensitivity'])}, "
                                             f"specificity {fmt(yd['specificity'])}"))
    folds = ev.get("folds") or {}
    if folds:
        rows.append((f"per fold ({folds['k']})", f"accuracy {_pm(folds['accuracy_mean'], folds['accuracy_sd'])}, "
                                                 f"ROC AUC {_pm(folds['roc_auc_mean'], folds['roc_auc_sd'])}"))
    rows += [("confusion matrix", ev["confusion_matrix"]), ("report", Path(run_dir) / "report.html"),
             ("next", f"nfx explain {run_dir} IMAGES... --out gradcam  |  nfx export {run_dir} --onnx")]
    p.table("evaluation", rows)


def show_compare(p: Printer, res: dict[str, Any], cfg: Any) -> None:
    from pathlib import Path

    header = ["model", "micro-batch × accum", "AGC", "accuracy", "ROC AUC", "images/s", "peak memory MB"]
    mem = "peak_gpu_memory_mb" if any(r.get("peak_gpu_memory_mb") for r in res["rows"]) else "peak_rss_mb"
    rows = [[r["arch"] + (" (BN frozen)" if r.get("bn") == "frozen" else ""),
             f"{r['micro_batch']} × {r['accum']}", "on" if r["agc"] else "off",
             _pm(r["accuracy"], r["accuracy_sd"]), _pm(r["roc_auc"], r["roc_auc_sd"]),
             "n/a" if r["images_per_s"] is None else f"{r['images_per_s']:.1f}",
             "n/a" if r.get(mem) is None else f"{r[mem]:.0f}"] for r in res["rows"]]
    p.grid(f"compare ({res['device']}, effective batch {cfg.effective_batch}, {len(cfg.seeds)} seeds)", header, rows)
    p.table("compare finished", [("folder", res["out_dir"]), ("plot", Path(res["out_dir"]) / "compare.png"),
                                 ("memory column", "peak GPU memory allocated" if mem == "peak_gpu_memory_mb"
                                  else "peak RSS of the training process (CPU)")])


def show_inspect(p: Printer, r: dict[str, Any]) -> None:
    def fmt(d) -> str:
        return ", ".join(f"{k} {v}" for k, v in d.items()) or "–"

    sz = r["image_sizes"]
    rows = [("files", f"{r['n_files']} found, {r['n_images']} usable, {len(r['bad_files'])} bad")]
    rows += [(f"class {c}", f"{v['images']} images, {v['patients']} patients") for c, v in r["classes"].items()]
    if r["splits"]:
        rows += [(f"split {s}", f"{v['images']} images, {v['patients']} patients") for s, v in r["splits"].items()]
    rows += [
        ("patients", f"{r['n_patients']} (id from: {fmt(r['patient_id_source'])})"),
        ("formats", fmt(r["formats"])),
        ("modalities", fmt(r["modalities"])),
        ("photometric", fmt(r["photometric_interpretations"])),
        ("bit depths", fmt(r["bit_depths"])),
        ("height px", "–" if sz["height"]["min"] is None else
         f"min {sz['height']['min']}, median {sz['height']['median']}, max {sz['height']['max']}"),
        ("width px", "–" if sz["width"]["min"] is None else
         f"min {sz['width']['min']}, median {sz['width']['median']}, max {sz['width']['max']}"),
        ("duplicates", f"{len(r['duplicates'])} set(s) of identical files, {len(r['duplicates_across_classes'])} "
                       "across classes"),
        ("copies", f"{r['copies']['images_in_groups']} images in {r['copies']['groups']} group(s) of copies "
                   f"(other size/encoding/window/rotation): {r['copies']['within_class']} within a class, "
                   f"{r['copies']['across_classes']} across classes, {r['copies']['across_splits']} across splits"),
    ]
    p.table("inspect " + r["root"], rows)
    for b in r["bad_files"][:20]:
        p.info(f"bad: {b['path']}: {b['reason']}")
    if len(r["bad_files"]) > 20:
        p.info(f"… and {len(r['bad_files']) - 20} more bad files (see --json)")
    for g in r["duplicates_across_classes"][:10]:
        p.info("identical, different labels: " + " = ".join(g))
    for g in r["copies"]["examples"][:5]:
        p.info("copies: " + " ≈ ".join(g))
    for w in r["warnings"]:
        p.warn(w)


def _kept(m: dict[str, Any]) -> str:
    """Which epoch a run's model.safetensors is, in words (metrics.json's `kept`)."""
    from nfx.evaluate.cautions import chosen_on_validation

    return f"best by {m.get('monitor')} on validation: optimistic" if chosen_on_validation(m) else "the last"


def show_finetune(p: Printer, res: Any) -> None:
    m = res.metrics
    p.table(
        "finetune finished",
        [
            ("run folder", res.run_dir),
            ("model", f"{m['arch']} ({m['weights_source']})"),
            (f"valid accuracy (epoch {m.get('selected_epoch')}, {_kept(m)})", fmt(m.get("valid_accuracy"))),
            ("valid ROC AUC", fmt(m.get("valid_roc_auc"))),
            ("time", f"{m['seconds']} s on {m['device']} ({m['precision']})"),
            ("next", f"nfx evaluate {res.run_dir}"),
        ],
    )


def show_folds(p: Printer, res: Any) -> None:
    m = res.metrics
    rows = [("run folder", res.run_dir), ("model", m.get("arch", "?"))]
    from nfx.evaluate.cautions import chosen_on_validation

    for i, f in enumerate(m.get("per_fold", []), 1):  # the rule of the finetune table and evaluate's warning
        best = ", best on validation" if chosen_on_validation(f) else ""
        rows.append((f"fold {i} (epoch {f.get('selected_epoch')}{best})",
                     f"valid accuracy {fmt(f.get('valid_accuracy'))}, ROC AUC {fmt(f.get('valid_roc_auc'))}"))
    rows += [("mean ± sd over folds", f"accuracy {_pm(m.get('valid_accuracy'), m.get('valid_accuracy_sd'))}, "
                                      f"ROC AUC {_pm(m.get('valid_roc_auc'), m.get('valid_roc_auc_sd'))}"),
             ("time", f"{m.get('seconds')} s"),
             ("next", f"nfx evaluate {res.run_dir}  (out-of-fold metrics with patient-bootstrap CIs)")]
    p.table(f"{m.get('folds')}-fold cross-validation finished", rows)


def _pm(m, sd) -> str:
    if m is None:
        return "n/a"
    return f"{m:.3f}" + ("" if sd is None else f" ± {sd:.3f}")
