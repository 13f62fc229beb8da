"""``python -m marveld`` is the ``marveld`` command; IDEs can run this module directly."""

from marveld.cli import main

if __name__ == "__main__":
    main()
