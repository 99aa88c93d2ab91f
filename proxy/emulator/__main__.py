"""`python -m proxy.emulator --config FILE.yaml [--host H] [--port P]`."""

from .server import main

main()
