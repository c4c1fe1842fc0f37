"""``python -m edgetl``: the CLI, so ``torchrun ... -m edgetl train ...`` starts it in every process."""

from edgetl.cli.main import main

if __name__ == "__main__":
    main()
