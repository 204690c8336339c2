"""Answer formats: how a benchmark example becomes a prompt and how an answer is graded."""
