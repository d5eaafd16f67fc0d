"""Entry point for ``python -m dusk``."""

from dusk.cli import main

if __name__ == "__main__":
    main()
