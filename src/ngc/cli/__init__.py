"""The ``ngc`` command line: ``main.py`` holds the app and error handling, one file per command."""
