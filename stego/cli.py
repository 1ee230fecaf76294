"""The `stego` command: one sub-command per job, each defined next to the code it runs."""
import argparse
import logging
import sys
from pathlib import Path

from .errors import StegoError


def _add_config_args(p) -> None:
    p.add_argument("preset", nargs="?", default=None, help="preset name (see `stego presets`) or a YAML file")
    p.add_argument("overrides", nargs="*", default=[], help="section.key=value overrides, e.g. loss.b_rand=0.3")
    p.add_argument("--ablation", help="one ablation switch of Tables 2/5 (stego/presets/_ablations.yaml)")


def _split_preset(args) -> tuple[str | None, list[str]]:
    """(preset or None, overrides): an argument with '=' in the preset's place is the first override."""
    if args.preset and "=" in args.preset:
        return None, [args.preset] + list(args.overrides)
    return args.preset, list(args.overrides)


def _config(args, default="synthetic_demo"):
    from .config import load_config

    preset, overrides = _split_preset(args)
    return load_config(preset or default, overrides, args.ablation)


def _checkpoint_config(args):
    """(config or None, overrides) for commands on a checkpoint: without a preset, the checkpoint's own config
    is used and the overrides apply to it."""
    from .config import load_config

    preset, overrides = _split_preset(args)
    if preset or args.ablation:
        return load_config(preset or "synthetic_demo", overrides, args.ablation), []
    return None, overrides


def _train(args) -> int:
    import signal

    from .evaluate import validator
    from .stopping import stop_on_signals
    from .runs import RunDir
    from .train import TrainingStopped, train

    cfg = _config(args)
    out = Path(args.out or Path("runs") / cfg.name)
    if args.resume and not RunDir(out).checkpoint.is_file():
        why = "nothing was saved there yet" if out.is_dir() else "the folder does not exist"
        raise StegoError(f"--resume: {out} holds no {RunDir(out).checkpoint.name} to continue ({why}); check --out "
                         f"(default runs/<preset name>), or drop --resume to start a new run")
    try:
        with stop_on_signals(signal.SIGINT, signal.SIGTERM) as stop:
            path = train(cfg, out, resume=args.resume, validate=validator(cfg), should_stop=stop)
    except TrainingStopped as stopped:
        print(f"stopped at iteration {stopped.iteration}: continue with the same command and --resume")
        return 130
    print(f"checkpoint: {path}")
    return 0


def _eval(args) -> int:
    from .evaluate import run_eval

    cfg, overrides = _checkpoint_config(args)
    from .runs import RunDir

    record_path = Path(args.record or RunDir(Path(args.checkpoint).parent).record)
    run_eval(cfg, args.checkpoint, record_path, trusted=args.trust_checkpoint, split=args.split,
             crf=False if args.no_crf else None, overrides=overrides)
    print(f"record: {record_path}")
    return 0


def _predict(args) -> int:
    from .predict import predict_images

    cfg, overrides = _checkpoint_config(args)
    done = predict_images(args.checkpoint, args.images, args.out, crf=args.crf, trusted=args.trust_checkpoint,
                          cfg=cfg, overrides=overrides)
    skipped = f"; {len(done.skipped)} file(s) skipped, listed in {done.out_dir / 'skipped.txt'}" if done.skipped else ""
    print(f"{len(done.written)} image(s) segmented into {done.out_dir} (legend.csv names the ids){skipped}")
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    report = run_demo(args.out, overrides=args.overrides, seed=args.seed)
    print(f"report: {report}")
    return 0


def _presets(args) -> int:
    from .config import list_presets, load_config

    for name in list_presets():
        cfg = load_config(name)
        print(f"{name:28s} follows {cfg.follows:8s} {cfg.data.dataset:13s} {cfg.model.backbone:14s} "
              f"dim {cfg.model.dim}")
    return 0


def _report(args) -> int:
    from reports import build_reports

    pages = build_reports(args.results, args.out)
    print(f"{len(pages) - 1} report(s): {pages[0]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stego", description="STEGO unsupervised semantic segmentation suite")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the whole method on synthetic scenes in a few minutes on a CPU (no downloads)")
    p.add_argument("--out", default="stego-demo", help="output folder (default ./stego-demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", default=[], help="section.key=value overrides of the synthetic_demo preset")
    p.set_defaults(func=_demo)

    p = sub.add_parser("presets", help="list the configuration presets",
                       description="Every preset under stego/presets/: which source its values follow (release: "
                                   "the authors' checkpoints; paper: Table 6; ours), its dataset, backbone and code "
                                   "dimension. Pass one to train/eval, then section.key=value overrides.")
    p.set_defaults(func=_presets)

    p = sub.add_parser("train", help="train a segmentation head (and probes) from a preset")
    _add_config_args(p)
    p.add_argument("--out", help="run folder (default runs/<preset name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint (ours or the authors' released .ckpt)")
    p.add_argument("--checkpoint", required=True, help="run folder's checkpoint.pt, or a released .ckpt")
    _add_config_args(p)
    p.add_argument("--split", default="val",
                   help="the labelled split to score (default val; e.g. train, or potsdam3's train+val)")
    p.add_argument("--no-crf", action="store_true", help="skip DenseCRF")
    p.add_argument("--record", help="where to write the JSON run record (default: beside the checkpoint)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow unpickling a released .ckpt's config objects (only for files from a trusted source)")
    p.set_defaults(func=_eval)

    p = sub.add_parser("predict", help="segment your own images (a folder or one file) with a checkpoint")
    p.add_argument("--checkpoint", required=True, help="run folder's checkpoint.pt, or a released .ckpt")
    p.add_argument("--images", required=True, help="a folder of images (any format Pillow reads), or one image")
    p.add_argument("--out", required=True, help="where to write <name>_cluster.png, _linear.png (palette PNGs of "
                                               "class ids), their _overlay.png images and legend.csv")
    p.add_argument("--crf", action="store_true", help="refine with DenseCRF")
    p.add_argument("--trust-checkpoint", action="store_true", help="see `stego eval --help`")
    _add_config_args(p)
    p.set_defaults(func=_predict)

    p = sub.add_parser("report", help="markdown reports and figures from run records (benchmark and eval)")
    p.add_argument("results", help="folder holding the run records (searched recursively)")
    p.add_argument("--out", help="report folder (default RESULTS/report)")
    p.set_defaults(func=_report)

    from . import sweep, tuning
    from .data import check, features, fivecrop, knn, synthetic
    from .download import data as download_data, weights as download_weights

    sweep.add_cli(sub)
    tuning.add_cli(sub)

    check.add_cli(sub)
    group = check.data_subparsers(sub)
    for module in (fivecrop, knn, features, synthetic, download_data):
        module.add_cli(group)
    download_weights.add_cli(sub)
    return parser


def parse(parser: argparse.ArgumentParser, argv=None):
    """Parse `argv`; `section.key=value` overrides may also follow options (`--ablation X data.root=D`), which
    argparse alone refuses for a positional list placed before them."""
    args, extra = parser.parse_known_args(argv)
    overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    if extra and (len(overrides) < len(extra) or not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(a for a in extra if a not in overrides) or ' '.join(extra)}")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    return args


def main(argv=None) -> int:
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 print as escapes, never crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = parse(build_parser(), argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except StegoError as err:
        print(f"stego: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stego: interrupted (what was finished is kept; the same command continues)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
