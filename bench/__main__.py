"""`make bench` runs every benchmark in turn; `python -m bench NAME` runs one."""
import importlib
import sys

BENCHES = ["bench.workspace_start", "bench.enclave", "bench.image"]


def main(argv):
    names = [f"bench.{n}" for n in argv] or BENCHES
    for name in names:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            print(f"{name}: not available ({e})")
            continue
        mod.main()


if __name__ == "__main__":
    main(sys.argv[1:])
