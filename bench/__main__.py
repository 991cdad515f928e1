"""`make bench` runs every benchmark in turn; `python -m bench NAME [ARGS...]` runs one (several
names may follow each other, each with its own arguments: `python -m bench open_many 4 image`)."""

import importlib
import sys

BENCHES = ["bench.workspace_start", "bench.open_many", "bench.enclave", "bench.image"]


def main(argv):
    from tests.support import resolve_local_names

    resolve_local_names()  # workspaces are at analysis-<id>.localhost, as browsers resolve it
    runs = []  # (module name, its arguments)
    for arg in argv:
        if runs and not arg.isidentifier():
            runs[-1][1].append(arg)  # an argument of the bench named before it (open_many 30)
        else:
            runs.append((f"bench.{arg}", []))
    for name, args in runs or [(n, []) for n in BENCHES]:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            print(f"{name}: not available ({e})")
            continue
        mod.main(args) if args else mod.main()


if __name__ == "__main__":
    main(sys.argv[1:])
