"""`inkwell-quantize`: writes int4 checkpoints (RTN, GPTQ, FAIR-Calib)."""

import sys


def main(argv: list[str] | None = None) -> int:
    sys.stderr.write("inkwell-quantize: quantization is not built yet (issue #6 'quantize/')\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
