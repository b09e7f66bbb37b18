"""The `nfx` command: parse options → RunConfig → nfx.api call → print.

Only this module and nfx.console know typer/rich. NfxError becomes a one-line message and exit
code 1; any other exception too (no traceback: tracebacks can carry patient data in locals)
unless --debug (or NFX_DEBUG=1) is given. Nothing heavy is imported at module level, so
`nfx --help` answers fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from nfx import __version__

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts contain [default: …] literally
    help="Fine-tune normalizer-free networks (NFNets) on small medical imaging datasets.",
)
_state = {"debug": os.environ.get("NFX_DEBUG") == "1", "quiet": False}


def _printer():
    from nfx.console import RichPrinter

    return RichPrinter(quiet=_state["quiet"])


def _version(value: bool) -> None:
    if value:
        typer.echo(f"nfx {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors and final results."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _state["debug"] = _state["debug"] or debug
    _state["quiet"] = quiet


@app.command()
def finetune(
    data: Optional[Path] = typer.Argument(None, help="Data folder: one sub-folder per label (optionally under train/ valid/ test/)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Start from a run's config.json (options below override it)."),
    arch: Optional[str] = typer.Option(None, "--arch", help="timm architecture [default: dm_nfnet_f0]."),
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--no-pretrained", help="Start from pretrained weights [default: pretrained]."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Local weights file (safetensors or state dict) for offline use."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs with the whole network trainable [default: 10]."),
    freeze_epochs: Optional[int] = typer.Option(None, "--freeze-epochs", help="Head-only warm-up epochs [default: 1 when fine-tuning, 0 from scratch]."),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="fine-tune (warm-up, body lr/10) or from-scratch (one lr) [default: from the weights]."),
    body_lr_div: Optional[float] = typer.Option(None, "--body-lr-div", help="Body lr = lr / this [default: 10 when fine-tuning, 1 from scratch]."),
    resize: Optional[str] = typer.Option(None, "--resize", help="squish, letterbox or crop [default: squish]."),
    bs: Optional[int] = typer.Option(None, "--bs", help="Samples per forward pass [default: 16]."),
    accum: Optional[int] = typer.Option(None, "--accum", help="Micro-batches per optimizer step [default: 1]."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate of the head [default: 1e-3 fine-tuning, 2e-3 from scratch]."),
    agc: Optional[str] = typer.Option(None, "--agc", help="AGC clip factor: auto (from the effective batch size), off, or a number."),
    size: Optional[int] = typer.Option(None, "--size", help="Input size in px [default: the checkpoint's train size]."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed [default: 42]."),
    out: Optional[str] = typer.Option(None, "--out", help="Parent folder of run folders [default: runs]."),
    name: Optional[str] = typer.Option(None, "--name", help="Run folder name [default: <arch>-<time>]."),
    valid_pct: Optional[float] = typer.Option(None, "--valid-pct", help="Share of patients for validation [default: 0.2]."),
    patient_regex: Optional[str] = typer.Option(None, "--patient-regex", help="Regex on file names; group 1 = patient id (when no DICOM PatientID)."),
    skip_bad: Optional[bool] = typer.Option(None, "--skip-bad/--no-skip-bad", help="Continue past unreadable files (listed in bad_files.csv)."),
    aug: Optional[str] = typer.Option(None, "--aug", help="Augmentation preset: none, light, strong [default: light]."),
    precision: Optional[str] = typer.Option(None, "--precision", help="auto, bf16, fp16 or fp32 [default: auto]."),
    workers: Optional[int] = typer.Option(None, "--workers", help="DataLoader workers [default: 0 on CPU, up to 8 on GPU]."),
    cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help="Decoded-image cache [default: ~/.cache/nfx]."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="CSV with path,label[,patient][,split] columns instead of label folders."),
    frame: Optional[int] = typer.Option(None, "--frame", help="Frame to use from multi-frame DICOMs (default: skip them with a reason)."),
    allow_patient_leak: Optional[bool] = typer.Option(None, "--allow-patient-leak", help="Accept user splits that share a patient (warned, recorded)."),
    flip: Optional[bool] = typer.Option(None, "--flip/--no-flip", help="Horizontal flips in augmentation (use --no-flip for chest X-rays)."),
    agc_mode: Optional[str] = typer.Option(None, "--agc-mode", help="batch (clip the mean gradient) or per-sample (clip each sample's)."),
    persample_chunk: Optional[int] = typer.Option(None, "--persample-chunk", help="Samples per chunk in per-sample AGC [default: auto]."),
    ema: Optional[float] = typer.Option(None, "--ema", help="EMA decay of the weights, e.g. 0.999 (validation and saved model use the EMA)."),
    balance: Optional[str] = typer.Option(None, "--balance", help="Class imbalance: none, loss (weighted loss) or sampler (weighted sampling)."),
    patience: Optional[int] = typer.Option(None, "--patience", help="Stop after this many epochs without improvement of the monitor."),
    monitor: Optional[str] = typer.Option(None, "--monitor", help="Metric for best checkpoint / early stop [default: valid_roc_auc (binary) else valid_loss]."),
    compile_: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the model for training."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue this run folder from its last completed epoch."),
) -> None:
    """Fine-tune a timm model (NFNet by default) on a folder of images."""
    opts = dict(locals())

    def body():
        from nfx.config import RunConfig, parse_agc

        if resume is not None:
            from nfx import api
            from nfx.errors import ConfigError

            given = [f"--{k.rstrip('_').replace('_', '-')}" for k, v in opts.items() if v is not None and k != "resume"]
            if given:
                raise ConfigError(f"--resume continues a run with its own config.json; drop {', '.join(sorted(given))} "
                                  "(or start a new run with --config RUN_DIR/config.json and your changes)")
            p = _printer()
            _finetune_summary(p, api.resume(resume, p))
            return
        base = RunConfig.load(config) if config else RunConfig()
        if data is None and not base.data.path:
            from nfx.errors import ConfigError

            raise ConfigError("no data folder given; usage: nfx finetune DATA [options]")
        cfg = base.override(
            data=dict(path=str(data) if data else None, size=size, valid_pct=valid_pct,
                      patient_regex=patient_regex, skip_bad=skip_bad, aug=aug, cache_dir=cache_dir,
                      num_workers=workers, labels=str(labels) if labels else None, frame=frame,
                      allow_patient_leak=allow_patient_leak, flip=flip, resize=resize),
            model=dict(arch=arch, pretrained=pretrained, weights=str(weights) if weights else None),
            train=dict(epochs=epochs, freeze_epochs=freeze_epochs, bs=bs, accum=accum, lr=lr,
                       schedule=schedule, body_lr_div=body_lr_div,
                       precision=precision, seed=seed, agc_mode=agc_mode, persample_chunk=persample_chunk,
                       ema=ema, balance=balance, patience=patience, monitor=monitor, compile=compile_),
            top=dict(out=out, name=name),
        )
        if agc is not None or cfg.train.agc_auto:
            from dataclasses import replace

            value, auto = parse_agc(agc, cfg.train.effective_batch_size)
            cfg = replace(cfg, train=replace(cfg.train, agc=value, agc_auto=auto))
        from nfx import api

        p = _printer()
        _finetune_summary(p, api.finetune(cfg, p))

    _run(body)


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="Run folder made by `nfx finetune`."),
    data: Optional[Path] = typer.Argument(None, help="Evaluate on this folder instead of the run's validation split."),
    split: str = typer.Option("valid", "--split", help="Which split of the run to evaluate: valid or test."),
    tta: bool = typer.Option(False, "--tta", help="Average predictions over a horizontal flip."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Probability threshold for the positive class [default: 0.5]."),
    target_sensitivity: Optional[float] = typer.Option(None, "--target-sensitivity", help="Use the highest threshold reaching this sensitivity on the validation split, e.g. 0.9."),
    per_patient: bool = typer.Option(False, "--per-patient", help="Also report metrics with one row per patient (mean of image probabilities)."),
    n_bootstrap: int = typer.Option(1000, "--n-bootstrap", help="Patient bootstrap resamples for the 95% intervals."),
    as_json: bool = typer.Option(False, "--json", help="Print evaluation.json to stdout."),
) -> None:
    """Metrics with patient-level bootstrap CIs, calibration, plots → evaluation.json, report.html."""

    def body():
        from nfx import api

        p = _printer()
        ev = api.evaluate(run_dir, str(data) if data else None, p, threshold=threshold, n_bootstrap=n_bootstrap,
                          split=split, tta=tta, target_sensitivity=target_sensitivity, per_patient=per_patient)
        if as_json:
            sys.stdout.write(json.dumps(ev, indent=2) + "\n")
            return
        rows = [
            ("data", f"{ev['data']} ({ev['n_images']} images, {ev['n_patients']} patients)"),
            ("accuracy", _fmt(ev["accuracy"])),
            ("balanced accuracy", _fmt(ev["balanced_accuracy"])),
            ("ROC AUC", _fmt(ev["roc_auc"]) + _ci(ev.get("roc_auc_ci"))),
        ]
        if ev.get("positive_class"):
            rows += [
                (f"sensitivity ({ev['positive_class']})", _fmt(ev["sensitivity"]) + _ci(ev.get("sensitivity_ci"))),
                ("specificity", _fmt(ev["specificity"]) + _ci(ev.get("specificity_ci"))),
                ("threshold", f"{ev['threshold']:.4g} ({ev.get('threshold_source', '')})"),
            ]
            yd = (ev.get("operating_points") or {}).get("Youden")
            if yd:
                rows.append(("Youden threshold", f"{yd['threshold']:.4g} (chosen on {yd['chosen_on']}): "
                                                 f"sensitivity {_fmt(yd['sensitivity'])}, specificity {_fmt(yd['specificity'])}"))
        rows += [("calibration", f"ECE {_fmt(ev.get('ece'))}, Brier {_fmt(ev.get('brier'))}"),
                 ("confusion matrix", ev["confusion_matrix"]), ("report", Path(run_dir) / "report.html"),
                 ("next", f"nfx explain {run_dir} IMAGES... --out gradcam  |  nfx export {run_dir} --onnx")]
        p.table("evaluation", rows)

    _run(body)


@app.command()
def explain(
    run_dir: Path = typer.Argument(..., help="Run folder made by `nfx finetune`."),
    images: list[str] = typer.Argument(..., help="Image files or folders."),
    out: Path = typer.Option(Path("gradcam"), "--out", help="Folder for the Grad-CAM overlays."),
    target_class: Optional[str] = typer.Option(None, "--class", help="Explain this class [default: the predicted one]."),
) -> None:
    """Grad-CAM overlays (pytorch-grad-cam) on the model's last feature stage."""

    def body():
        from nfx import api

        p = _printer()
        res = api.explain(run_dir, images, out, p, target_class=target_class)
        for r in res:
            if "error" in r:
                p.warn(f"{r['file']}: {r['error']}")
            else:
                typer.echo(f"{r['file']}\t{r['prediction']}\t{r['probability']:.3f}\t{r['overlay']}")
        p.table("explain", [("overlays", out), ("layer", res[0].get("layer") if res else "")])

    _run(body)


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="Run folder made by `nfx finetune`."),
    onnx: bool = typer.Option(True, "--onnx/--no-onnx", help="Export to ONNX (the only format so far)."),
) -> None:
    """Export to ONNX (dynamic batch, metadata), verified against torch through ONNX Runtime."""

    def body():
        from nfx import api
        from nfx.errors import ConfigError

        if not onnx:
            raise ConfigError("nothing to export: --onnx is the only format so far")
        p = _printer()
        r = api.export(run_dir, p)
        p.table(
            "export",
            [("onnx", r["onnx"]), ("max |onnxruntime − torch|", f"{r['max_abs_diff']:.2e}"),
             ("input", f"N×3×{r['input_size']}×{r['input_size']}"), ("next", f"nfx predict {run_dir} IMAGES...")],
        )

    _run(body)


