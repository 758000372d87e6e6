"""``python -m cyclesr_deploy`` is the same as the ``cyclesr`` command."""

from cyclesr_deploy.cli import main

if __name__ == "__main__":
    main()
