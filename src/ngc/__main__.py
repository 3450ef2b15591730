"""``python -m ngc`` is the ``ngc`` command."""

from ngc.cli.main import run

run()