@app.command()
def predict(
    run_dir: Path = typer.Argument(..., help="Run folder (its model.onnx is used when present)."),
    images: list[str] = typer.Argument(..., help="Image files or folders."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines to stdout."),
) -> None:
    """Predict new images."""

    def body():
        from nfx import api

        p = _printer()
        res = api.predict(run_dir, images, p)
        if as_json:
            for r in res:
                sys.stdout.write(json.dumps(r) + "\n")
            return
        for r in res:
            if "error" in r:
                p.warn(f"{r['file']}: {r['error']}")
            else:
                typer.echo(f"{r['file']}\t{r['prediction']}\t{r['probability']:.3f}")

    _run(body)


@app.command()
def inspect(
    data: Path = typer.Argument(..., help="Data folder: one sub-folder per label (optionally under train/ valid/ test/)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON to stdout."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="CSV with path,label[,patient][,split] columns instead of label folders."),
    patient_regex: Optional[str] = typer.Option(None, "--patient-regex", help="Regex on file names; group 1 = patient id (when no DICOM PatientID)."),
    frame: Optional[int] = typer.Option(None, "--frame", help="Frame to use from multi-frame DICOMs (default: report them as bad)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Decoding workers [default: all cores]."),
) -> None:
    """Describe a dataset: classes, patients, modalities, bit depths, sizes, bad files, duplicates."""

    def body():
        from nfx import api

        p = _printer()
        r = api.inspect(data, p, patient_regex=patient_regex, labels=labels, frame=frame, workers=workers)
        if as_json:
            sys.stdout.write(json.dumps(r, indent=2) + "\n")
            return
        _inspect_summary(p, r)

    _run(body)


def _inspect_summary(p, r) -> None:
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
    ]
    p.table("inspect " + r["root"], rows)
    for b in r["bad_files"][:20]:
        p.info(f"bad: {b['path']}: {b['reason']}")
    if len(r["bad_files"]) > 20:
        p.info(f"… and {len(r['bad_files']) - 20} more bad files (see --json)")
    for g in r["duplicates_across_classes"][:10]:
        p.info("identical, different labels: " + " = ".join(g))
    for w in r["warnings"]:
        p.warn(w)


