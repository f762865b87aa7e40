"""``python -m tbjax.check --config C [--set a.b=c ...]``: preflight before a long run.

Prints one line per check, ✓ or ✗, and exits 0 when every check passes, 2 otherwise (an invalid
config or bad arguments: one ``error:`` line, exit 2). Nothing is written and nothing is compiled.
The checks and the memory estimate are :mod:`tbjax.run.preflight`; the warm-up rule, which
``tbjax.train`` applies too, is :func:`tbjax.run.warmup.warmup_rule`.
"""

from __future__ import annotations

import sys

from tbjax.cli.common import OneLineParser, run_main
from tbjax.run.preflight import Check, run_checks


def _mark(ok: bool) -> str:
    mark = "✓" if ok else "✗"
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        mark.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return "OK  " if ok else "FAIL"
    return mark


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m tbjax.check", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/base.yaml", help="YAML config (default configs/base.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="A.B=C", help="override a config key")

    def body() -> int:
        args = parser.parse_args(argv)
        from tbjax.config import load_config

        cfg = load_config(args.config, args.set)
        checks = [Check(True, "config", f"{args.config} valid" + (f" with {len(args.set)} override(s)"
                                                                  if args.set else ""))]
        checks += run_checks(cfg)
        width = max(len(c.name) for c in checks)
        for c in checks:
            print(f"{_mark(c.ok)} {c.name:<{width}}  {c.detail}")
        failed = sum(not c.ok for c in checks)
        print(f"{len(checks) - failed} of {len(checks)} checks passed" + ("" if not failed else
                                                                          f"; fix the {failed} marked ✗"
                                                                          .replace("✗", _mark(False))))
        return 0 if failed == 0 else 2

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
