"""`python -m edgenet ...` runs the `edgenet` command."""

from edgenet.cli import console_main

if __name__ == "__main__":
    console_main()
