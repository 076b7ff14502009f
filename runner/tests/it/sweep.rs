//! `runner sweep` end to end against the simulated engine.
