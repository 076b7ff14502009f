//! The pure scheduler (in progress).
