"""In-memory implementations of every port: for unit tests, dry runs and the local sandbox."""
