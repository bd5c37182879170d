"""What the studies share: statistics for paired comparisons over seeds (``stats``)."""
