//! `runner serve-sim`: SGLang-compatible flags and startup. (STUB)

/// Entry point of `runner serve-sim ARGS…`.
pub fn main(args: Vec<String>) -> anyhow::Result<()> {
    anyhow::bail!("serve-sim is not implemented yet (args: {args:?})")
}
