"""`python -m models list | get NAME | fetch NAME DIR | check NAME...`: the catalogue from the command line.

`get` prints the built folder as its LAST line (scripts take `tail -1`); progress goes to stderr.
Errors are one line and exit code 2 (config.fail), as everywhere in the project.
"""
import argparse
import sys
from pathlib import Path


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def list_catalogue() -> str:
    from models.build import folder_of, is_built
    from models.catalogue import CATALOGUE

    rows = [("name", "parameters", "source (registry packages, exact versions)", "licence", "download", "disk",
             "built")]
    for s in CATALOGUE.values():
        pkgs = s.wheels[0].package + (f" .. {s.wheels[-1].package}" if len(s.wheels) > 1 else "")
        rows.append((s.name, f"{s.parameters / 1e6:.0f}M", f"{pkgs} =={s.wheels[0].version} ({len(s.wheels)} wheel(s))",
                     s.licence, _size(s.download_size), _size(s.disk_size),
                     str(folder_of(s.name)) if is_built(s.name) else "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines + ["(every model here was 4-bit once: slightly below its original checkpoint; "
                              "docs/models.md)"])


def main(argv=None) -> None:
    from config import fail
    from models.catalogue import ModelLoadError

    p = argparse.ArgumentParser(prog="python -m models", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the catalogue")
    g = sub.add_parser("get", help="build NAME if needed; print its folder (last line)")
    g.add_argument("name")
    f = sub.add_parser("fetch", help="only download NAME's pinned wheels into DIR (to carry to an offline machine)")
    f.add_argument("name")
    f.add_argument("dir")
    c = sub.add_parser("check", help="record the built folder's logits against the GGUF's (results/models/)")
    c.add_argument("names", nargs="+")
    c.add_argument("--out", default="results/models")
    args = p.parse_args(argv)
    try:
        if args.cmd == "list":
            print(list_catalogue())
        elif args.cmd == "get":
            from models.build import get
            print(get(args.name))
        elif args.cmd == "fetch":
            from models.catalogue import lookup
            from models.fetch import fetch_to
            from models.transport import check_wheel
            spec = lookup(args.name)
            paths = fetch_to(spec, Path(args.dir))
            for w, path in zip(spec.wheels, paths):
                check_wheel(w, path)
            print(Path(args.dir).absolute())
        else:
            from models.check import check
            for name in args.names:
                print(check(name, Path(args.out)))
    except ModelLoadError as e:
        fail(str(e))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