@app.command()
def compare(
    data: Path = typer.Argument(..., help="Data folder: one sub-folder per label."),
    models: str = typer.Option("nf_resnet26,resnet26", "--models", help="Comma-separated timm architectures (an NF net and a BatchNorm net of similar size)."),
    micro_batches: str = typer.Option("4,8,32", "--micro-batches", help="Comma-separated micro-batch sizes (--bs); --accum = effective / micro."),
    effective_batch: int = typer.Option(32, "--effective-batch", help="Samples per optimizer step, kept fixed across the grid."),
    agc: str = typer.Option("on,off", "--agc", help="on, off or on,off (on = --agc auto from the effective batch)."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Comma-separated seeds (each seed: its own split and init)."),
    size: int = typer.Option(64, "--size", help="Input size in px."),
    epochs: int = typer.Option(6, "--epochs", help="Epochs per cell."),
    pretrained: bool = typer.Option(False, "--pretrained/--no-pretrained", help="Start every cell from hub weights [default: from scratch]."),
    out: str = typer.Option("runs", "--out", help="Parent folder of the comparison folder."),
    name: str = typer.Option("compare", "--name", help="Comparison folder name (rerun the same command to resume)."),
    extra: Optional[str] = typer.Option(None, "--finetune-args", help="Further `nfx finetune` options for every cell, e.g. '--aug none --workers 0'."),
) -> None:
    """Grid of finetune runs: NF vs BatchNorm model × micro-batch (same effective batch via --accum) × AGC × seeds."""

    def body():
        import shlex

        from nfx import api
        from nfx.errors import ConfigError

        def ints(opt: str, v: str) -> tuple[int, ...]:
            try:
                return tuple(int(x) for x in v.split(",") if x.strip())
            except ValueError:
                raise ConfigError(f"{opt} {v!r}: expected comma-separated integers, e.g. 4,8,32") from None

        agc_vals = {"on": True, "off": False}
        try:
            agc_t = tuple(agc_vals[x.strip()] for x in agc.split(","))
        except KeyError:
            raise ConfigError(f"--agc {agc!r}: expected on, off or on,off") from None
        cfg = api.CompareConfig(
            data=str(data), models=tuple(m.strip() for m in models.split(",") if m.strip()),
            micro_batches=ints("--micro-batches", micro_batches), effective_batch=effective_batch, agc=agc_t,
            seeds=ints("--seeds", seeds), size=size, epochs=epochs, pretrained=pretrained, out=out, name=name,
            extra=tuple(shlex.split(extra)) if extra else (),
        )
        p = _printer()
        res = api.compare(cfg, p)
        header = ["model", "micro-batch × accum", "AGC", "accuracy", "ROC AUC", "images/s", "peak memory MB"]
        mem = "peak_gpu_memory_mb" if any(r.get("peak_gpu_memory_mb") for r in res["rows"]) else "peak_rss_mb"
        rows = [[r["arch"], f"{r['micro_batch']} × {r['accum']}", "on" if r["agc"] else "off",
                 _pm(r["accuracy"], r["accuracy_sd"]), _pm(r["roc_auc"], r["roc_auc_sd"]),
                 "n/a" if r["images_per_s"] is None else f"{r['images_per_s']:.1f}",
                 "n/a" if r.get(mem) is None else f"{r[mem]:.0f}"] for r in res["rows"]]
        p.grid(f"compare ({res['device']}, effective batch {cfg.effective_batch}, {len(cfg.seeds)} seeds)", header, rows)
        p.table("compare finished", [("folder", res["out_dir"]), ("plot", Path(res["out_dir"]) / "compare.png"),
                                     ("memory column", "peak GPU memory allocated" if mem == "peak_gpu_memory_mb"
                                      else "peak RSS of the training process (CPU)")])

    _run(body)


def _pm(m, sd) -> str:
    if m is None:
        return "n/a"
    return f"{m:.3f}" + ("" if sd is None else f" ± {sd:.3f}")


@app.command("sample-data")
def sample_data(
    out: Path = typer.Argument(Path("sample_data"), help="Where to write the synthetic dataset."),
    patients: int = typer.Option(80, "--patients", help="Number of synthetic patients (2 eyes each)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """(Re)generate the synthetic fundus-like sample dataset (PNG + DICOM)."""

    def body():
        from nfx.data.synthetic import generate

        c = generate(out, n_patients=patients, seed=seed)
        _printer().table("sample data", [("folder", out), ("images per format", c["images"]),
                                         ("patients", c["patients"]), ("per class", c["per_class"])])

    _run(body)


def _finetune_summary(p, res) -> None:
    m = res.metrics
    p.table(
        "finetune finished",
        [
            ("run folder", res.run_dir),
            ("model", f"{m['arch']} ({m['weights_source']})"),
            (f"valid accuracy (epoch {m.get('selected_epoch')})", _fmt(m.get("valid_accuracy"))),
            ("valid ROC AUC", _fmt(m.get("valid_roc_auc"))),
            ("time", f"{m['seconds']} s on {m['device']} ({m['precision']})"),
            ("next", f"nfx evaluate {res.run_dir}"),
        ],
    )


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _ci(v) -> str:
    return f"  (95% CI {v[0]:.3f}–{v[1]:.3f})" if v else ""


def _run(fn) -> None:
    from nfx.errors import NfxError

    try:
        fn()
    except NfxError as e:
        if _state["debug"]:
            raise
        _fail(str(e))
    except KeyboardInterrupt:
        _fail("interrupted")
    except Exception as e:  # noqa: BLE001 - the boundary: no traceback unless --debug
        if _state["debug"]:
            raise
        _fail(f"internal error: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''} "
              "(run again with --debug for the traceback, and report it)")


def _fail(msg: str) -> None:
    try:
        from rich.console import Console
        from rich.markup import escape

        Console(stderr=True, highlight=False, soft_wrap=True).print(f"[red]error:[/red] {escape(msg)}")
    except Exception:
        print(f"error: {msg}", file=sys.stderr)
    raise typer.Exit(1)


def main() -> None:
    import warnings

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    # Library deprecation chatter (torch.jit, fastai) is not actionable for nfx users.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    app()


if __name__ == "__main__":
    main()
