"""``python -m segbench`` (also ``torchrun -m segbench``)."""

from segbench.cli import main

main()
