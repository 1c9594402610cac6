"""The shell: composition root, scheduled jobs, the daemon and the command line."""
