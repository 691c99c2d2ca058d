"""`python -m edge`: the same commands as `noodle-edge`."""
import sys

from edge.integrity import IntegrityError, check_at_start

# From an installed bundle, its files against SHA256SUMS first, before edge.cli is even imported.
try:
    check_at_start()
except IntegrityError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)

from edge.cli import app  # noqa: E402 (after the check, so an altered module never runs)

app(prog_name="python -m edge")
