//! The report's one integration-test binary.
