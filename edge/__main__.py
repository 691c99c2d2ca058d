"""`python -m edge`: the same commands as `noodle-edge`."""
from edge.cli import app

app(prog_name="python -m edge")
