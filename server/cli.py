"""`inkwell-serve`: entry point of the HTTP server."""

import sys


def main(argv: list[str] | None = None) -> int:
    sys.stderr.write("inkwell-serve: the server is not built yet (issue #7 'server/'); nothing was started\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
