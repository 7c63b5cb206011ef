"""prunelab: how much of a trained network can be pruned, by which criterion, and how
much smaller and faster is what remains."""

__version__ = "0.1.0"
