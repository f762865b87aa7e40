"""``python -m tbjax.evaluate --run-dir R [--split val|test] [--checkpoint best|latest]``.

Re-evaluates a run from its directory alone: the resolved config.yaml, the train-fitted
feature_pipeline.json and an orbax checkpoint (frozen observation statistics inside it). Writes
eval/<split>.json and report.md with plots.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tbjax.errors import InputError


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tbjax.evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True, help="a run directory written by python -m tbjax.train")
    ap.add_argument("--split", choices=["val", "test", "both"], default="both")
    ap.add_argument("--checkpoint", choices=["best", "latest"], default="best")
    args = ap.parse_args(argv)
    try:
        run_dir = Path(args.run_dir)
        for name in ("config.yaml", "feature_pipeline.json"):
            if not (run_dir / name).is_file():
                raise InputError(f"'{run_dir / name}' not found: --run-dir must be a directory written by "
                                 "python -m tbjax.train")
        from tbjax.config import load_config
        from tbjax.data.pipeline import FeaturePipeline
        from tbjax.session import TrainingSession, write_evaluation

        cfg = load_config(run_dir / "config.yaml")
        session = TrainingSession(cfg, run_dir, write=False, pipeline=FeaturePipeline.load(run_dir / "feature_pipeline.json"))
        import jax

        template = session.trainer.init(jax.random.PRNGKey(cfg.train.seed), session.hparams, session.exp.market)
        carry, meta = session.ckpt.restore(args.checkpoint, template)
        splits = ("val", "test") if args.split == "both" else (args.split,)
        evals = write_evaluation(session, carry, meta, args.checkpoint, splits)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for split, result in evals.items():
        p = result["pooled"]
        print(f"{split}: sharpe {p['sharpe']:.3f}  sortino {p['sortino']:.3f}  total_return {p['total_return']:.2%}  "
              f"max_drawdown {p['max_drawdown']:.2%}  objective {result['objective']:.3f}")
    print(f"report: {Path(args.run_dir) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
