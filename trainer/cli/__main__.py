"""`python -m rlme.trainer.cli`: the `rlme` command without the installed script."""

from rlme.trainer.cli import main

main()
