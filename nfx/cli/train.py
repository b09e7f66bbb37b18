"""`nfx finetune` and `nfx compare`."""

from __future__ import annotations

from pathlib import Path

import typer

from nfx.cli.app import app, boundary, printer
from nfx.console import show_compare, show_finetune, show_folds


def _default(section: str, field: str) -> str:
    """'[default: X]' from RunConfig's own default: help, README and code cannot drift apart."""
    from nfx.config import RunConfig

    cfg = RunConfig()
    value = getattr(cfg if section == "top" else getattr(cfg, section), field)
    return f"[default: {value}]"


def _by_schedule(field: str) -> str:
    """'[default: A fine-tuning, B from scratch]' from the schedule table nfx resolves with."""
    from nfx.config import SCHEDULE_DEFAULTS

    fine, scratch = SCHEDULE_DEFAULTS["fine-tune"][field], SCHEDULE_DEFAULTS["from-scratch"][field]
    return f"[default: {fine:g} fine-tuning, {scratch:g} from scratch]"


def _variants(registry: str) -> str:
    """'a (what a does), b (…) or c (…)' from a registry of nfx.variants: choices and help in one place."""
    from nfx import variants

    return variants.choices([f"{k} ({v.help})" for k, v in getattr(variants, registry).items()])


def _voi_default() -> str:
    from nfx.records import DEFAULT_VOI_FALLBACK

    return f"[default: {DEFAULT_VOI_FALLBACK}, see docs/VOI_FALLBACK.md]"


def _help(text: str, section: str, field: str) -> str:
    """A config field's help with its placeholders filled from the code (nfx.config.opt)."""
    import re

    from nfx import config
    from nfx.variants import choices

    def fill(m: re.Match) -> str:
        key, _, arg = m.group(1).partition(":")
        return {"default": lambda: _default(section, field), "by_schedule": lambda: _by_schedule(field),
                "voi_default": _voi_default, "variants": lambda: _variants(arg),
                "one_of": lambda: choices(getattr(config, arg))}[key]()

    return re.sub(r"\{(default|by_schedule|voi_default|variants:\w+|one_of:\w+)\}", fill, text)


def typing_optional(t):
    import typing

    return typing.Optional[t]  # noqa: UP045 - a runtime type for typer, not an annotation


def _config_options() -> tuple[dict[str, tuple[str, str]], list]:
    """The finetune options derived from the config dataclasses' field metadata (nfx.config.opt):
    ({parameter: (section, field)}, [inspect.Parameter with its typer.Option])."""
    import inspect
    import typing
    from dataclasses import fields

    from nfx.config import DataConfig, ModelConfig, RunConfig, TrainConfig

    flags: dict[str, tuple[str, str]] = {}
    params = []
    for section, cls in (("model", ModelConfig), ("train", TrainConfig), ("data", DataConfig), ("top", RunConfig)):
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            cli = f.metadata.get("cli")
            if not cli:
                continue
            name = cli["param"] or f.name
            flag = cli["flag"] or "--" + f.name.replace("_", "-")
            kind = typing_optional(hints[f.name])
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind,
                                            default=typer.Option(None, flag, help=_help(cli["help"], section, f.name))))
            flags[name] = (section, f.name)
    return flags, params


FINETUNE_FLAGS, _OPTIONS = _config_options()
FINETUNE_FLAGS = {"data": ("data", "path"), **FINETUNE_FLAGS}  # option (parameter name) → (config section, field)


