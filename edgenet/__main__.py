"""`python -m edgenet ...` runs the `edgenet` command."""

from edgenet.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
