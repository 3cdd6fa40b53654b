"""Differential fuzzing of the scenario protocol: random programs on the model and this
kernel, compared step by step, and the shrinking of what disagrees (`gupsim fuzz`)."""
