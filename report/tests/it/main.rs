//! The report's one integration-test binary.

mod aggregate;
mod browser;
mod bundles;
mod contexts;
mod demo_sim;
mod legacy;
mod load;
mod site;
mod site_in_browser;
mod support;
mod viewer;
