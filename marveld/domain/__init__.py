"""Models and pure logic. Imports no I/O library."""
