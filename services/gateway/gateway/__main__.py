"""`python -m gateway`: checks the settings, then serves the app (gateway.serving)."""

from gateway.serving import main

main()
