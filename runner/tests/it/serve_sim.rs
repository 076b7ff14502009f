//! `runner serve-sim` over real HTTP.
