"""`python -m scheduler` runs the milestone-sync command line."""

from scheduler.cli import main

main()
