"""Request validation: what a DecideRequest must look like before anything decides on it."""
