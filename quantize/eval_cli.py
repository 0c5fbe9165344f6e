"""`inkwell-eval`: fidelity of int4 candidates against their FP reference."""

import sys


def main(argv: list[str] | None = None) -> int:
    sys.stderr.write("inkwell-eval: the fidelity evaluation is not built yet (issue #6 'quantize/')\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