def _finetune(data: Path | None = None, config: Path | None = None, agc: str | None = None,
              resume: Path | None = None, **options) -> None:
    """Fine-tune a timm model (NFNet by default) on a folder of images."""
    opts = {"data": data, "config": config, "agc": agc, **options}

    from nfx.config import RunConfig, parse_agc

    if resume is not None:
        from nfx import api
        from nfx.errors import ConfigError

        given = [f"--{k.rstrip('_').replace('_', '-')}" for k, v in opts.items() if v is not None]
        if given:
            raise ConfigError(f"--resume continues a run with its own config.json; drop {', '.join(sorted(given))} "
                              "(or start a new run with --config RUN_DIR/config.json and your changes)")
        p = printer()
        if api.is_folds_parent(resume):
            show_folds(p, api.resume_folds(resume, p))
            return
        show_finetune(p, api.resume(resume, p))
        return
    if opts.get("lr") is not None and opts.get("lr_find"):
        from nfx.errors import ConfigError

        raise ConfigError("--lr and --lr-find both given: --lr-find chooses the lr; drop one of them")
    base = RunConfig.load(config) if config else RunConfig()
    if data is None and not base.data.path:
        from nfx.errors import ConfigError

        raise ConfigError("no data folder given; usage: nfx finetune DATA [options]")
    sections: dict[str, dict] = {"data": {}, "model": {}, "train": {}, "top": {}}
    for flag, (section, key) in FINETUNE_FLAGS.items():
        v = opts.get(flag)
        sections[section][key] = str(v) if isinstance(v, Path) else v
    cfg = base.override(**sections)
    from dataclasses import replace

    from nfx.train.distributed import env_world_size

    # several processes (torchrun / accelerate launch): the effective batch counts all of them
    cfg = replace(cfg, train=replace(cfg.train, world_size=env_world_size()))
    if agc is not None or cfg.train.agc_auto:
        value, auto = parse_agc(agc, cfg.train.effective_batch_size)
        cfg = replace(cfg, train=replace(cfg.train, agc=value, agc_auto=auto))
    from nfx import api

    p = printer()
    if cfg.train.folds:
        show_folds(p, api.finetune_folds(cfg, p))
        return
    show_finetune(p, api.finetune(cfg, p))


def _finetune_command():
    """`nfx finetune`: the data argument, --config, --agc and --resume, then one option per config field
    marked with nfx.config.opt — flag, help and default text come from the field, nothing by hand here."""
    import inspect

    kw = inspect.Parameter.KEYWORD_ONLY
    head = [
        inspect.Parameter("data", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typing_optional(Path),
                          default=typer.Argument(None, help="Data folder: one sub-folder per label (optionally under "
                                                 "train/ valid/ test/).")),
        inspect.Parameter("config", kw, annotation=typing_optional(Path), default=typer.Option(
            None, "--config", help="Start from a run's config.json (options below override it).")),
        inspect.Parameter("agc", kw, annotation=typing_optional(str), default=typer.Option(
            None, "--agc", help="AGC clip factor: auto (from the effective batch size), off, or a number.")),
    ]
    tail = [inspect.Parameter("resume", kw, annotation=typing_optional(Path), default=typer.Option(
        None, "--resume", help="Continue this run folder (or a --folds parent: its unfinished folds) from its last "
                               "completed epoch."))]
    command = boundary(_finetune)
    params = head + _OPTIONS + tail
    command.__signature__ = inspect.Signature(params, return_annotation=None)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__name__ = "finetune"
    return command


finetune = app.command(name="finetune")(_finetune_command())


@app.command()
@boundary
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
    bn: str = typer.Option("train", "--bn", help="BatchNorm statistics of the BatchNorm nets: train, frozen (eval mode, `nfx finetune --bn frozen`) or train,frozen; NF nets run once."),
    folds: int | None = typer.Option(None, "--folds", help="Each cell a K-fold cross-validation (K times the cost): its accuracy / ROC AUC out-of-fold, with a patient-bootstrap CI."),
    extra: str | None = typer.Option(None, "--finetune-args", help="Further `nfx finetune` options for every cell, e.g. '--aug none --workers 0'."),
) -> None:
    """Grid of finetune runs: NF vs BatchNorm model × micro-batch (same effective batch via --accum) × AGC × seeds."""

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
        extra=tuple(shlex.split(extra)) if extra else (), folds=folds,
        bn=tuple(x.strip() for x in bn.split(",") if x.strip()),
    )
    p = printer()
    res = api.compare(cfg, p)
    show_compare(p, res, cfg)
