//! Builds the viewer's WebAssembly so that `report` can embed it: a nested
//! `cargo build --release --target wasm32-unknown-unknown -p viewer-wasm` (with SIMD, the
//! dependencies optimised for size) into its own target directory (reused across builds),
//! then wasm-bindgen's `--target no-modules` glue generated with `wasm-bindgen-cli-support`
//! (the same version as the crate's `wasm-bindgen`, both pinned in the workspace). Outputs in
//! `OUT_DIR`: `viewer_wasm.js` (glue) and `viewer_wasm_bg.wasm`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Size-optimised release settings for the wasm only (`[profile.*]` of the workspace applies
/// to every crate, so the nested build gets them through cargo's environment overrides).
const PROFILE: &[(&str, &str)] = &[
    ("CARGO_PROFILE_RELEASE_OPT_LEVEL", "3"),
    ("CARGO_PROFILE_RELEASE_LTO", "true"),
    ("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1"),
    ("CARGO_PROFILE_RELEASE_PANIC", "abort"),
    ("CARGO_PROFILE_RELEASE_DEBUG", "false"),
    ("CARGO_PROFILE_RELEASE_INCREMENTAL", "false"),
];

/// Variables the outer cargo sets for this script that must not steer the nested build:
/// host flags, the outer target dir, and `cargo clippy`'s compiler wrapper.
const LEAKY: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_WRAPPER",
    "CARGO_PRIMARY_PACKAGE",
];

fn main() {
    if let Err(e) = run() {
        eprintln!("error: building the viewer's wasm failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let workspace = manifest_dir
        .parent()
        .ok_or("report has no parent directory")?
        .to_path_buf();
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    for path in [
        "viewer-wasm/src",
        "viewer-wasm/Cargo.toml",
        "schema/src",
        "schema/Cargo.toml",
        "Cargo.lock",
        "rust-toolchain.toml",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(path).display());
    }

    ensure_wasm_target();
    let target_dir = match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => workspace.join("target"),
    }
    .join("viewer-wasm-build");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&workspace)
        .args(["build", "--release", "--lib", "-p", "viewer-wasm"])
        .args(["--target", "wasm32-unknown-unknown", "--target-dir"])
        .arg(&target_dir);
    for var in LEAKY {
        cmd.env_remove(var);
    }
    cmd.envs(PROFILE.iter().copied());
    // 128-bit SIMD (every current browser runs it: Chromium ≥ 91, Firefox ≥ 89, Safari ≥ 16.4)
    // speeds up the engine's column passes; the dependencies (JSON, base64: off the query
    // path) are optimised for size, which keeps the module within its budget.
    cmd.env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+simd128");
    cmd.args(["--config", r#"profile.release.package."*".opt-level="z""#]);
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run cargo for the wasm build: {e}"))?;
    if !status.success() {
        return Err(format!(
            "`cargo build --release --target wasm32-unknown-unknown -p viewer-wasm` failed ({status}); \
             is the wasm32-unknown-unknown target installed (`rustup target add wasm32-unknown-unknown`)?"
        ));
    }
    let wasm = target_dir.join("wasm32-unknown-unknown/release/viewer_wasm.wasm");
    glue(&wasm, &out_dir)
}

/// `rust-toolchain.toml` lists the wasm target, but rustup adds listed targets only when it
/// installs the toolchain: on a machine that already had it, a fresh clone would stop here.
/// Add it (`rustup target add`, the toolchain of this build) when the compiler has no
/// standard library for it.
fn ensure_wasm_target() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let libdir = Command::new(rustc)
        .args([
            "--print",
            "target-libdir",
            "--target",
            "wasm32-unknown-unknown",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let installed = libdir.is_some_and(|d| {
        std::fs::read_dir(d).is_ok_and(|mut entries| {
            entries.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("libstd-")))
        })
    });
    if installed {
        return;
    }
    let added = Command::new("rustup")
        .args(["target", "add", "wasm32-unknown-unknown"])
        .status()
        .is_ok_and(|s| s.success());
    if added {
        println!("cargo:warning=installed the wasm32-unknown-unknown target (rustup target add) for the viewer");
    }
}

/// wasm-bindgen's no-modules glue and the processed wasm, into `out_dir`.
fn glue(wasm: &Path, out_dir: &Path) -> Result<(), String> {
    let mut bindgen = wasm_bindgen_cli_support::Bindgen::new();
    bindgen
        .input_path(wasm)
        .no_modules(true)
        .map_err(|e| format!("{e:#}"))?
        .typescript(false)
        .debug(false)
        .keep_debug(false)
        .remove_name_section(true)
        .remove_producers_section(true)
        .generate(out_dir)
        .map_err(|e| format!("wasm-bindgen on {}: {e:#}", wasm.display()))
}
