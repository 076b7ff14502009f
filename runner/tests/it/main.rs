//! The runner's one integration-test binary: end-to-end through the real binaries and
//! real loopback HTTP.
mod serve_sim;
mod sweep;
