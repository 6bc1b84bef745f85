"""Text conditioners (filled in by the text-to-image issue)."""
