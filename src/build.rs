//! Build script: drops the unwind tables from the shipped binary.
//!
//! The release profile aborts on panic, so nothing ever unwinds, yet the binary would carry
//! `.eh_frame`, `.eh_frame_hdr` and `.gcc_except_table` (about 300 KB of 3 MB on x86_64 musl):
//! the standard library is shipped precompiled with unwind tables (`-C force-unwind-tables=no`
//! covers only the crates we compile and left the binary unchanged; `-Z build-std`, which would
//! rebuild std without them, is nightly-only). A linker script discards the three
//! sections at link time instead. Only for the release binaries on Linux with LLD-style
//! linkers, i.e. the static musl build `cargo zigbuild` makes (what the image ships): debug and
//! test builds unwind (tokio's task panics, test harness) and keep their tables.
//!
//! Without the tables a panic still prints its message and aborts; a backtrace
//! (`RUST_BACKTRACE=1`) shows no frames.

use std::{env, fs, path::PathBuf};

/// Discards the unwind sections; `INSERT` keeps the linker's default layout for the rest.
const DISCARD_UNWIND_TABLES: &str = "\
SECTIONS {
  /DISCARD/ : { *(.eh_frame) *(.eh_frame.*) *(.gcc_except_table) *(.gcc_except_table.*) }
}
INSERT AFTER .text;
";

fn main() {
    println!("cargo:rerun-if-changed=src/build.rs");
    let profile = env::var("PROFILE").unwrap_or_default();
    let target_env = env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if profile != "release" || target_env != "musl" {
        return;
    }
    let Some(out_dir) = env::var_os("OUT_DIR").map(PathBuf::from) else {
        return;
    };
    let script = out_dir.join("discard-unwind-tables.ld");
    if fs::write(&script, DISCARD_UNWIND_TABLES).is_err() {
        println!(
            "cargo:warning=could not write {}; unwind tables kept",
            script.display()
        );
        return;
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
    println!("cargo:rustc-link-arg-bins=-Wl,--no-eh-frame-hdr");
}
